"""Bad input: each case is one line on stderr naming the key or file and the fix, with exit code 2."""

import importlib
import os
import sys

import pytest
import torch


TINY = ["--dataset=tiny", "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--state=WARNING"]


def load_cli(name):
    return importlib.import_module(name)  # the checkout's root is on sys.path (conftest)


@pytest.fixture
def cli(tiny_data, tmp_path, capsys):
    run = load_cli("run_recbole_llm")

    def call(*args, base=True):
        argv = ([f"--data_path={tiny_data}", f"--checkpoint_dir={tmp_path / 'saved'}"] + TINY if base else []) + list(args)
        code = run.main(argv)
        captured = capsys.readouterr()
        return code, captured.err

    return call


CASES = [
    (["--epoch=1"], "unknown config key 'epoch' (did you mean 'epochs'?)"),
    (["--epochs", "1"], "argument '--epochs' is not --key=value"),
    (["--epochs=abc"], "config key 'epochs' must be a number"),
    (["--epochs=0"], "config key 'epochs' must be an integer >= 1"),
    (["--nproc=0"], "config key 'nproc' must be an integer >= 1"),
    (["--nproc=2", "--offset=-1"], "config key 'offset' must be an integer >= 0"),
    (["--nproc=2", "--world_size=3", "--offset=2"], "offset (2) + nproc (2) exceed world_size (3)"),
    (["--hidden_size=0"], "config key 'hidden_size' must be an integer >= 1"),
    (["--learning_rate=-1"], "config key 'learning_rate' must be a number > 0"),
    (["--MAX_ITEM_LIST_LENGTH=0"], "config key 'MAX_ITEM_LIST_LENGTH' must be an integer >= 1"),
    (["--valid_metric=NDCG@20"], "add 20 to topk"),
    (["--valid_metric=MRR@10"], "'MRR' is not in metrics"),
    (["--valid_metric=NDCG_cold@10"], "set cold_item_ratio > 0"),
    (["--train_mode=everything"], "config key 'train_mode' must be 'prefix' or 'all_positions'"),
    (["--topk=[0]"], "topk must be a positive integer"),
    (["--metrics=['NDCG', 'Nope']"], "There is no metric named 'Nope'"),
    (["--hidden_dropout_prob=1.5"], "config key 'hidden_dropout_prob' must be a number in [0, 1)"),
    (["--cold_item_ratio=2"], "config key 'cold_item_ratio' must be a number in [0, 1)"),
    (["--eval_args={'mode': 'uni0'}"], "config key 'eval_args' mode 'uni0' (valid) needs a number of sampled negatives >= 1"),
    (["--eval_args={'mode': {'valid': 'full', 'test': 'pop-5'}}"], "mode 'pop-5' (test) needs a number of sampled negatives >= 1"),
    (["--eval_args={'mode': 'uniabc'}"], "mode 'uniabc' (valid) needs a number of sampled negatives >= 1"),
    (["--cold_item_ratio=0.99"], "cold_item_ratio' = 0.99 makes all 30 items with interactions cold, so training has no item: lower it"),
    (["--duplicate_interactions=maybe"], "config key 'duplicate_interactions' must be 'keep', 'drop' or 'error', got 'maybe'"),
    (["--config_files=no_such_config.yaml"], "config file 'no_such_config.yaml' (--config_files) does not exist"),
    (["--model=SASRecc"], "Unknown model 'SASRecc'"),
    (["--dataset=no_such_data"], "Unknown dataset 'no_such_data'"),
]


