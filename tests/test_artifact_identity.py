"""Every number comes from the inputs its row names (issue 42, items 1 and 3): every cached artifact is found by its
full key (the key is in its name), a run is handed the keys of what was built for it and checks them, old caches are
found once more, and every config key an artifact's build reads is in its key or declared as not changing it."""

import os
import re

import numpy as np
import pytest
import torch
from conftest import rand_features_config, tiny_config

from recbole_llm import Config
from recbole_llm.artifacts import HandedKeyError, name_prefix
from recbole_llm.errors import UserError
from recbole_llm.llm import extract
from recbole_llm.llm.features import FeatureFileArtifact, feature_base, find_feature_file, load_meta, save_features
from recbole_llm.suite import load_records, make_suite, run_suite

KEYED = re.compile(r"^.+-[0-9a-f]{16}$")


# ---- item 1: a suite row trains on the features of its own setting -------------------------------------------------
def suite_config(tiny_data, tmp_path, llm_path):
    config = tiny_config(tiny_data, tmp_path, llm_path=llm_path, feature_dir=str(tmp_path / "f"), align_alpha=0.0,
                         scft_batch_size=4, scft_eval_items=8)
    for key in ("data_path", "checkpoint_dir", "show_progress", "state"):  # the suite sets them per run
        config.pop(key)
    return config


def expected_feature(tiny_data, common, keys):
    """(name, key) of the feature file a run with ``keys`` must train on, computed from its own settings alone."""
    from recbole_llm.llm.scft import SCFTFeatures, settings_from_config

    config = Config(model="LLMEmbSASRec", dataset="tiny", config_dict={**common, **keys, "data_path": tiny_data, "state": "WARNING"})
    if config["scft"]:
        artifact = SCFTFeatures(settings_from_config(config), dtype="float32")
    else:
        artifact = extract.ExtractedFeatures(extract.feature_settings(config))
    key = artifact.key(artifact.settings(config))
    return artifact.name_for(key), key, config


def former_naming(self, key):
    """The naming before this change: the readable prefix alone, the key left out."""
    return self.name if self.name is not None else self.prefix


@pytest.mark.parametrize("naming", ["keyed", "former"])
@pytest.mark.parametrize("key, values", [("llm_max_length", (8, 64)), ("scft_steps", (1, 2))])
def test_suite_rows_that_differ_in_one_setting_train_on_their_own_features(tiny_data, tmp_path, tiny_llama_dir, monkeypatch,
                                                                           key, values, naming):
    """Two rows that differ only in llm_max_length (or only in scft_steps): prepare_runs builds both rows' features
    before either run starts. Keyed names: two files, each run trains on its own and its record names its key. The
    negative control, the former names (no key): the second build overwrites the first row's file, and the first run
    is refused by the handed-key check instead of training on the other row's features."""
    if naming == "former":
        monkeypatch.setattr(FeatureFileArtifact, "name_for", former_naming)
    common = suite_config(tiny_data, tmp_path, tiny_llama_dir)
    extra = {"scft": True} if key == "scft_steps" else {}
    rows = {f"r{value}": {"model": "LLMEmbSASRec", key: value, **extra} for value in values}
    suite = make_suite({"datasets": ["tiny"], "data_path": tiny_data, "seeds": [2024], "config": common, "rows": rows,
                        "popularity_buckets": False, "out": str(tmp_path / "out")}, "identity.yaml")
    code = run_suite(suite)
    records = {record["row"]: record for record in load_records(suite)}
    expected = {row: expected_feature(tiny_data, common, {k: v for k, v in keys.items() if k != "model"}) for row, keys in rows.items()}
    first, second = (f"r{value}" for value in values)
    assert expected[first][1] != expected[second][1]  # the two settings have two keys
    if naming == "former":
        assert records[first]["config"]["llm_feature"] == records[second]["config"]["llm_feature"]  # one shared path
        assert code == 1 and records[second]["status"] == "ok"
        assert records[first]["status"] == "failed" and "HandedKeyError" in records[first]["error"], records[first].get("error")
        assert f"with key {expected[first][1]}" in records[first]["error"] and f"records cache key {expected[second][1]}" in records[first]["error"]
        return
    assert code == 0, {row: record.get("error") for row, record in records.items()}
    for row, value in zip((first, second), values):
        name, artifact_key, config = expected[row]
        record = records[row]
        assert record["status"] == "ok" and KEYED.match(name)
        assert record["config"]["llm_feature"] == name and record["config"]["artifact_keys"][name] == artifact_key
        meta = load_meta(find_feature_file(config, name))
        assert meta["cache_key"] == artifact_key
        assert (meta["scft"]["steps"] if key == "scft_steps" else meta["max_length"]) == value
    assert records[first]["config"]["llm_feature"] != records[second]["config"]["llm_feature"]


