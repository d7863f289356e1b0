"""One artifact mechanism (recbole_llm/artifacts.py): one key format, reuse on the same settings, rebuild on a changed
setting, a broken file or a file recording another key; feature_dtype honoured by every feature file built."""

import hashlib
import json
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import rand_features_config, tiny_config

from recbole_llm import Config
from recbole_llm.artifacts import Artifact, BrokenArtifact, artifact_key
from recbole_llm.fileio import atomic_write_text, file_fingerprint
from recbole_llm.llm import extract
from recbole_llm.llm.embed import resolve_llm_path
from recbole_llm.llm.features import find_feature_file, load_features, load_meta

KEY = re.compile(r"^[0-9a-f]{16}$")


class Note(Artifact):
    """A toy artifact: a JSON file holding its settings and key."""

    what = "note"

    def __init__(self, folder):
        self.folder, self.builds = folder, 0

    def settings(self, config):
        return {"value": config["value"]}

    def path(self, config, settings, key):
        return os.path.join(self.folder, "note.json")

    def validate(self, path):
        try:
            return json.load(open(path))["key"]
        except (ValueError, KeyError) as err:
            raise BrokenArtifact(f"not a note ({type(err).__name__})") from None

    def build(self, config, settings, key, path):
        self.builds += 1
        atomic_write_text(path, json.dumps({"key": key, **settings}))


def test_same_settings_reuse_a_changed_setting_rebuilds_and_a_bad_file_is_rebuilt(tmp_path, capsys):
    note = Note(str(tmp_path))
    first = note.ensure({"value": 1})
    assert first.built and KEY.match(first.key) and first.key == artifact_key({"value": 1})
    assert not note.ensure({"value": 1}).built and note.builds == 1
    assert "reusing up-to-date note" in capsys.readouterr().out
    assert note.ensure({"value": 2}).built and note.builds == 2  # another setting, another key: rebuilt
    with open(first.path, "w") as handle:
        handle.write("{trunc")
    assert note.ensure({"value": 2}).built and "is broken" in capsys.readouterr().out
    atomic_write_text(first.path, json.dumps({"key": "0" * 16, "value": 2}))  # sound, but another key recorded
    assert note.ensure({"value": 2}).built and note.builds == 4
    assert note.ensure({"value": 2}, force=True).built and note.builds == 5
    assert json.load(open(first.path))["key"] == artifact_key({"value": 2})


def test_the_five_artifacts_share_the_key_format(tiny_data, tmp_path, tiny_llama_dir):
    """Features, PCA / whitening companions, SCFT, teacher and similar users: sha1 of the sorted JSON, 16 hex digits,
    recorded in the file; extraction keeps the key it always had (no rebuild of extracted features)."""
    from recbole_llm.llm.scft import SCFTFeatures, settings_from_config
    from recbole_llm.model.similar_users import SimilarUsers, similar_users_path
    from recbole_llm.model.teacher import Teacher, teacher_path

    config = Config(model="LLMEmbSASRec", dataset="tiny",
                    config_dict=tiny_config(tiny_data, tmp_path, feature_dir=str(tmp_path / "f"), llm_path=tiny_llama_dir))
    name = extract.ensure_features(config, pca_dim=4, show_progress=False)
    full = extract.ensure_features(config, pca_dim=0, show_progress=False)  # the PCA's source, reused
    assert KEY.match(full.rsplit("-", 1)[1]) and name.startswith(full.rsplit("-", 1)[0] + "-pca4-")
    white = extract.ensure_whitened(config, full, "zca")
    request = extract.feature_settings(config)
    payload = dict(request, item_file=file_fingerprint(os.path.join(tiny_data, "tiny", "tiny.item")),
                   llm_path=resolve_llm_path(request["llm_path"]))
    former = hashlib.sha1(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]  # the former formula
    assert load_meta(find_feature_file(config, full))["cache_key"] == former == artifact_key(payload)
    keys = {feature: load_meta(find_feature_file(config, feature))["cache_key"] for feature in (full, name, white)}
    artifacts = {"scft": SCFTFeatures(settings_from_config(config), "x"), "teacher": Teacher(16),
                 "similar users": SimilarUsers(full, 3)}
    for what, artifact in artifacts.items():
        settings = artifact.settings(config)
        keys[what] = artifact.key(settings)
        assert keys[what] == artifact_key(settings), what
    assert all(KEY.match(key) for key in keys.values()), keys
    assert len(set(keys.values())) == len(keys)
    assert teacher_path(config, 16).endswith(f".teacher-{keys['teacher']}.pth")
    assert similar_users_path(config, full, 3).endswith(f".simusers-{keys['similar users']}.pth")