@pytest.mark.parametrize("args, fragment", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_command_line_is_one_line_and_exit_2(cli, args, fragment):
    code, err = cli("--model=SASRec", *args)
    assert code == 2
    assert fragment in err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU that this machine has")
@pytest.mark.parametrize("arg", ["--device=cuda", "--gpu_id=3"])
def test_gpu_asked_on_a_machine_without_one(cli, arg):
    code, err = cli("--model=SASRec", arg)
    assert code == 2 and "sees no CUDA device" in err


@pytest.mark.parametrize("text, fragment", [
    ("epochs: [1\n", "is not valid YAML on line 2 (expected ',' or ']'"),
    ("epochs: 1\n  stopping_step: 2\n", "is not valid YAML on line 2 (mapping values are not allowed here)"),
    ("- epochs\n- 1\n", "holds a list, not key: value lines"),
])
def test_config_file_that_is_not_yaml(cli, tmp_path, text, fragment):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    code, err = cli("--model=SASRec", f"--config_files={bad}")
    assert code == 2 and f"config file '{bad}' {fragment}" in err and err.count("\n") == 1, err


def test_similar_user_file_that_is_not_one(tmp_path):
    """weights_only=True refused a crafted file with torch's advice to pass weights_only=False: now one line naming it."""
    import collections
    import pickle

    from recbole_llm.model.similar_users import SimilarUsersError, load_similar_users

    text, crafted, plain_list = tmp_path / "text.pt", tmp_path / "crafted.pt", tmp_path / "list.pt"
    text.write_text("hello")
    with open(crafted, "wb") as handle:
        pickle.dump(collections.OrderedDict(a=1), handle)  # a pickle, not a torch file
    torch.save([1, 2], plain_list)
    for path in (text, crafted, plain_list):
        with pytest.raises(SimilarUsersError) as err:
            load_similar_users(str(path), None, None, 3)
        message = str(err.value)
        assert f"similar-user file '{path}' is not one" in message and "llmesr_similar_users: auto" in message
        assert "weights_only=False" not in message and "\n" not in message


def test_debug_shows_the_traceback(cli):
    from recbole_llm.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        cli("--model=SASRec", "--epoch=1", "--debug")


def test_a_file_that_is_not_a_checkpoint(cli, tmp_path):
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_text("hello")
    export = importlib.import_module("recbole_llm.export")
    assert export.main([f"--model_file={bad}", f"--out={tmp_path / 'out'}"]) == 2
    code, err = cli("--model=LLMEmbSASRec", f"--teacher_checkpoint={bad}", "--llm_path=minilm", f"--feature_dir={tmp_path / 'f'}",
                    "--text_fields=['title']", "--epochs=1")
    assert code == 2 and "is not a readable torch checkpoint" in err and str(bad) in err
    assert not (tmp_path / "out").exists()


def test_export_bert4rec(tiny_data, tmp_path):
    """BERT4Rec is exported with the user state it scores with (a mask token after the history), also for histories
    that fill MAX_ITEM_LIST_LENGTH (ml-100k has them: the export stopped at 'index 50 is out of bounds')."""
    import numpy as np

    from recbole_llm import run_recbole_llm
    from recbole_llm.export import export_embeddings, full_histories
    from recbole_llm.quick_start import load_model_file

    result = run_recbole_llm(model="BERT4Rec", dataset="tiny", config_dict={
        "data_path": tiny_data, "checkpoint_dir": str(tmp_path / "saved"), "epochs": 1, "state": "WARNING", "show_progress": False,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1,
        "MAX_ITEM_LIST_LENGTH": 6,
    })
    n_users, n_items = export_embeddings(result["model_file"], str(tmp_path / "out"))
    users = np.load(tmp_path / "out" / "users.npy")
    assert users.shape == (n_users, 16) and np.isfinite(users).all() and n_items == 30
    _, model, _, _, test = load_model_file(result["model_file"], {"state": "WARNING"})
    model.eval()
    seq, seq_len = full_histories(test._dataset, 6)
    assert (seq_len == 6).any() and (seq_len < 6).any()  # full and shorter histories
    with torch.no_grad():
        scores = model.full_sort_predict({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: seq_len})
    table = model.item_embedding.weight[: model.n_items].detach().numpy()
    np.testing.assert_allclose(users @ table.T + model.output_bias.detach().numpy(), scores.numpy(), rtol=1e-4, atol=1e-4)


# ---- a user's own files ------------------------------------------------------------------------------------
def write_own(folder, name="own", inter_rows=None, item_header="item_id:token\ttitle:token\tcategories:token_seq\tprice:float",
              item_rows=None, encoding="utf-8", inter_header="user_id:token\titem_id:token\ttimestamp:float"):
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    if inter_rows is None:
        inter_rows = [f"u{u}\ti{(u * 3 + t) % 20}\t{t}" for u in range(30) for t in range(6)]
    if item_rows is None:
        item_rows = [f'i{i}\t"Quoted" item {i} – ü\tCat{i % 3} Sub{i % 5}\t{i}.5' for i in range(20)]
    with open(os.path.join(folder, name, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write("\n".join([inter_header] + inter_rows) + "\n")
    with open(os.path.join(folder, name, f"{name}.item"), "w", encoding=encoding) as f:
        f.write("\n".join([item_header] + item_rows) + "\n")
    return folder


@pytest.mark.parametrize("model", ["SASRec", "LLMEmbSASRec", "FDSA"])
def test_own_files_without_yaml_run(tmp_path, capsys, model):
    """The README's "your own data": two files, no YAML, one epoch."""
    data = write_own(str(tmp_path / "data"))
    run = load_cli("run_recbole_llm")
    extra = ["--teacher_epochs=1", f"--feature_dir={tmp_path / 'f'}"] if model == "LLMEmbSASRec" else []
    code = run.main([f"--model={model}", "--dataset=own", f"--data_path={data}", "--epochs=1", f"--checkpoint_dir={tmp_path / 's'}",
                     "--state=WARNING", "--show_progress=False", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert "'ndcg@10': " in out.out


def test_own_files_get_every_column_and_attributes(tmp_path):
    from recbole_llm import Config, create_dataset

    data = write_own(str(tmp_path / "data"))
    config = Config(model="FDSA", dataset="own", config_dict={"data_path": data, "checkpoint_dir": str(tmp_path / "s"), "state": "WARNING"})
    assert config["load_col"] == {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "categories", "price"]}
    assert config["selected_features"] == ["categories"] and config["item_attribute"] == "categories"
    dataset = create_dataset(config)
    row = dataset.token2id("item_id", "i3")
    assert dataset.field2id_token["title"][int(dataset.item_feat["title"][row])] == '"Quoted" item 3 – ü'
    # the user's keys win
    config = Config(model="FDSA", dataset="own", config_dict={"data_path": data, "state": "WARNING",
                                                              "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title"]},
                                                              "selected_features": ["title"]})
    assert config["selected_features"] == ["title"] and config["load_col"]["item"] == ["item_id", "title"]


def test_items_missing_from_item_file_are_reported(tmp_path, caplog):
    from recbole_llm import Config, create_dataset

    rows = [f'i{i}\tname {i}\tCat{i % 3}\t1.0' for i in range(15)]  # i15..i19 have no row
    data = write_own(str(tmp_path / "data"), item_rows=rows)
    config = Config(model="SASRec", dataset="own", config_dict={"data_path": data, "state": "WARNING"})
    with caplog.at_level("WARNING"):
        dataset = create_dataset(config)
    message = [r.getMessage() for r in caplog.records if "were dropped" in r.getMessage()]
    n_missing = sum(1 for u in range(30) for t in range(6) if (u * 3 + t) % 20 >= 15)
    assert message and f"{n_missing} of 180 interactions" in message[0] and "filter_inter_by_user_or_item: False" in message[0]
    assert dataset.inter_num == 180 - n_missing


INTER_ROWS = [f"u{u}\ti{(u * 3 + t) % 20}\t{t}" for u in range(30) for t in range(6)]
ITEM_ROWS = [f"i{i}\titem {i}\tCat{i % 3}\t{i}.5" for i in range(20)]
ITEM_HEADER = "item_id:token\ttitle:token\tcategories:token_seq\tprice:float"


def with_row(rows, index, row):
    return rows[:index] + [row] + rows[index + 1:]


DATA_CASES = {
    "latin-1 .item": (dict(encoding="latin-1", item_rows=[f"i{i}\tcrème {i}\tCat\t1.0" for i in range(20)]), "own.item' is not utf-8 text on line 2"),
    "word in a float column": (dict(inter_rows=["u1\ti1\t1", "u1\ti2\tyesterday", "u1\ti3\t3"]), "own.inter' cannot be read"),
    "empty .inter": (dict(inter_rows=[]), "own.inter' has a header but no rows"),
    "bad header": (dict(inter_header="user_id\titem_id:token\ttimestamp:float"), "header cell 'user_id' is not <name>:<type>"),
    "no timestamp": (dict(inter_header="user_id:token\titem_id:token\tclicks:float"), "has no 'timestamp' column"),
    # the second round (issue 28): each was a message about something else, a raw traceback, or silently wrong
    "BOM .inter": (dict(inter_header="\ufeffuser_id:token\titem_id:token\ttimestamp:float"),
                   "own.inter' starts with a UTF-8 byte-order mark (BOM): save it as UTF-8 without BOM"),
    "BOM .item": (dict(item_header="\ufeff" + ITEM_HEADER), "own.item' starts with a UTF-8 byte-order mark (BOM)"),
    "column named twice": (dict(inter_header="user_id:token\titem_id:token\ttimestamp:float\titem_id:token",
                                inter_rows=[r + "\ti1" for r in INTER_ROWS]), "own.inter' names column 'item_id' twice on line 1"),
    "tab in a title": (dict(item_rows=with_row(ITEM_ROWS, 5, "i5\tite\tm 5\tCat1\t1.0")),
                       "own.item' line 7 has 5 tab-separated fields, the header has 4"),
    "line break in a title": (dict(item_rows=with_row(ITEM_ROWS, 5, "i5\tite\nm 5\tCat1\t1.0")),
                              "own.item' line 7 has 2 tab-separated fields, the header has 4"),
    "NaN time": (dict(inter_rows=with_row(INTER_ROWS, 7, "u1\ti4\tnan")), "own.inter' line 9 has no timestamp (rows without a finite timestamp: 1)"),
    "empty time": (dict(inter_rows=with_row(INTER_ROWS, 7, "u1\ti4\t")), "own.inter' line 9 has no timestamp"),
    "inf time": (dict(inter_rows=with_row(INTER_ROWS, 7, "u1\ti4\tinf")), "own.inter' line 9 has an infinite timestamp"),
    "item id twice": (dict(item_rows=with_row(ITEM_ROWS, 5, "i3\tother\tCat1\t1.0")),
                      "own.item' lists item_id 'i3' twice (line 7, first on line 5; ids repeated: 1): keep one row per item_id"),
    "duplicate rows, error": (dict(inter_rows=INTER_ROWS + INTER_ROWS[:40]),
                              "own.inter' has 40 exact duplicate rows (line 182 repeats line 2): remove them", ["--duplicate_interactions=error"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_files_are_one_line_and_exit_2(tmp_path, capsys, case):
    kwargs, fragment, *extra = DATA_CASES[case]
    data = write_own(str(tmp_path / "data"), **kwargs)
    run = load_cli("run_recbole_llm")
    code = run.main(["--model=SASRec", "--dataset=own", f"--data_path={data}", "--epochs=1", f"--checkpoint_dir={tmp_path / 's'}", "--state=WARNING",
                     *(extra[0] if extra else [])])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err[-1500:]


FEATURE_CASES = ["BOM .item", "tab in a title", "line break in a title", "item id twice"]


@pytest.mark.parametrize("case", FEATURE_CASES)
def test_features_command_refuses_bad_item_text(tmp_path, capsys, case):
    """The features command reads .item itself (pandas: ParserError on a tab, a feature file that blamed itself on a
    repeated id); now the same lines as a training run, before any model is loaded."""
    from recbole_llm import features

    kwargs, fragment, *_ = DATA_CASES[case]
    data = write_own(str(tmp_path / "data"), **kwargs)
    code = features.main(["--dataset=own", f"--data_path={data}", f"--feature_dir={tmp_path / 'f'}"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err[-1500:]
    assert not (tmp_path / "f").exists() or not [f for f in os.listdir(tmp_path / "f") if f.endswith((".npy", ".json"))]


def test_features_command_reads_item_text_of_a_yaml_dataset_with_checks(tmp_path):
    from recbole_llm.errors import DataFileError
    from recbole_llm.llm.prompts import read_item_text

    data = write_own(str(tmp_path / "data"), item_rows=with_row(ITEM_ROWS, 5, "i5\tite\tm 5\tCat1\t1.0"))
    with pytest.raises(DataFileError, match="own.item' line 7 has 5 tab-separated fields"):
        read_item_text(os.path.join(data, "own"), "own")
    data = write_own(str(tmp_path / "ok"))
    assert len(read_item_text(os.path.join(data, "own"), "own")) == 20


@pytest.mark.parametrize("mode, kept", [(None, 180), ("drop", 180), ("keep", 220)])
def test_duplicate_interactions_are_counted(tmp_path, caplog, mode, kept):
    """40 exact duplicate rows moved test NDCG@10 from 0.158 to 0.285 without a word; now counted, dropped by default."""
    from recbole_llm import Config, create_dataset

    data = write_own(str(tmp_path / "data"), inter_rows=INTER_ROWS + INTER_ROWS[:40])
    keys = {"data_path": data, "state": "WARNING", **({"duplicate_interactions": mode} if mode else {})}
    with caplog.at_level("WARNING"):
        dataset = create_dataset(Config(model="SASRec", dataset="own", config_dict=keys))
    message = [r.getMessage() for r in caplog.records if "exact duplicate rows" in r.getMessage()]
    assert len(message) == 1 and "has 40 exact duplicate rows (line 182 repeats line 2)" in message[0]
    assert ("dropped them" if kept == 180 else "kept them") in message[0]
    assert dataset.inter_num == kept


def test_rows_that_differ_in_a_column_not_loaded_are_not_duplicates(tmp_path, caplog):
    from recbole_llm import Config, create_dataset

    rows = [r + "\t5" for r in INTER_ROWS] + [r + "\t4" for r in INTER_ROWS[:10]]  # the same user, item, time; another rating
    data = write_own(str(tmp_path / "data"), inter_header="user_id:token\titem_id:token\ttimestamp:float\trating:float", inter_rows=rows)
    keys = {"data_path": data, "state": "WARNING", "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
    with caplog.at_level("WARNING"):
        dataset = create_dataset(Config(model="SASRec", dataset="own", config_dict=keys))
    assert dataset.inter_num == 190 and not any("duplicate" in r.getMessage() for r in caplog.records)


def test_newest_on_position_timestamps_is_warned(tmp_path, caplog):
    from recbole_llm import Config, create_dataset

    data = write_own(str(tmp_path / "data"))  # timestamp = 0, 1, 2, ... within each user, as the shared datasets
    keys = {"data_path": data, "state": "WARNING", "cold_item_ratio": 0.2, "cold_item_selection": "newest"}
    with caplog.at_level("WARNING"):
        create_dataset(Config(model="SASRec", dataset="own", config_dict=keys)).build()
    assert any("is each interaction's position in its user's sequence (0, 1, ...)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    times = [f"u{u}\ti{(u * 3 + t) % 20}\t{1000 + 37 * u + 5 * t}" for u in range(30) for t in range(6)]  # real times
    data = write_own(str(tmp_path / "real"), inter_rows=times)
    with caplog.at_level("WARNING"):
        create_dataset(Config(model="SASRec", dataset="own", config_dict={**keys, "data_path": data})).build()
    assert not any("position in its user's sequence" in r.getMessage() for r in caplog.records)


def test_cold_ratio_that_leaves_no_training_row(tmp_path, capsys):
    data = write_own(str(tmp_path / "data"))
    run = load_cli("run_recbole_llm")
    code = run.main(["--model=SASRec", "--dataset=own", f"--data_path={data}", "--epochs=1", f"--checkpoint_dir={tmp_path / 's'}",
                     "--state=WARNING", "--cold_item_ratio=0.95"])
    err = capsys.readouterr().err
    assert code == 2 and "cold_item_ratio' = 0.95 leaves no training row (19 of the items are cold" in err and err.count("\n") == 1, err


def test_benchmark_and_hyper_refuse_what_is_not_key_value(tiny_data, tmp_path, capsys):
    from recbole_llm import benchmark

    assert benchmark.main(["--dataset=tiny", f"--data_path={tiny_data}", "--models=SASRec", f"--out={tmp_path / 'b'}", "--hidden_size", "8"]) == 2
    assert "argument '--hidden_size' is not --key=value" in capsys.readouterr().err
    assert benchmark.main(["--dataset=tiny", f"--data_path={tiny_data}", "--models=SASRec", f"--out={tmp_path / 'b'}", "--hiden_size=8"]) == 1
    run = __import__("json").load(open(tmp_path / "b" / "runs" / "tiny" / "SASRec" / "42.json"))
    assert "unknown config key 'hiden_size' (did you mean 'hidden_size'?)" in run["error"]


def test_config_never_reads_the_command_line(tiny_data, monkeypatch):
    from recbole_llm import Config

    monkeypatch.setattr(sys, "argv", ["prog", "--epochs=1", "--no_such_key=3", "stray"])
    config = Config(model="SASRec", dataset="tiny", config_dict={"data_path": tiny_data})
    assert config["epochs"] != 1 and config["no_such_key"] is None


def test_ddp_under_detail_debug_runs_at_info_with_one_line(tiny_data, tmp_path):
    """TORCH_DISTRIBUTED_DEBUG=DETAIL, what users set when DDP misbehaves, died with SIGSEGV in torch's DDP construction
    on a gloo group (torch 2.13, plain torch too: docs/distributed.md); the processes now run at INFO and say so."""
    import socket
    import subprocess

    from conftest import ROOT

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "TORCH_DISTRIBUTED_DEBUG": "DETAIL", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_recbole_llm.py"), "--model=SASRec", f"--data_path={tiny_data}", *TINY, "--nproc=2",
         "--epochs=1", f"--port={port}", f"--checkpoint_dir={tmp_path / 'saved'}", "--show_progress=False", "--hidden_size=16",
         "--inner_size=32", "--n_layers=1", "--n_heads=1"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("TORCH_DISTRIBUTED_DEBUG=DETAIL crashes torch's DDP on a gloo (CPU) group") == 1
    assert "test result" in proc.stdout


# ---- issue 38: names that are not patterns, destinations checked before any work, broken model folders ----------
def test_a_dataset_name_with_glob_characters_is_a_name(tmp_path, capsys):
    from conftest import write_tiny_dataset

    data = write_tiny_dataset(str(tmp_path / "data"), name="a[1]")
    run = load_cli("run_recbole_llm")
    base = [f"--data_path={data}", "--model=SASRec", "--epochs=1", f"--checkpoint_dir={tmp_path / 'saved'}", "--state=WARNING",
            "--hidden_size=16", "--inner_size=32", "--n_layers=1", "--n_heads=1", "--MAX_ITEM_LIST_LENGTH=10"]
    assert run.main(base + ["--dataset=a[1]"]) == 0  # was: "Unknown dataset 'a[1]'" (the glob read [1] as a class)
    capsys.readouterr()
    assert run.main(base + ["--dataset=*"]) == 2  # was: '*' matched a[1]/, then a traceback from RecBole's download
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown dataset '*'") and err.count("\n") == 1


@pytest.mark.parametrize("under", [False, True])
def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(cli, tmp_path, under):
    (tmp_path / "afile").write_text("")
    folder = tmp_path / "afile" / "sub" if under else tmp_path / "afile"
    code, err = cli("--model=SASRec", f"--checkpoint_dir={folder}")
    assert code == 2 and "config key 'checkpoint_dir'" in err and f"'{tmp_path / 'afile'}' is a file" in err and err.count("\n") == 1


def test_export_destinations_are_checked_before_the_checkpoint_is_loaded(tmp_path, capsys):
    """A file that is no checkpoint at all: each case is refused before export reads it (else 'not a readable torch
    checkpoint'); --weights onto --model_file leaves the user's file as it was."""
    export = importlib.import_module("recbole_llm.export")
    model_file = tmp_path / "SASRec.pth"
    model_file.write_bytes(b"my checkpoint")
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    os.symlink(model_file, tmp_path / "link.pth")
    cases = [
        ([f"--out={tmp_path / 'afile'}"], "--out '" + str(tmp_path / "afile") + "' is a file"),
        ([f"--out={tmp_path / 'afile' / 'x'}"], "lies under '" + str(tmp_path / "afile") + "', a file"),
        ([f"--weights={tmp_path / 'adir'}"], "--weights '" + str(tmp_path / "adir") + "' is a folder"),
        ([f"--weights={model_file}"], "is --model_file itself: writing it would replace your checkpoint"),
        ([f"--weights={tmp_path / 'link.pth'}"], "is --model_file itself"),
        ([f"--weights={tmp_path / 'w.pth'}", f"--out={tmp_path / 'afile'}"], "is a file"),  # both checked first
    ]
    for args, fragment in cases:
        assert export.main([f"--model_file={model_file}", *args]) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, (args, err)
    assert model_file.read_bytes() == b"my checkpoint" and not (tmp_path / "w.pth").exists()
    assert export.main([f"--model_file={tmp_path / 'missing.pth'}", f"--weights={tmp_path / 'w.pth'}"]) == 2
    assert "--model_file '" in capsys.readouterr().err


@pytest.mark.parametrize("seeds, fragment", [("abc", "--seeds must be integers"), ("42,42", "--seeds gives 42 more than once"),
                                             (",", "--seeds is empty")])
def test_benchmark_seeds_that_cannot_work(tiny_data, tmp_path, capsys, seeds, fragment):
    from recbole_llm import benchmark

    code = benchmark.main(["--dataset=tiny", f"--data_path={tiny_data}", "--models=SASRec", f"--out={tmp_path / 'b'}", f"--seeds={seeds}"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("part, breakage", [
    ("its weights", lambda folder: open(os.path.join(folder, "model.safetensors"), "wb").write(b"not safetensors")),
    ("its tokenizer", lambda folder: open(os.path.join(folder, "tokenizer.json"), "w").write("{not json")),
    ("its config.json", lambda folder: open(os.path.join(folder, "config.json"), "w").write("{not json")),
])
def test_a_model_folder_with_broken_files_is_one_line(tiny_llama_dir, tmp_path, part, breakage):
    import shutil

    from recbole_llm.errors import UserError
    from recbole_llm.llm.embed import load_llm

    folder = str(tmp_path / "llm")
    shutil.copytree(tiny_llama_dir, folder)
    load_llm(folder)  # the intact copy loads
    breakage(folder)
    with pytest.raises(UserError) as err:
        load_llm(folder)
    message = str(err.value)
    assert f"llm_path '{folder}': {part} cannot be loaded" in message and "\n" not in message


def test_build_locks_leave_no_file_behind(tmp_path):
    """A finished or failed build removes its .lock (a failed one used to leave an empty file); the lock still
    serialises (tests/test_features.py)."""
    from recbole_llm.fileio import build_once

    target = str(tmp_path / "artifact.npy")
    with pytest.raises(RuntimeError):
        build_once(target, lambda: False, lambda: (_ for _ in ()).throw(RuntimeError("build failed")))
    assert os.listdir(tmp_path) == []
    assert build_once(target, lambda: os.path.exists(target), lambda: open(target, "w").close())
    assert os.listdir(tmp_path) == ["artifact.npy"]


def test_build_lock_removal_keeps_holders_apart(tmp_path):
    """The holder removes the lock file before letting go: a waiter on the removed file takes the new one, so no two
    holders ever overlap."""
    import threading
    import time

    from recbole_llm.fileio import build_lock

    target, inside, overlaps = str(tmp_path / "artifact.npy"), [], []

    def build():
        for _ in range(5):
            with build_lock(target):
                inside.append(1)
                overlaps.append(len(inside))
                time.sleep(0.005)
                inside.pop()

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(overlaps) == 20 and max(overlaps) == 1 and not os.path.exists(target + ".lock")


def test_a_file_where_recbole_writes_its_log_is_refused_before_training(cli, tmp_path, monkeypatch):
    """RecBole's init_logger writes ./log/<model>/: a file named 'log' in the working folder was a NotADirectoryError
    after the artifacts were built."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "log").write_text("my own notes")
    code, err = cli("--model=SASRec")
    assert code == 2 and "'./log/SASRec/', but 'log' is a file here" in err and err.count("\n") == 1
    assert (tmp_path / "log").read_text() == "my own notes"