# ---- the keys handed to a run ---------------------------------------------------------------------------------------
def test_a_run_checks_the_keys_it_was_handed(tiny_data, tmp_path, monkeypatch):
    """shared_artifact_keys hands {file name: key} of the features and the teacher; a run whose files still record
    them starts; one whose feature file or teacher was rebuilt since is refused in one line naming the file."""
    from recbole_llm.model import teacher as teacher_module
    from recbole_llm.quick_start import prepare_artifacts, shared_artifact_keys

    def fake_train(config, dim, path, key, logger, run):
        torch.save({"item_embedding": torch.zeros(31, dim), "item_tokens": [str(i) for i in range(31)], "cache_key": key}, path)

    monkeypatch.setattr(teacher_module, "_train_teacher", fake_train)
    keys = rand_features_config(tiny_data, tmp_path, align_alpha=0.1)
    shared = shared_artifact_keys(Config(model="LLMEmbSASRec", dataset="tiny", config_dict=keys))
    teacher = os.path.basename(shared["teacher_checkpoint"])
    assert set(shared["artifact_keys"]) == {"rand", teacher}
    assert shared["artifact_keys"][teacher] == re.search(r"teacher-([0-9a-f]{16})\.pth$", teacher).group(1)
    prepare_artifacts(Config(model="LLMEmbSASRec", dataset="tiny", config_dict={**keys, **shared}))  # still those files

    torch.save({"item_embedding": torch.zeros(31, 16), "item_tokens": [str(i) for i in range(31)], "cache_key": "f" * 16},
               shared["teacher_checkpoint"])
    with pytest.raises(HandedKeyError, match=f"teacher checkpoint '.*{teacher}' records cache key f{{16}}"):
        prepare_artifacts(Config(model="LLMEmbSASRec", dataset="tiny", config_dict={**keys, **shared}))
    base = find_feature_file(Config(model="LLMEmbSASRec", dataset="tiny", config_dict=keys), "rand")
    save_features(base, [f"i{i}" for i in range(30)], np.ones((30, 12)))  # rebuilt with other content
    with pytest.raises(HandedKeyError, match=r"feature file '.*tiny\.rand\.json' records cache key sha1:") as raised:
        prepare_artifacts(Config(model="LLMEmbSASRec", dataset="tiny", config_dict={**keys, **shared}))
    assert isinstance(raised.value, UserError) and "\n" not in str(raised.value)


