"""Serving a checkpoint (recbole_llm.recommend, recbole_llm.serve): top-K from full_sort_predict, new items from text, the
FAISS index, bad input in one line."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_tiny_dataset

from recbole_llm import run_recbole_llm
from recbole_llm.recommend import Recommender, main

faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A tiny dataset (60 users, 30 items with text) and one feature folder for every model of this module."""
    root = tmp_path_factory.mktemp("recommend")
    return {"root": root, "data": write_tiny_dataset(str(root / "data"), n_users=60), "features": str(root / "features")}


_TRAINED = {}


def train(shared, model, name=None, epochs=1, copy_data=False, **overrides):
    """model_file of ``model`` trained on the tiny data (once per name in this module); ``copy_data``: on its own copy."""
    name = name or model
    if name not in _TRAINED:
        data = shared["data"]
        if copy_data:
            data = str(shared["root"] / f"data-{name}")
            shutil.copytree(shared["data"], data)
        run_dir = shared["root"] / name
        config = tiny_config(data, run_dir, feature_dir=shared["features"], epochs=epochs, align_alpha=0.0, llmesr_alpha=0.0,
                             **overrides)
        result = run_recbole_llm(model=model, dataset="tiny", config_dict=config)
        _TRAINED[name] = (result["model_file"], data)
    return _TRAINED[name]


def reference(model_file):
    """The model rebuilt on its own and the first batch of its RecBole test loader: (config, model, interaction, scores)."""
    from recbole_llm.quick_start import load_model_file

    config, model, _, _, test = load_model_file(model_file, {"state": "WARNING"})
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(batch).view(len(batch), -1).float()
    return config, model, train_dataset(test), batch, scores


def train_dataset(loader):
    return loader._dataset


def history_tokens(dataset, batch, model):
    tokens = dataset.field2id_token[dataset.iid_field]
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    return [[str(tokens[i]) for i in seq[row, : lengths[row]].tolist()] for row in range(len(seq))]


@pytest.mark.parametrize("model_name", ["SASRec", "BERT4Rec", "LLMEmbSASRec", "LEARN"])
def test_topk_is_the_ranking_of_full_sort_predict(shared, model_name):
    """For histories of RecBole's own test loader, the top K (exact, and through a FAISS index: flat, and HNSW forced)
    are the K best columns of the model's full_sort_predict, with and without the items of the history."""
    extra = {"train_mode": "all_positions"} if model_name == "LEARN" else {}
    model_file, _ = train(shared, model_name, **extra)
    _, model, dataset, batch, scores = reference(model_file)
    histories = history_tokens(dataset, batch, model)[:20]
    tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field]]
    rec = Recommender.from_checkpoint(model_file, log=lambda _: None)
    for index in (None, "flat", "hnsw"):
        if index:
            rec.use_index(index, str(shared["root"] / f"index-{model_name}"))
        for exclude_seen in (False, True):
            for row, history in enumerate(histories):
                expected = scores[row].clone()
                expected[0] = -np.inf
                if exclude_seen:
                    expected[[tokens.index(t) for t in history]] = -np.inf
                order = torch.argsort(expected, descending=True)[:5]
                got = rec.recommend(history, k=5, exclude_seen=exclude_seen)
                assert [g["item"] for g in got] == [tokens[i] for i in order], (index, exclude_seen, row)
                np.testing.assert_allclose([g["score"] for g in got], expected[order].numpy(), rtol=1e-5, atol=1e-5)
                if exclude_seen:
                    assert not set(g["item"] for g in got) & set(history)
    if model_name == "BERT4Rec":  # the score has a per-item bias: it travels in the index as an extra dimension
        assert rec.index.index.d == model.hidden_size + 1 and float(model.output_bias.detach().abs().max()) > 0


