"""Files that can travel with a dataset or come from another person never run code when loaded.

Each test writes a crafted pickle whose unpickling appends to a marker file (the negative control shows that
``weights_only=False`` would run it), hands it to the plugin where such a file is read (the teacher cache, the
``teacher_checkpoint``, UniSRec's ``pretrained_checkpoint``, an SCFT state), and asserts that the marker stays
absent and the refusal is one line naming the file. RecBole's own pickle caches (the split dataloaders and the
dataset, under their default names) are planted in the three folders a run reads them from, with the negative control
that RecBole's ``data_preparation`` and ``create_dataset`` run them.
"""

import importlib
import os

import pytest
import torch
from conftest import rand_features_config, tiny_config

from recbole_llm import Config, create_dataset, get_model, run_recbole_llm
from recbole_llm.errors import UserError
from recbole_llm.quick_start import prepare_artifacts
from recbole_llm.utils import data_preparation


class Payload:
    """Unpickling this runs ``exec``: it appends a line to ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'a').write('ran\\n')",))


def craft(path, marker, wrap=lambda payload: {"item_embedding": payload}):
    torch.save(wrap(Payload(marker)), str(path))
    return str(path)


def test_the_payload_would_run_if_unpickled(tmp_path):
    marker = tmp_path / "marker"
    path = craft(tmp_path / "evil.pth", marker)
    torch.load(path, weights_only=False)  # the negative control: an unpickling load runs it
    assert marker.read_text() == "ran\n"


features_config = rand_features_config


def test_a_forged_teacher_cache_does_not_run(tiny_data, tmp_path):
    from recbole_llm.model.teacher import teacher_path

    config_dict = features_config(tiny_data, tmp_path, align_alpha=0.5, teacher_epochs=1)
    path = teacher_path(Config(model="LLMEmbSASRec", dataset="tiny", config_dict=config_dict), 16)
    marker = tmp_path / "marker"
    craft(path, marker)  # a file under the cache's own name, as a shipped dataset folder could hold
    with pytest.raises(UserError, match="holds pickled Python objects") as err:
        run_recbole_llm(model="LLMEmbSASRec", dataset="tiny", config_dict=config_dict)
    assert path in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_a_forged_teacher_checkpoint_is_refused_by_the_cli(tiny_data, tmp_path, capsys):
    marker = tmp_path / "marker"
    path = craft(tmp_path / "teacher.pth", marker)
    run = importlib.import_module("run_recbole_llm")
    config = features_config(tiny_data, tmp_path)
    code = run.main([
        "--model=LLMEmbSASRec", "--dataset=tiny", f"--data_path={tiny_data}", f"--feature_dir={config['feature_dir']}",
        "--llm_feature=rand", f"--teacher_checkpoint={path}", f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=1",
        "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--state=WARNING",
    ])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert path in err and "recbole_llm.export" in err
    assert not marker.exists()


def test_the_cached_teacher_is_plain_and_an_exported_checkpoint_serves_as_teacher(tiny_data, tmp_path):
    from recbole_llm.export import export_weights

    config_dict = features_config(tiny_data, tmp_path, align_alpha=0.5, teacher_epochs=1)
    from recbole_llm.model.teacher import teacher_path

    run_recbole_llm(model="LLMEmbSASRec", dataset="tiny", config_dict=config_dict)
    cached = torch.load(teacher_path(Config(model="LLMEmbSASRec", dataset="tiny", config_dict=config_dict), 16), weights_only=True)
    assert cached["item_embedding"].shape[1] == 16 and all(isinstance(t, str) for t in cached["item_tokens"])
    # a user's own SASRec checkpoint is refused as a teacher (it pickles its Config) until exported as weights
    sasrec = run_recbole_llm(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path))
    with pytest.raises(UserError, match="holds pickled Python objects.*recbole_llm.export"):
        run_recbole_llm(model="LLMEmbSASRec", dataset="tiny", config_dict={**config_dict, "teacher_checkpoint": sasrec["model_file"]})
    weights = str(tmp_path / "sasrec-weights.pth")
    export_weights(sasrec["model_file"], weights)
    state = torch.load(weights, weights_only=True)["state_dict"]
    student = run_recbole_llm(model="LLMEmbSASRec", dataset="tiny", config_dict={**config_dict, "teacher_checkpoint": weights})
    assert student["test_result"] is not None
    config = Config(model="LLMEmbSASRec", dataset="tiny", config_dict={**config_dict, "teacher_checkpoint": weights})
    prepare_artifacts(config)
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("LLMEmbSASRec")(config, train.dataset)
    torch.testing.assert_close(model.teacher_table[1:], state["item_embedding.weight"][1 : model.teacher_table.size(0)])


def unisrec(tiny_data, tmp_path, checkpoint):
    config = Config(model="UniSRec", dataset="tiny", config_dict=features_config(tiny_data, tmp_path, pretrained_checkpoint=checkpoint))
    prepare_artifacts(config)
    train, _, _ = data_preparation(config, create_dataset(config))
    return get_model("UniSRec")(config, train.dataset)


def test_unisrec_pretrained_checkpoints_are_plain_and_must_transfer(tiny_data, tmp_path):
    marker = tmp_path / "marker"
    evil = craft(tmp_path / "evil.pth", marker, wrap=lambda payload: {"state_dict": payload})
    with pytest.raises(UserError, match="holds pickled Python objects"):
        unisrec(tiny_data, tmp_path, evil)
    assert not marker.exists()
    empty = str(tmp_path / "empty.pth")
    torch.save({"state_dict": {}}, empty)
    with pytest.raises(UserError, match="transfers no weight"):
        unisrec(tiny_data, tmp_path, empty)
    only_items = str(tmp_path / "items.pth")
    torch.save({"state_dict": {"item_embedding.weight": torch.zeros(31, 16)}}, only_items)
    with pytest.raises(UserError, match="transfers no weight"):
        unisrec(tiny_data, tmp_path, only_items)


def test_a_forged_scft_state_does_not_run(tmp_path):
    from recbole_llm.llm.scft import load_scft_state

    marker = tmp_path / "marker"
    path = craft(tmp_path / "scft-state.pt", marker, wrap=lambda payload: {"lora": payload})
    with pytest.raises(UserError, match="SCFT state .* holds pickled Python objects.*delete it"):
        load_scft_state(path, {}, "cpu")
    assert not marker.exists()
    torch.save({"lora": {}}, path)
    with pytest.raises(UserError, match="lacks"):
        load_scft_state(path, {}, "cpu")


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"\x80\x04K\x01."])
def test_unreadable_files_are_one_line(tmp_path, content):
    from recbole_llm.fileio import load_plain

    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_plain(path, "teacher checkpoint", "the fix")
    assert str(path) in str(err.value) and str(err.value).endswith("the fix") and "\n" not in str(err.value)
    assert not os.path.exists(tmp_path / "marker")


# ---- RecBole's own caches: <checkpoint_dir>/<dataset>-for-<model>-dataloader.pth and <dataset>-<Class>.pth ----------
def plant_recbole_caches(folder, marker, model, dataset="tiny"):
    """RecBole's cache files under their default names in ``folder``, each a pickle whose loading appends to ``marker``
    (RecBole reads them with plain ``pickle.load``)."""
    import pickle

    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"{dataset}-for-{model}-dataloader.pth"), os.path.join(folder, f"{dataset}-SequentialDataset.pth")]
    for path in paths:
        with open(path, "wb") as handle:
            pickle.dump(Payload(marker), handle)
    return paths


def test_recbole_would_run_its_planted_caches(tiny_data, tmp_path):
    """The negative control: RecBole's own data_preparation and create_dataset unpickle the files (whatever
    save_dataloaders / save_dataset say), so a results folder someone hands over runs code on resume."""
    from recbole.data import create_dataset as recbole_create_dataset
    from recbole.data import data_preparation as recbole_data_preparation

    marker = tmp_path / "marker"
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path))
    assert not config["save_dataloaders"] and not config["save_dataset"]
    plant_recbole_caches(config["checkpoint_dir"], marker, "SASRec")
    dataset = create_dataset(config)
    with pytest.raises(Exception):  # the payload ran, then RecBole found no dataloaders in what it returned
        recbole_data_preparation(config, dataset)
    assert marker.read_text() == "ran\n"
    with pytest.raises(Exception):
        recbole_create_dataset(config)
    assert marker.read_text() == "ran\nran\n"


def test_planted_recbole_caches_in_the_default_saved_folder_do_not_run(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    config_dict = tiny_config(tiny_data, tmp_path)
    del config_dict["checkpoint_dir"]  # the default: saved/ in the current folder
    plant_recbole_caches(str(tmp_path / "saved"), marker, "SASRec")
    result = run_recbole_llm(model="SASRec", dataset="tiny", config_dict=config_dict)
    assert os.path.dirname(os.path.abspath(result["model_file"])) == str(tmp_path / "saved")
    assert result["test_result"] is not None and not marker.exists()


def test_planted_recbole_caches_in_a_suite_out_folder_do_not_run(tiny_data, tmp_path):
    from recbole_llm.benchmark import main as benchmark_main

    marker, out = tmp_path / "marker", tmp_path / "out"
    plant_recbole_caches(str(out / "saved" / "tiny" / "SASRec"), marker, "SASRec")
    code = benchmark_main([
        "--dataset=tiny", f"--data_path={tiny_data}", "--models=SASRec", "--epochs=1", "--seeds=1", f"--out={out}",
        "--hidden_size=16", "--inner_size=32", "--n_layers=1", "--n_heads=1", "--MAX_ITEM_LIST_LENGTH=10",
        "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}",
    ])
    assert code == 0 and (out / "runs" / "tiny" / "SASRec" / "1.json").is_file()
    assert not marker.exists()


def test_planted_recbole_caches_in_a_parity_out_folder_do_not_run(tiny_data, tmp_path):
    from recbole_llm.parity.runner import main as parity_main

    marker, out = tmp_path / "marker", tmp_path / "parity"
    config = features_config(tiny_data, tmp_path)
    plant_recbole_caches(str(out / "saved" / "tiny" / "ours"), marker, "LEARN")
    code = parity_main([
        "--method=learn", "--official=unused", "--dataset=tiny", f"--data_path={tiny_data}", "--sides=ours", "--seeds=1",
        "--epochs=1", f"--out={out}", f"--feature_dir={config['feature_dir']}", "--llm_feature=rand", "--d_model=16",
        "--n_layers=1", "--n_heads=1", "--inner_size=32", "--embedding_dim=16", "--train_batch_size=64",
    ])
    assert code == 0 and (out / "runs" / "tiny" / "ours" / "1.json").is_file()
    assert not marker.exists()


@pytest.mark.parametrize("key, value", [("save_dataloaders", True), ("dataloaders_save_path", "x.pth"),
                                        ("save_dataset", True), ("dataset_save_path", "x.pth")])
def test_recbole_pickle_cache_keys_are_refused(tiny_data, tmp_path, key, value):
    with pytest.raises(UserError, match=f"config key '{key}' .*pickles, which can run code.*drop the key") as err:
        Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, **{key: value}))
    assert "\n" not in str(err.value)


def test_a_teacher_file_exported_from_another_dataset_is_refused(tiny_data, tmp_path):
    """Its item tokens cover this dataset's (same ids), but its rows learnt other data: the file's dataset decides."""
    from recbole_llm.model.teacher import load_teacher_table

    dataset = create_dataset(Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path)))
    weights = {"state_dict": {"item_embedding.weight": torch.randn(31, 16)}, "item_tokens": ["[PAD]"] + [f"i{i}" for i in range(30)],
               "model": "SASRec", "dataset": "beauty"}
    torch.save(weights, str(tmp_path / "other.pth"))
    with pytest.raises(UserError, match="exported from a run on dataset 'beauty', this run is on 'tiny'") as err:
        load_teacher_table(str(tmp_path / "other.pth"), dataset, 16)
    assert "\n" not in str(err.value)
    torch.save({**weights, "dataset": "tiny"}, str(tmp_path / "same.pth"))
    assert load_teacher_table(str(tmp_path / "same.pth"), dataset, 16).shape == (31, 16)


def test_unisrec_refuses_another_models_weights_and_loads_its_own(tiny_data, tmp_path):
    source = unisrec(tiny_data, tmp_path, None)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("plm_embedding")}
    encoder_only = {k: v for k, v in state.items() if not k.startswith("moe_adaptor.")}
    cases = {
        "sasrec.pth": ({"state_dict": encoder_only, "model": "SASRec"}, "holds the weights of a SASRec, not a UniSRec"),
        "no_adaptor.pth": ({"state_dict": encoder_only}, r"lacks weights of this UniSRec: \[.moe_adaptor"),
        "wide.pth": ({"state_dict": {**state, "moe_adaptor.w_gate": torch.zeros(99, 8)}, "model": "UniSRec"}, "other shapes"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, str(tmp_path / name))
        with pytest.raises(UserError, match=message) as err:
            unisrec(tiny_data, tmp_path, str(tmp_path / name))
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
    trained = {k: v + 0.5 for k, v in state.items()}  # unlike a fresh model's (the same seed builds the same one)
    torch.save({"state_dict": trained, "model": "UniSRec"}, str(tmp_path / "unisrec.pth"))
    loaded = unisrec(tiny_data, tmp_path, str(tmp_path / "unisrec.pth"))
    torch.testing.assert_close(loaded.moe_adaptor.w_gate, trained["moe_adaptor.w_gate"])
    encoder = {k[len("trm_encoder."):]: v for k, v in trained.items() if k.startswith("trm_encoder.")}
    torch.testing.assert_close(dict(loaded.trm_encoder.state_dict()), encoder)