# ---- old caches: found once more ----------------------------------------------------------------------------------
def test_a_feature_file_under_its_former_name_is_taken_over_or_rebuilt_with_a_line(tiny_data, tmp_path, tiny_llama_dir, monkeypatch,
                                                                                     capsys):
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, llm_path=tiny_llama_dir,
                                                                            feature_dir=str(tmp_path / "f")))
    name = extract.ensure_features(config, show_progress=False)
    assert KEYED.match(name)
    folder = str(tmp_path / "f")
    new, old = feature_base(folder, "tiny", name), feature_base(folder, "tiny", name_prefix(name))
    for suffix in (".npy", ".json"):  # what an earlier version left: the same file under the name without its key
        os.rename(new + suffix, old + suffix)
    capsys.readouterr()
    with monkeypatch.context() as patched:
        patched.setattr(extract, "embed_texts", lambda *a, **k: pytest.fail("features were recomputed"))
        assert extract.ensure_features(config, show_progress=False) == name
    assert f"took over the former cache {old}" in capsys.readouterr().out
    assert os.path.samefile(old + ".npy", new + ".npy") and load_meta(new)["cache_key"] == load_meta(old)["cache_key"]
    # another setting whose former name is the same (llm_max_length is not in the readable prefix): not taken over
    short = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, llm_path=tiny_llama_dir,
                                                                           feature_dir=folder, llm_max_length=8))
    other = extract.ensure_features(short, show_progress=False)
    out = capsys.readouterr().out
    assert other != name and name_prefix(other) == name_prefix(name)
    assert f"the former cache {old} holds other settings" in out and "wrote 30 x 32" in out
    assert load_meta(feature_base(folder, "tiny", other))["max_length"] == 8 and load_meta(old)["max_length"] == 256
    assert extract.ensure_features(short, show_progress=False) == other and "former" not in capsys.readouterr().out  # once


def test_a_companion_under_its_former_name_keeps_its_key(tiny_data, tmp_path, capsys):
    """A whitening companion's key holds its source's name prefix, not its new keyed name: the key it had before."""
    config = Config(model="SASRec", dataset="tiny", config_dict=rand_features_config(tiny_data, tmp_path))
    white = extract.ensure_whitened(config, "rand", "zca")
    assert re.fullmatch(r"rand-whitezca-[0-9a-f]{16}", white)
    new, old = find_feature_file(config, white), find_feature_file(config, "rand").replace("tiny.rand", "tiny.rand-whitezca")
    for suffix in (".npy", ".json"):
        os.rename(new + suffix, old + suffix)
    capsys.readouterr()
    assert extract.ensure_whitened(config, "rand", "zca") == white
    assert f"took over the former cache {old}" in capsys.readouterr().out


def test_a_former_teacher_is_taken_over_only_for_the_sequences_it_was_trained_on(tiny_data, tmp_path, monkeypatch, capsys):
    from recbole_llm.model import teacher as teacher_module

    config = Config(model="LLMEmbSASRec", dataset="tiny", config_dict=rand_features_config(tiny_data, tmp_path, align_alpha=0.1))
    artifact = teacher_module.Teacher(16)
    settings = artifact.settings(config)
    key = artifact.key(settings)
    [(old_path, old_key)] = artifact.former(config, settings, key)
    assert old_key != key and old_path.endswith(f".teacher-{old_key}.pth")
    table = torch.randn(31, 16)
    torch.save({"item_embedding": table, "item_tokens": [str(i) for i in range(31)], "cache_key": old_key}, old_path)
    monkeypatch.setattr(teacher_module, "_train_teacher", lambda *a: pytest.fail("the former teacher was trained again"))
    path = teacher_module.ensure_teacher(config, 16, run=None)
    assert path == teacher_module.teacher_path(config, 16) and f"took over the former cache {old_path}" in capsys.readouterr().out
    taken = torch.load(path, weights_only=True)
    assert taken["cache_key"] == key and torch.equal(taken["item_embedding"], table)
    filtered = Config(model="LLMEmbSASRec", dataset="tiny",
                      config_dict=rand_features_config(tiny_data, tmp_path, align_alpha=0.1, train_user_inter_num_interval="[6,inf)"))
    other = artifact.settings(filtered)
    assert artifact.former(filtered, other, artifact.key(other)) == [] and artifact.key(other) != key