def test_dataset_users_get_their_whole_history(shared):
    """--users scores the history export embeds (the test row's history and its target), and --exclude_seen leaves out
    every item of the user's .inter lines, whichever split they fell in."""
    from recbole.data.interaction import Interaction

    from recbole_llm.export import full_histories
    from recbole_llm.quick_start import load_model_file

    # one training row per user, its lists cut to 4 items: older items are in no training row's lists
    model_file, _ = train(shared, "LLMEmbSASRec", name="LLMEmbSASRec-allpos", train_mode="all_positions", MAX_ITEM_LIST_LENGTH=4)
    config, model, _, _, test = load_model_file(model_file, {"state": "WARNING"})
    model.eval()
    dataset = test._dataset
    seq, lengths = full_histories(dataset, config["MAX_ITEM_LIST_LENGTH"])
    user_tokens = [str(t) for t in dataset.field2id_token[dataset.uid_field]]
    item_tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field]]
    users = [user_tokens[int(u)] for u in dataset.inter_feat[dataset.uid_field][:8]]
    with torch.no_grad():
        scores = model.full_sort_predict(Interaction({model.ITEM_SEQ: seq[:8], model.ITEM_SEQ_LEN: lengths[:8]})).view(8, -1)
    raw = [line.split("\t") for line in open(os.path.join(shared["data"], "tiny", "tiny.inter")).read().splitlines()[1:]]
    got = Recommender.from_checkpoint(model_file, log=lambda _: None).recommend_users(users, k=10, exclude_seen=True)
    for row, user in enumerate(users):
        seen = {item for u, item, _ in raw if u == user}
        expected = scores[row].clone()
        expected[[0] + [item_tokens.index(t) for t in seen]] = -np.inf
        order = torch.argsort(expected, descending=True)[: min(10, 30 - len(seen))]
        assert [g["item"] for g in got[user]] == [item_tokens[i] for i in order]
        assert len(seen) > 4 and not seen & {g["item"] for g in got[user]}


COLD_MODELS = {
    "LLMEmbSASRec-zca": ("LLMEmbSASRec", {"feature_whitening": "zca"}),
    "LLMEmbBERT4Rec": ("LLMEmbBERT4Rec", {}),
    "LEARN": ("LEARN", {"train_mode": "all_positions"}),
    "UniSRec": ("UniSRec", {}),
    "LLMESRSASRec-generate": ("LLMESRSASRec", {"cold_id": "generate"}),
    "LLM2XSASRec-dropout": ("LLM2XSASRec", {"cold_id": "dropout", "cold_id_norm": "mean"}),
}


def cold_model(shared, key):
    model, overrides = COLD_MODELS[key]
    return train(shared, model, name=f"cold-{key}", epochs=3, copy_data=True, cold_item_ratio=0.2, learning_rate=0.01, **overrides)


def move_cold_rows(data, cold_tokens, folder):
    """Take the cold items' rows out of the dataset's .item file into FOLDER/new.item, under new ids."""
    item_file = os.path.join(data, "tiny", "tiny.item")
    lines = open(item_file).read().splitlines()
    header, rows = lines[0], lines[1:]
    cold = [r for r in rows if r.split("\t")[0] in cold_tokens]
    with open(item_file, "w") as handle:
        handle.write("\n".join([header] + [r for r in rows if r.split("\t")[0] not in cold_tokens]) + "\n")
    path = os.path.join(folder, "new.item")
    with open(path, "w") as handle:
        handle.write("\n".join([header] + ["new-" + r for r in cold]) + "\n")
    return path, cold


@pytest.mark.parametrize("key", list(COLD_MODELS))
def test_a_new_item_scores_as_the_cold_start_evaluation_scores_it(shared, tmp_path, key):
    """Train with the cold-start protocol, move the cold items out of the .item file into a new-items file (new ids): added
    from their text, they get the scores full_sort_predict gives the held-out items, and the known items keep theirs."""
    model_file, data = cold_model(shared, key)
    _, model, dataset, batch, scores = reference(model_file)
    tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field]]
    cold_ids = torch.nonzero(dataset.cold_items).view(-1).tolist()
    new_file, _ = move_cold_rows(data, {tokens[i] for i in cold_ids}, str(tmp_path))
    rec = Recommender.from_checkpoint(model_file, new_items=new_file, log=lambda _: None)
    assert rec.new_tokens == ["new-" + tokens[i] for i in sorted(cold_ids, key=lambda i: int(tokens[i][1:]))]
    histories = history_tokens(dataset, batch, model)
    seq, lengths = rec.scorer.histories([[tokens.index(t) for t in h] for h in histories])
    users = rec.scorer.user_factors(seq, lengths)
    new_scores = users @ rec.new_vectors.t() + (0 if rec.new_bias is None else rec.new_bias)
    expected = scores[:, [tokens.index(t[len("new-"):]) for t in rec.new_tokens]]
    assert expected.std() > 0
    torch.testing.assert_close(new_scores, expected, rtol=1e-4, atol=1e-4)
    # ranked beside the known items: the held-out item and its new twin have the same score
    got = rec.recommend(histories[0], k=len(tokens) - 1 + len(cold_ids))
    by_item = {g["item"]: g["score"] for g in got}
    for token in rec.new_tokens:
        assert by_item[token] == pytest.approx(by_item[token[len("new-"):]], rel=1e-4, abs=1e-4)
    known = [g["score"] for g in got if not g["new"]]
    np.testing.assert_allclose(sorted(known, reverse=True), torch.sort(scores[0, 1:], descending=True)[0].numpy(), rtol=1e-5, atol=1e-5)