def test_scft_export_honours_feature_dtype(tiny_data, tmp_path, tiny_llama_dir, capsys):
    """feature_dtype: float16 stores the SCFT file (and its PCA companion) as float16, under an -fp16 name; float32
    is another file, exported from the same training run (resumed at its last step, not trained again)."""
    from recbole_llm.llm.scft import ensure_scft_features

    keys = dict(llm_path=tiny_llama_dir, scft_steps=2, scft_batch_size=4, scft_eval_items=8, scft_checkpoint_every=1,
                feature_dir=str(tmp_path / "f"))
    half = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, feature_dtype="float16", pca_dim=4, **keys))
    name = ensure_scft_features(half, show_progress=False)
    assert re.search(r"-scft-mean-llmemb-fp16-pca4-[0-9a-f]{16}$", name), name
    full = [f[5:-4] for f in os.listdir(tmp_path / "f") if re.fullmatch(r"tiny\..*-scft-mean-llmemb-fp16-[0-9a-f]{16}\.npy", f)]
    assert len(full) == 1, os.listdir(tmp_path / "f")
    for feature in (name, full[0]):
        base = find_feature_file(half, feature)
        assert np.load(base + ".npy", mmap_mode="r").dtype == np.float16 and load_meta(base)["dtype"] == "float16"
    assert "SCFT: wrote" in capsys.readouterr().out
    assert ensure_scft_features(half, show_progress=False) == name
    assert "SCFT: reusing up-to-date features" in capsys.readouterr().out
    single = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, **keys))
    other = ensure_scft_features(single, show_progress=False)
    out = capsys.readouterr().out
    assert re.search(r"-scft-mean-llmemb-[0-9a-f]{16}$", other) and "resumed from step 2" in out and "SCFT: wrote" in out
    _, matrix, meta = load_features(find_feature_file(single, other))
    assert matrix.dtype == np.float32 and meta["dtype"] == "float32"


def test_companions_are_stored_in_feature_dtype(tiny_data, tmp_path):
    config = Config(model="LLMEmbSASRec", dataset="tiny",
                    config_dict=rand_features_config(tiny_data, tmp_path, feature_dtype="bfloat16"))
    white = extract.ensure_whitened(config, "rand", "zca")
    pca = extract.ensure_pca_companion(config, "rand", 4, "rand-pca4")
    for feature in (white, pca):
        _, matrix, meta = load_features(find_feature_file(config, feature))
        assert meta["dtype"] == "bfloat16" and matrix.dtype == np.uint16  # bfloat16's raw bits


def test_a_broken_or_foreign_teacher_cache_is_trained_again(tiny_data, tmp_path, monkeypatch, capsys):
    from recbole_llm.model import teacher as teacher_module

    config = Config(model="LLMEmbSASRec", dataset="tiny", config_dict=rand_features_config(tiny_data, tmp_path, align_alpha=0.1))
    path = teacher_module.teacher_path(config, 16)
    trained = []

    def fake_train(config, dim, path, key, logger, run):
        trained.append(key)
        torch.save({"item_embedding": torch.zeros(31, dim), "item_tokens": [str(i) for i in range(31)], "cache_key": key}, path)

    monkeypatch.setattr(teacher_module, "_train_teacher", fake_train)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"truncated")
    assert teacher_module.ensure_teacher(config, 16, run=None) == path and len(trained) == 1
    assert "is broken" in capsys.readouterr().out
    assert teacher_module.ensure_teacher(config, 16, run=None) == path and len(trained) == 1  # sound: reused
    assert "teacher: reusing cached" in capsys.readouterr().out
    torch.save({"item_embedding": torch.zeros(31, 16), "item_tokens": [], "cache_key": "f" * 16}, path)  # another key
    teacher_module.ensure_teacher(config, 16, run=None)
    assert len(trained) == 2 and torch.load(path, weights_only=True)["cache_key"] == trained[-1]


def test_a_broken_similar_user_file_is_rebuilt(tiny_data, tmp_path):
    from recbole_llm.model.similar_users import SimilarUsers

    config = Config(model="LLMESRSASRec", dataset="tiny", config_dict=rand_features_config(tiny_data, tmp_path))
    dataset = SimpleNamespace(field2id_token={"user_id": np.array(["[PAD]", "u1", "u2", "u3"])}, uid_field="user_id")
    seqs, lens = torch.tensor([[0, 0], [1, 2], [2, 3], [3, 1]]), torch.tensor([0, 2, 2, 2])
    artifact = SimilarUsers("rand", 2, dataset, torch.randn(4, 5), seqs, lens)
    first = artifact.ensure(config)
    assert first.built and torch.load(first.path, weights_only=True)["cache_key"] == first.key
    assert not artifact.ensure(config).built
    with open(first.path, "r+b") as handle:
        handle.truncate(10)
    again = artifact.ensure(config)
    assert again.built and again.path == first.path and torch.load(first.path, weights_only=True)["neighbors"].shape == (4, 2)
    with pytest.raises(Exception, match="pickled"):  # a planted pickle is refused, never loaded or replaced
        torch.save({"user_tokens": ["a"], "neighbors": torch.zeros(1, 2), "x": SimpleNamespace()}, first.path)
        artifact.ensure(config)