# ---- item 3: the keys hold what changes the artifact, and only that ---------------------------------------------------
def test_the_teacher_key_has_the_sequence_keys_and_no_metric_only_key(tiny_data, tmp_path):
    from recbole_llm.model.teacher import Teacher, teacher_config

    config = Config(model="LLMEmbSASRec", dataset="tiny", config_dict=rand_features_config(tiny_data, tmp_path, align_alpha=0.1))
    artifact = Teacher(16)

    def key(**changes):
        saved = {k: config[k] for k in changes}
        for k, v in changes.items():
            config[k] = v
        try:
            return artifact.key(artifact.settings(config))
        finally:
            for k, v in saved.items():
                config[k] = v

    base = key()
    for metric_only in ({"metrics": ["Hit"]}, {"topk": [5, 10]}, {"tail_threshold": 3}, {"tail_ratio": 0.5},
                        {"short_history_threshold": 4}, {"eval_batch_size": 7}):
        assert key(**metric_only) == base, metric_only  # a changed metric does not retrain the teacher
    assert key(train_user_inter_num_interval="[6,inf)") != base and key(duplicate_interactions="keep") != base
    assert key(valid_metric="NDCG_tail@10", tail_threshold=3) != key(valid_metric="NDCG_tail@10")  # its checkpoint choice
    run = teacher_config(config, 16)
    assert run["metrics"] == ["NDCG"] and run["topk"] == [10] and "tail_threshold" not in run
    assert run["eval_batch_size"] == config["eval_batch_size"]  # still handed to the run, only not keyed


def test_the_prompt_hash_covers_text_list_fields(tiny_data, tmp_path):
    from recbole_llm.llm.prompts import DEFAULT_LIST_FIELDS, prompt_hash

    def hashed(**keys):
        return prompt_hash(tiny_config(tiny_data, tmp_path, dataset="tiny", **keys), "llmemb")

    assert hashed(text_list_fields=["brand"]) != hashed()
    assert hashed(text_list_fields=list(reversed(DEFAULT_LIST_FIELDS))) == hashed()  # the defaults: the key files had


class Reads(dict):
    """A config dict that records the keys read from it."""

    def __init__(self, values):
        super().__init__(values)
        self.seen = set()

    def get(self, key, *default):
        self.seen.add(key)
        return super().get(key, *default)

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.seen.add(key)
        return super().__contains__(key)


def recording(config):
    config.final_config_dict = Reads(config.final_config_dict)
    return config.final_config_dict


# a value other than the tiny configs' for every config key an artifact keys (the test fails for a key read that has
# none: add one here when an artifact reads a new key, after putting it in the artifact's key or its ``unkeyed``)
ALTERNATIVES = {
    "llm_path": "minilm", "llm_pooling": "cls", "prompt_style": "learn", "llm_max_length": 8, "llm_normalize": True,
    "feature_dtype": "float16", "text_fields": ["title"], "text_field_names": {"title": "name"}, "text_list_fields": ["brand"],
    "prompt_instruction": "Other:", "prompt_max_value_len": 5, "ITEM_ID_FIELD": "iid",
    "scft_steps": 3, "scft_batch_size": 5, "scft_lr": 0.5, "scft_lora_r": 2, "scft_lora_alpha": 3, "scft_lora_dropout": 0.3,
    "scft_target_modules": ["q_proj"], "scft_drop_ratio": 0.5, "scft_loss": "infonce", "scft_grad_accum": 2,
    "scft_grad_checkpointing": True, "scft_seed": 7,
    "USER_ID_FIELD": "uid", "TIME_FIELD": "ts", "load_col": {"inter": ["user_id", "item_id"]}, "unload_col": {"inter": ["x"]},
    "unused_col": {"inter": ["x"]}, "rm_dup_inter": "first", "val_interval": {"timestamp": "[0,10]"},
    "filter_inter_by_user_or_item": False, "user_inter_num_interval": "[2,inf)", "item_inter_num_interval": "[2,inf)",
    "MAX_ITEM_LIST_LENGTH": 5, "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "uni100"},
    "benchmark_filename": ["a", "b", "c"], "duplicate_interactions": "keep", "train_user_inter_num_interval": "[2,40]",
    "encoding": "latin-1", "field_separator": ",", "seq_separator": ",", "reproducibility": False, "valid_metric": "Hit@10",
    "teacher_inner_size": 8, "teacher_n_layers": 3, "teacher_n_heads": 4, "teacher_epochs": 7, "teacher_stopping_step": 3,
    "teacher_learning_rate": 0.5, "teacher_batch_size": 32, "teacher_seed": 9, "teacher_train_mode": "prefix",
    "teacher_dropout": 0.3, "cold_item_ratio": 0.3, "cold_item_selection": "newest", "cold_item_seed": 5, "seed": 7,
}
# in every cached file's name (<dataset>.<name>, <dataset>.teacher-<key>.pth): two datasets never share a file
IN_EVERY_NAME = {"dataset"}


