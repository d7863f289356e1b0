"""Files that can travel with a dataset or come from another person never run code when loaded.

Each test writes a crafted pickle whose unpickling appends to a marker file (the negative control shows that
``weights_only=False`` would run it), hands it to the plugin where such a file is read (the teacher cache, the
``teacher_checkpoint``, UniSRec's ``pretrained_checkpoint``, an SCFT state), and asserts that the marker stays
absent and the refusal is one line naming the file.
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
