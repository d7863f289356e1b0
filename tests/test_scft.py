"""SCFT: augmentation, LoRA targets, NaN guard, resume, exported features (tiny Llama and MiniLM)."""

import os
import re
import random

import numpy as np
import pytest
import torch
from conftest import tiny_config

from recbole_llm import Config, create_dataset
from recbole_llm.llm import scft
from recbole_llm.llm.embed import load_llm
from recbole_llm.llm.extract import ensure_features
from recbole_llm.llm.features import find_feature_file, load_features
from recbole_llm.llm.prompts import read_item_text
from recbole_llm.llm.scft import NonFiniteLossError, SCFTSettings, ensure_scft_features, lora_targets, make_view, train_scft


def config_for(data, tmp_path, **overrides):
    overrides.setdefault("feature_dir", str(tmp_path / "features"))
    return Config(model="SASRec", dataset="tiny", config_dict=tiny_config(data, tmp_path, **overrides))


def test_views_shuffle_drop_and_change_every_draw():
    attrs = [("title", "red lamp"), ("brand", "acme"), ("categories", "Home, Lamp"), ("color", "red"), ("size", "xl")]
    rng = random.Random(0)
    views = [make_view(attrs, 0.4, rng) for _ in range(20)]
    assert all(len(v) == 5 - 2 for v in views)  # floor(0.4 * 5) = 2 dropped
    assert all(set(v) <= set(attrs) for v in views)
    assert len({tuple(v) for v in views}) > 5  # drawn afresh each time
    single = [("title", "stanley heavy duty staple gun kit")]
    one_views = {make_view(single, 0.4, rng)[0][1] for _ in range(10)}
    assert len(one_views) > 1 and all(len(v.split()) == 6 - 2 for v in one_views)  # word-level dropout
    assert make_view([("title", "x")], 0.4, rng) == [("title", "x")]


def test_lora_targets_by_family(tiny_llama_dir):
    llama, _ = load_llm(tiny_llama_dir)
    assert lora_targets(llama) == list(scft.DECODER_TARGETS)
    bert, _ = load_llm("minilm")
    assert lora_targets(bert) == ["query", "key", "value", "dense"]
    assert lora_targets(bert, ["query", "value"]) == ["query", "value"]
    with pytest.raises(ValueError, match="q_proj"):
        lora_targets(bert, ["q_proj"])


def test_non_finite_loss_stops_the_run(tiny_data, tmp_path, tiny_llama_dir, monkeypatch):
    text = read_item_text(os.path.join(tiny_data, "tiny"), "tiny", ["title", "brand", "categories"])
    real = scft.embed_batch
    monkeypatch.setattr(scft, "embed_batch", lambda *a, **k: real(*a, **k) * float("nan"))
    settings = SCFTSettings(llm_path=tiny_llama_dir, steps=3, batch_size=4, eval_items=8, checkpoint_every=0)
    with pytest.raises(NonFiniteLossError, match="step 0"):
        train_scft(text, "Inst:", settings, str(tmp_path / "out"), show_progress=False)


def test_resume_continues_from_the_last_checkpoint(tiny_data, tmp_path, tiny_llama_dir, monkeypatch, capsys):
    text = read_item_text(os.path.join(tiny_data, "tiny"), "tiny", ["title", "brand", "categories"])
    settings = SCFTSettings(llm_path=tiny_llama_dir, steps=4, batch_size=4, eval_items=8, checkpoint_every=2, lr=1e-2)
    out = str(tmp_path / "out")
    calls = {"n": 0}
    real = scft.embed_batch

    def crash_at_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # two views per step: the 5th call is step 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scft, "embed_batch", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_scft(text, "Inst:", settings, out, show_progress=False)
    assert torch.load(os.path.join(out, "scft-state.pt"), weights_only=True)["step"] == 2
    monkeypatch.setattr(scft, "embed_batch", real)
    _, _, report = train_scft(text, "Inst:", settings, out, resume=True, show_progress=False)
    assert "resumed from step 2" in capsys.readouterr().out
    assert report["steps"] == 4
    state = torch.load(os.path.join(out, "scft-state.pt"), weights_only=True)
    assert state["step"] == 4 and len(state["losses"]) == 4