def check_keyed(config, make, build=None):
    """The config keys ``make(config)``'s settings and ``build`` read, less its ``unkeyed``: each has an alternative
    value, and changing it to that changes the key. Returns them."""
    reads = recording(config)
    artifact = make(config)
    settings = artifact.settings(config)
    key = artifact.key(settings)
    if build is not None:
        build(artifact, settings, key)
    read = set(reads.seen) - set(artifact.unkeyed) - IN_EVERY_NAME
    what = type(artifact).__name__
    missing = sorted(read - set(ALTERNATIVES))
    assert not missing, f"{what} reads {missing}: put them in its key (and a value in ALTERNATIVES) or in {what}.unkeyed"
    unchanged = []
    for name in sorted(read):
        value = config[name]
        assert value != ALTERNATIVES[name], name
        config[name] = ALTERNATIVES[name]
        try:
            other = make(config)
            if other.key(other.settings(config)) == key:
                unchanged.append(name)
        except UserError:  # a value this config refuses (benchmark_filename under the cold-start protocol): no artifact
            pass
        finally:
            config[name] = value
    assert not unchanged, f"{what}: changing {unchanged} leaves its key as it is, but its build reads them"
    return read


def test_every_key_an_artifact_build_reads_is_in_its_key(tiny_data, tmp_path, tiny_llama_dir, monkeypatch):
    """Features, SCFT features, the PCA / whitening companions, the teacher and the similar users, each built on the
    tiny data with a config that records what is read: every key read is in the artifact's key (changing it changes
    the key) or in the artifact's ``unkeyed`` (where and how it runs, never what it writes)."""
    from recbole_llm.llm.scft import SCFTFeatures, settings_from_config
    from recbole_llm.model import teacher as teacher_module
    from recbole_llm.model.similar_users import SimilarUsers

    def new_config(model="SASRec", **keys):
        return Config(model=model, dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, llm_path=tiny_llama_dir,
                                                                           feature_dir=str(tmp_path / "f"), **keys))

    out = str(tmp_path / "built")
    read = check_keyed(new_config(), lambda c: extract.ExtractedFeatures(extract.feature_settings(c), show_progress=False),
                       lambda a, s, k: a.build(new_config(), s, k, os.path.join(out, "tiny.extracted")))
    assert {"llm_max_length", "text_list_fields", "prompt_instruction", "llm_pooling", "llm_path"} <= read
    rand = Config(model="SASRec", dataset="tiny", config_dict=rand_features_config(tiny_data, tmp_path))
    for transform in ({"pca_dim": 4}, {"whitening": "zca", "eps": 1e-5}):
        read = check_keyed(rand, lambda c: extract.Companion("rand", transform),
                           lambda a, s, k: a.build(rand, s, k, os.path.join(out, "tiny.companion")))
        assert read == {"feature_dtype"}
    scft = new_config(scft_steps=1, scft_batch_size=4, scft_eval_items=8)
    read = check_keyed(scft, lambda c: SCFTFeatures(settings_from_config(c), show_progress=False),
                       lambda a, s, k: a.build(scft, s, k, os.path.join(out, "tiny.scft")))
    assert {"scft_steps", "scft_lr", "scft_lora_r", "scft_drop_ratio", "scft_seed", "llm_max_length"} <= read

    def fake_run(model, dataset, config_dict):  # the teacher's training run: what it is handed is teacher_config's
        model_file = str(tmp_path / "teacher-run.pth")
        torch.save({"state_dict": {"item_embedding.weight": torch.zeros(31, 16)}}, model_file)
        return {"model_file": model_file, "item_tokens": [str(i) for i in range(31)], "test_result": {}}

    student = new_config("LLMEmbSASRec", align_alpha=0.1, cold_item_ratio=0.2)  # the cold items' keys are read when on
    read = check_keyed(student, lambda c: teacher_module.Teacher(16, run=fake_run),
                       lambda a, s, k: a.build(student, s, k, os.path.join(out, "tiny.teacher.pth")))
    assert {"train_user_inter_num_interval", "duplicate_interactions", "valid_metric", "teacher_seed", "seed"} <= read
    assert not read & {"metrics", "topk", "tail_threshold", "tail_ratio", "short_history_threshold"}
    cold = Config(model="SASRec", dataset="tiny", config_dict=rand_features_config(tiny_data, tmp_path, cold_item_ratio=0.2))
    read = check_keyed(cold, lambda c: SimilarUsers("rand", 3))  # built from the dataset's tensors: no key read there
    assert {"train_user_inter_num_interval", "duplicate_interactions", "MAX_ITEM_LIST_LENGTH"} <= read


