"""The plugin runner: config layering, dataset resolution, name errors, checkpoints, eval modes."""

import os
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny_config

from recbole_llm import Config, UnknownNameError, get_model, get_trainer, run_recbole_llm
from recbole_llm.trainer import PluginTrainerMixin

class PickledThing:
    pass


GROUPED_KEYS = ["hit_tail@10", "ndcg_head@10", "ndcg_tail@10", "ndcg_short@10", "ndcg_long@10"]


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_recbole_llm.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def one_line_error(proc):
    """The single stderr line of a run that must fail with exit code 2 and no traceback."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1
    return lines[0]


def test_unknown_model_is_one_line_exit_2():
    line = one_line_error(run_cli("--model=Nope", "--dataset=ml-100k"))
    assert "Unknown model 'Nope'" in line and "SASRec" in line and "BERT4Rec" in line


def test_unknown_dataset_is_one_line_exit_2(tmp_path):
    line = one_line_error(run_cli("--model=SASRec", "--dataset=nope", f"--data_path={tmp_path}"))
    assert "Unknown dataset 'nope'" in line and "ml-100k" in line and "scientific" in line


def test_space_separated_key_is_one_line_exit_2():
    line = one_line_error(run_cli("--model=SASRec", "--dataset=ml-100k", "--epochs", "1"))
    assert "'--epochs' is not --key=value" in line


def test_command_line_keys_reach_this_run_only(monkeypatch):
    """--key=value become the run's config dict, and the plugin's Config never reads sys.argv, so a nested run
    (the LLMEmb teacher) does not inherit --epochs=1 from the command line (RecBole's Config would)."""
    import recbole_llm
    import run_recbole_llm as cli

    seen = {}

    def fake_run(model, dataset, config_file_list=None, config_dict=None):
        seen.update(model=model, config_dict=config_dict, argv=list(sys.argv))
        nested = Config(model="SASRec", dataset="ml-100k", config_dict={"state": "WARNING"})
        seen["nested_epochs"] = nested["epochs"]
        return {"best_valid_result": {}, "test_result": {}}

    monkeypatch.setattr(recbole_llm, "run_recbole_llm", fake_run)
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py", "--model=SASRec", "--epochs=1", "--eval_args={'mode': 'uni100'}"])
    assert cli.main() == 0
    assert seen["config_dict"] == {"epochs": 1, "eval_args": {"mode": "uni100"}}
    assert seen["argv"][1:] == ["--model=SASRec", "--epochs=1", "--eval_args={'mode': 'uni100'}"]  # left alone
    assert seen["nested_epochs"] != 1


def test_plugin_yaml_layers_over_recbole(tmp_path):
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"checkpoint_dir": str(tmp_path)})
    # RecBole's SASRec.yaml is loaded (the class-instead-of-name trap would lose it) ...
    assert config["hidden_dropout_prob"] is not None and config["n_layers"] is not None
    # ... the plugin's overall.yaml follows the papers' protocol ...
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["eval_args"]["order"] == "TO"
    assert "ndcg_tail" in [m.lower() for m in config["metrics"]]
    # ... CE needs no training negatives, and ml-100k resolves offline to the recbole wheel's copy
    assert config["train_neg_sample_args"]["distribution"] == "none"
    assert os.path.isfile(os.path.join(config["data_path"], "ml-100k.inter"))
    # the dataset YAML carries the prompt settings
    assert config["prompt_instruction"].startswith("The movie")


def test_shared_dataset_properties(tmp_path):
    shared = os.path.join(ROOT, "..", "shared", "datasets")
    if not os.path.isdir(os.path.join(shared, "beauty")):
        pytest.skip("../shared/datasets not present")
    config = Config(model="SASRec", dataset="beauty", config_dict={"data_path": shared, "checkpoint_dir": str(tmp_path)})
    assert config["tail_threshold"] == 4 and config["short_history_threshold"] == 9
    assert config["prompt_instruction"] == "The beauty item has the following attributes:"
    assert os.path.realpath(config["data_path"]) == os.path.realpath(os.path.join(shared, "beauty"))


def test_get_model_and_trainer_fall_back_to_recbole():
    from recbole.model.sequential_recommender.caser import Caser
    from recbole.model.sequential_recommender.fdsa import FDSA as RecBoleFDSA
    from recbole.trainer import S3RecTrainer

    assert get_model("Caser") is Caser  # not in the plugin: RecBole's class
    assert get_model("FDSA") is not RecBoleFDSA and issubclass(get_model("FDSA"), RecBoleFDSA)  # the plugin's, first
    trainer = get_trainer(get_model("S3Rec").type, "S3Rec")
    assert issubclass(trainer, S3RecTrainer) or trainer.__name__ == "S3RecTrainer"
    assert issubclass(trainer, PluginTrainerMixin)
    with pytest.raises(UnknownNameError, match="Unknown model 'sasrec'"):
        get_model("sasrec")


@pytest.mark.parametrize("mode", ["full", "uni100"])
def test_tiny_run_reports_grouped_metrics(tiny_data, tmp_path, mode):
    config = tiny_config(tiny_data, tmp_path, epochs=2, eval_args={"mode": mode})
    result = run_recbole_llm(model="SASRec", dataset="tiny", config_dict=config)
    for key in GROUPED_KEYS:
        assert key in result["test_result"] and key in result["best_valid_result"]
    test = result["test_result"]
    # the grouped metrics partition the rows: the overall hit is a weighted mean of head and tail
    assert min(test["hit_head@10"], test["hit_tail@10"]) - 1e-4 <= test["hit@10"] <= max(test["hit_head@10"], test["hit_tail@10"]) + 1e-4
    # the best checkpoint was written by this run and loaded back under torch>=2.6 (weights_only default)
    assert os.path.isfile(result["model_file"])
    assert os.path.dirname(result["model_file"]) == str(tmp_path / "saved")
    assert not torch.is_anomaly_enabled()


def test_uni100_groups_match_full_rows(tiny_data, tmp_path):
    """In sampled eval each user is expanded into 101 rows; the grouped metrics still see one row per user."""
    config = tiny_config(tiny_data, tmp_path, epochs=1, eval_args={"mode": "uni100"}, valid_metric="NDCG_tail@10")
    result = run_recbole_llm(model="SASRec", dataset="tiny", config_dict=config)
    assert result["best_valid_score"] == result["best_valid_result"]["ndcg_tail@10"]


def test_checkpoint_names_are_unique(tiny_data, tmp_path):
    from recbole_llm.utils import create_dataset, data_preparation

    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path))
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    model = get_model("SASRec")(config, train.dataset)
    trainer_class = get_trainer(config["MODEL_TYPE"], "SASRec")
    first, second = trainer_class(config, model), trainer_class(config, model)
    assert first.saved_model_file != second.saved_model_file


def test_foreign_checkpoint_uses_safe_loader(tmp_path):
    """Only files the run wrote itself are unpickled; anything else goes through weights_only loading."""
    from recbole_llm.compat import load_own_checkpoint

    path = tmp_path / "other.pth"
    torch.save({"config": PickledThing(), "state_dict": {}}, path)  # a pickled object, like RecBole's Config
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_own_checkpoint(path, own_files=[])
    assert "config" in load_own_checkpoint(path, own_files=[str(path)])