@pytest.mark.parametrize("llm", ["llama", "minilm"])
def test_scft_exports_changed_features_without_nan(tiny_data, tmp_path, tiny_llama_dir, llm, capsys):
    llm_path = tiny_llama_dir if llm == "llama" else "minilm"
    config = config_for(tiny_data, tmp_path, llm_path=llm_path, scft_steps=6, scft_batch_size=8, scft_lr=5e-3, scft_eval_items=30)
    untuned = ensure_features(config, show_progress=False)
    name = ensure_scft_features(config, show_progress=False)
    out = capsys.readouterr().out
    assert "SCFT view retrieval on 30 items" in out and "tuned features" in out
    _, tuned_matrix, meta = load_features(find_feature_file(config, name))
    _, base_matrix, _ = load_features(find_feature_file(config, untuned))
    assert np.isfinite(tuned_matrix).all()
    assert tuned_matrix.shape == base_matrix.shape
    assert not np.allclose(tuned_matrix, base_matrix, atol=1e-4)  # training changed the embeddings
    assert meta["scft_report"]["steps"] == 6
    # the tuned file attaches to a dataset, and a second call reuses it
    dataset = create_dataset(config_for(tiny_data, tmp_path, llm_features=[name]))
    assert dataset.llm_feature(name).shape[0] == dataset.item_num
    assert ensure_scft_features(config, show_progress=False) == name
    assert "reusing up-to-date features" in capsys.readouterr().out


def test_scft_cli_reports_bad_llm_path(tiny_data, tmp_path, capsys):
    from recbole_llm.scft import main

    code = main(["--dataset=tiny", f"--data_path={tiny_data}", "--llm_path=/nowhere/llama", "--steps=1", f"--output_dir={tmp_path}"])
    assert code == 2 and "is not a local directory" in capsys.readouterr().err


def test_scft_cli_builds_the_file_the_models_run_attaches(tiny_data, tmp_path, tiny_llama_dir, capsys):
    """--model and --key=value reach the settings; LLMEmbSASRec with scft: True then reuses the file."""
    from recbole_llm.model.adapters import prepare_llm_features
    from recbole_llm.scft import main

    keys = [f"--llm_path={tiny_llama_dir}", "--scft_steps=2", "--scft_batch_size=4", "--scft_eval_items=8"]
    assert main(["--dataset=tiny", f"--data_path={tiny_data}", "--model=LLMEmbSASRec", f"--output_dir={tmp_path / 'f'}", *keys]) == 0
    name = capsys.readouterr().out.strip().splitlines()[-1].split()[2]
    overrides = {k.lstrip("-").split("=")[0]: v for k, v in (a.split("=", 1) for a in keys)}
    overrides.update(scft_steps=2, scft_batch_size=4, scft_eval_items=8, scft=True, feature_dir=str(tmp_path / "f"),
                     data_path=tiny_data, state="WARNING")
    config = Config(model="LLMEmbSASRec", dataset="tiny", config_dict=overrides)
    assert prepare_llm_features(config) == name
    assert "SCFT: reusing up-to-date features" in capsys.readouterr().out  # reused, not trained again


def test_llm2x_with_scft_gets_pca_to_its_width(tiny_data, tmp_path, tiny_llama_dir):
    """LLM2XSASRec asks for pca_dim = hidden_size; with scft: True that goes through SCFT's PCA companion."""
    from recbole_llm import run_recbole_llm

    config = tiny_config(tiny_data, tmp_path, scft=True, scft_steps=2, scft_batch_size=4, scft_eval_items=8, llm_path=tiny_llama_dir,
                         feature_dir=str(tmp_path / "f"))
    result = run_recbole_llm(model="LLM2XSASRec", dataset="tiny", config_dict=config)
    assert result["epochs_run"] == 1
    files = sorted(os.listdir(tmp_path / "f"))
    assert any(re.search(r"-scft-mean-llmemb-pca16-[0-9a-f]{16}\.npy$", f) for f in files), files