# read while the dataset and its split are built, without changing which training sequences there are
NOT_SEQUENCE_KEYS = {
    "data_path", "dataset", "dataset_save_path",  # where the files are (their content is keyed) and the dataset's name
    # the model and its loaders, not the data: batches, workers, training negatives, transforms, training rows
    "model", "MODEL_TYPE", "MODEL_INPUT_TYPE", "single_spec", "train_batch_size", "eval_batch_size", "shuffle", "worker",
    "repeatable", "transform", "train_neg_sample_args", "train_mode",
    "valid_neg_sample_args", "test_neg_sample_args",  # derived from eval_args (keyed)
    "ITEM_LIST_LENGTH_FIELD", "LIST_SUFFIX", "LABEL_FIELD",  # the names of the columns RecBole adds
    # feature values, labels and the internal id space, not which interactions there are
    "threshold", "normalize_field", "normalize_all", "numerical_features", "discretization", "preload_weight",
    "additional_feat_suffix", "alias_of_item_id", "alias_of_user_id",
    "llm_features",  # the LLM tables attached next to the sequences (keyed separately: the feature file's key)
    "seed",  # the run's seed shapes the data only through the cold-start items (resolved into cold_settings_key)
}
COLD_KEYS = {"cold_item_ratio", "cold_item_selection", "cold_item_seed"}


def sequence_keys_read(tiny_data, tmp_path):
    """The config keys read while the plugin builds a dataset and its split on the tiny data."""
    from recbole_llm.utils import create_dataset, data_preparation

    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path))
    reads = recording(config)
    data_preparation(config, create_dataset(config))
    return set(reads.seen)


def test_the_teacher_and_the_similar_users_key_every_key_that_shapes_the_training_sequences(tiny_data, tmp_path):
    """Every key the dataset and split read is in the teacher's and the similar users' keys (or set by the teacher
    itself, or listed above as not shaping the sequences). The negative control: the lists before this change miss
    train_user_inter_num_interval and duplicate_interactions."""
    from recbole_llm.model.similar_users import SPLIT_KEYS
    from recbole_llm.model.teacher import FORMAT_3_KEYS, INHERITED_KEYS, teacher_config

    read = sequence_keys_read(tiny_data, tmp_path)
    student = Config(model="LLMEmbSASRec", dataset="tiny", config_dict=rand_features_config(tiny_data, tmp_path))
    own = set(teacher_config(student, 16))  # what the teacher sets for itself (its batch, seed, training rows)
    assert not read - set(INHERITED_KEYS) - own - COLD_KEYS - NOT_SEQUENCE_KEYS
    assert not read - set(SPLIT_KEYS) - COLD_KEYS - NOT_SEQUENCE_KEYS
    former_split = FORMAT_3_KEYS[:11] + ("MAX_ITEM_LIST_LENGTH", "eval_args", "benchmark_filename")
    assert {"train_user_inter_num_interval", "duplicate_interactions"} <= read - set(former_split) - COLD_KEYS - NOT_SEQUENCE_KEYS