def test_new_items_text_decides_their_score(shared, tmp_path):
    """Negative control: another text gives another score (the path reads the text, not the id)."""
    model_file, data = cold_model(shared, "LLMEmbSASRec-zca")
    path = tmp_path / "new.item"
    path.write_text("item_id:token\ttitle:token\tbrand:token\tcategories:token_seq\n"
                    "n1\tred lamp model 3\tbrand3\tHome Office_Supplies Lamp\nn2\tgreen pen model 9\tbrand1\tHome Pen\n")
    rec = Recommender.from_checkpoint(model_file, new_items=str(path), log=lambda _: None)
    assert not torch.allclose(rec.new_vectors[0], rec.new_vectors[1])
    got = rec.recommend(["i1", "i2"], k=32)
    assert {g["item"] for g in got if g["new"]} == {"n1", "n2"} and got[0]["score"] >= got[-1]["score"]
    assert next(g for g in got if g["item"] == "n1")["title"] == "red lamp model 3"


def test_id_only_model_refuses_new_items(shared, tmp_path, capsys):
    model_file, _ = train(shared, "SASRec")
    path = tmp_path / "new.item"
    path.write_text("item_id:token\ttitle:token\nn1\tred lamp\n")
    assert main([f"--model_file={model_file}", "--users=u1", f"--new_items={path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SASRec scores items by trained ID rows only" in err


# ---- the index ---------------------------------------------------------------------------------------------------------
def clustered(n, d, seed):
    """Rows around 64 fixed centres (the same for every seed)."""
    centres = np.random.default_rng(0).normal(size=(64, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, 64, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_index_recall_at_its_calibrated_depth(tmp_path, kind):
    """On held-out queries the calibrated index finds >= 0.95 of the exact top 10; at depth 1 it finds fewer (the check
    can fail)."""
    from recbole_llm.serve.index import calibrate, ensure_index, exact_topk, recall_at, set_depth

    vectors = clustered(20000, 16, 0)
    queries = clustered(600, 16, 1)
    model_file = tmp_path / "model.pth"
    model_file.write_bytes(b"checkpoint")
    built = ensure_index(vectors, str(model_file), requested=kind, calibration_queries=queries[:300], log=lambda _: None)
    truth = exact_topk(vectors, queries[300:], 10)[1]
    assert recall_at(built.search(queries[300:], 10)[1], truth) >= 0.95
    set_depth(built.index, kind, 1)
    assert recall_at(built.index.search(queries[300:], 10)[1], truth) < 0.95
    assert calibrate(built, queries[:300])[1] >= 0.97


def test_index_is_reused_keyed_by_the_checkpoint_and_never_read_when_swapped(tmp_path):
    from recbole_llm.serve.index import ensure_index

    vectors = clustered(2000, 8, 0)
    model_file = tmp_path / "model.pth"
    model_file.write_bytes(b"checkpoint one")
    lines = []
    first = ensure_index(vectors, str(model_file), requested="hnsw", calibration_queries=vectors[:50], log=lines.append)
    again = ensure_index(vectors, str(model_file), requested="hnsw", calibration_queries=vectors[:50], log=lines.append)
    assert lines[0].startswith("built") and lines[1].startswith("reusing") and again.path == first.path
    with open(first.path, "ab") as handle:  # swapped or damaged: its content no longer matches its .json
        handle.write(b"\0")
    ensure_index(vectors, str(model_file), requested="hnsw", calibration_queries=vectors[:50], log=lines.append)
    assert lines[2].startswith("built")
    model_file.write_bytes(b"checkpoint two")  # a retrained model under the same name: a new key, the old index removed
    third = ensure_index(vectors, str(model_file), requested="hnsw", calibration_queries=vectors[:50], log=lines.append)
    assert lines[3].startswith("built") and third.path != first.path
    assert sorted(os.listdir(tmp_path)) == sorted(["model.pth", os.path.basename(third.path), os.path.basename(third.path)[:-6] + ".json"])
    assert json.load(open(third.path[:-6] + ".json"))["key"] in third.path


def test_an_index_of_other_vectors_is_never_reused(tmp_path):
    """The same checkpoint over a re-sorted dataset numbers its items otherwise: the vectors are in the index's key."""
    from recbole_llm.serve.index import ensure_index, exact_topk

    vectors = clustered(2000, 8, 0)
    model_file = tmp_path / "model.pth"
    model_file.write_bytes(b"checkpoint")
    lines = []
    ensure_index(vectors, str(model_file), requested="flat", log=lines.append)
    shuffled = np.ascontiguousarray(vectors[::-1])
    index = ensure_index(shuffled, str(model_file), requested="flat", log=lines.append)
    assert lines[1].startswith("built"), lines  # not "reusing": the rows are other items now
    np.testing.assert_array_equal(index.search(vectors[:20], 5)[1], exact_topk(shuffled, vectors[:20], 5)[1])


def test_ties_at_the_kth_place_go_to_the_lower_id():
    from recbole_llm.serve.scoring import topk_rows

    scores = torch.zeros(3, 40)
    scores[1, 30] = 2.0
    scores[2, [7, 9]] = -1.0
    for _ in range(3):
        values, ids = topk_rows(scores, 3)
        assert ids.tolist() == [[0, 1, 2], [30, 0, 1], [0, 1, 2]] and values[1, 0] == 2.0


def test_a_row_the_index_leaves_short_is_ranked_exactly(shared):
    """An IVF index whose probed lists run out returns fewer than k items (FAISS pads with -1); those rows come from
    the exact ranking, not short."""
    model_file, _ = train(shared, "SASRec")
    rec = Recommender.from_checkpoint(model_file, log=lambda _: None)
    history = ["i1", "i2", "i3"]
    k = 8
    exact = rec.recommend(history, k=k, exclude_seen=True)
    rec.use_index("flat", str(shared["root"] / "index-short"))
    search = rec.index.search

    def short_search(queries, depth):  # what IVF gives when its probed lists hold only 4 items
        scores, rows = search(queries, depth)
        scores[:, 4:], rows[:, 4:] = -np.inf, -1
        return scores, rows

    rec.index.search = short_search
    got = rec.recommend(history, k=k, exclude_seen=True)
    assert [g["item"] for g in got] == [g["item"] for g in exact] and len(got) == k
    rec.index.search = search


def test_an_empty_history_is_one_line(shared):
    from recbole_llm.serve import ServeError

    rec = Recommender.from_checkpoint(train(shared, "SASRec")[0], log=lambda _: None)
    with pytest.raises(ServeError, match="is empty"):
        rec.recommend([], k=3)


def test_index_type_by_size():
    from recbole_llm.serve.index import choose_type

    assert [choose_type(n) for n in (4344, 49_999, 50_000, 1_000_000)] == ["flat", "flat", "ivf", "ivf"]
    assert choose_type(1_000_000, "hnsw") == "hnsw"


# ---- the command line -------------------------------------------------------------------------------------------------
def test_command_line_writes_csv_and_jsonl(shared, tmp_path, capsys):
    model_file, _ = train(shared, "LLMEmbSASRec")
    users = tmp_path / "users.txt"
    users.write_text("user_id:token\nu1\n# a comment\n\nu2\n")
    histories = tmp_path / "histories.tsv"
    histories.write_text("alice\ti1,i2 i3\ni4\n")
    out = tmp_path / "recs.csv"
    args = [f"--model_file={model_file}", f"--users_file={users}", f"--history_file={histories}", "--k=3", "--no_progress"]
    assert main(args + [f"--out={out}"]) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()]
    assert rows[0] == ["user", "rank", "item", "score", "title", "new"] and len(rows) == 1 + 4 * 3
    assert [r[0] for r in rows[1::3]] == ["u1", "u2", "alice", "history2"]
    jsonl = tmp_path / "recs.jsonl"
    assert main(args + [f"--out={jsonl}"]) == 0
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["user"] for line in lines] == ["u1", "u2", "alice", "history2"]
    assert [(i["item"], i["title"]) for i in lines[2]["items"]] == [(r[2], r[4]) for r in rows[7:10]]
    single = Recommender.from_checkpoint(str(model_file), log=lambda _: None).recommend(["i1", "i2", "i3"], k=3)
    # the same items and titles; the scores up to float32 rounding (a batch of 4 histories against one: another BLAS path)
    assert [(i["item"], i["title"], i["new"]) for i in lines[2]["items"]] == [(i["item"], i["title"], i["new"]) for i in single]
    assert [i["score"] for i in lines[2]["items"]] == pytest.approx([i["score"] for i in single], rel=1e-5, abs=1e-6)
    capsys.readouterr()


def test_a_stop_leaves_no_output(shared, tmp_path, monkeypatch):
    from recbole_llm.errors import Stopped

    model_file, _ = train(shared, "LLMEmbSASRec")
    calls = []

    def stop_on_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Stopped()
        return original(self, *args, **kwargs)

    original = Recommender.rank
    monkeypatch.setattr(Recommender, "rank", stop_on_second)
    out = tmp_path / "recs.csv"
    assert main([f"--model_file={model_file}", "--all_users", "--batch_size=8", f"--out={out}"]) == 143
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


BAD = [
    (["--users=u1,nobody"], "--users: 1 user(s) not in dataset tiny ('nobody')"),
    (["--history=i1,zz9"], "--history: 1 item(s) not in dataset tiny: 'zz9' (history 'history1')"),
    (["--users_file={tmp}/none.txt"], "--users_file '{tmp}/none.txt' does not exist"),
    (["--history_file={tmp}/bad.jsonl"], "--history_file '{tmp}/bad.jsonl' line 1 is not JSON"),
    (["--users=u1", "--new_items={tmp}/items.txt"], "--new_items '{tmp}/items.txt' is not a .item file"),
    (["--users=u1", "--new_items={tmp}/known.item"], "1 item(s) are already in the catalogue of tiny ('i3')"),
    (["--users=u1", "--new_items={tmp}/notext.item"], "it needs the columns of the dataset's .item file"),
    (["--users=u1", "--out={tmp}/recs.txt"], "--out '{tmp}/recs.txt' must end in .csv or .jsonl"),
    (["--users=u1", "--k=31"], "--k=31: pass a whole number from 1 to 30"),
    ([], "recommend for whom?"),
    (["--users=u1", "--index_type=annoy", "--index=faiss"], "--index_type 'annoy' is not one of"),
    (["--users=u1", "--index_type=hnsw"], "--index_type is an option of the FAISS index: add --index=faiss"),
    (["--users=u1", "--index_dir={tmp}"], "--index_dir is an option of the FAISS index"),
    (["--history=i1", "--history=,"], "--history is empty"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_is_one_line(shared, tmp_path, capsys, args, message):
    model_file, _ = train(shared, "LLMEmbSASRec")
    capsys.readouterr()  # what training printed (the first test to need the model trains it)
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "items.txt").write_text("x\n")
    (tmp_path / "known.item").write_text("item_id:token\ttitle:token\tbrand:token\tcategories:token_seq\ni3\ta\tb\tc\n")
    (tmp_path / "notext.item").write_text("item_id:token\tname:token\nn1\ta\n")
    args = [a.format(tmp=tmp_path) for a in args]
    assert main([f"--model_file={model_file}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message.format(tmp=tmp_path) in err, err


def test_missing_faiss_is_one_line(shared, capsys, monkeypatch):
    import builtins

    model_file, _ = train(shared, "LLMEmbSASRec")
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    assert main([f"--model_file={model_file}", "--users=u1", "--index=faiss"]) == 2
    assert "--index=faiss needs the faiss-cpu package: pip install faiss-cpu" in capsys.readouterr().err


def test_help_says_the_checkpoint_is_unpickled(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "unpickled" in capsys.readouterr().out
