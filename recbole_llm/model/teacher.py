"""The collaborative teacher of LLMEmb's alignment: a SASRec trained on the same data and split.

``teacher_checkpoint: auto`` trains it once (:func:`ensure_teacher`) and caches
``<feature dir>/<dataset>.teacher-<key>.pth`` holding the item table and the item tokens; the key hashes
the dataset files and every setting that shapes the teacher (the student's training sequences: ``SEQUENCE_KEYS``,
its checkpoint choice, its own ``teacher_*`` keys), so a changed split, filter or size retrains it, and nothing else:
the student's metrics, cut-offs and long-tail groups do not (the teacher run evaluates only its ``valid_metric``).
``teacher_checkpoint: <path>`` takes that file or a plain weights file of a SASRec-like model
(``python -m recbole_llm.export --model_file=YOUR.pth --weights=OUT.pth`` writes one from your own checkpoint);
rows are always matched to this dataset by item token, and the width must equal the student's.
The cache is a :class:`recbole_llm.artifacts.Artifact` (:class:`Teacher`): the file records its key and is opened and
checked before it is reused; a broken one is trained again, one holding pickled objects is refused.
Both are read with ``weights_only=True`` (:func:`recbole_llm.fileio.load_plain`): a teacher file found in a dataset
folder or handed over by someone else cannot run code; a full RecBole checkpoint (it pickles its Config) is refused.
"""

import os
import tempfile
from logging import getLogger

import torch

from recbole_llm.artifacts import Artifact, BrokenArtifact, artifact_key, check_handed_key, handed_key
from recbole_llm.compat import load_checkpoint
from recbole_llm.data.cold import cold_items_of, cold_settings_key
from recbole_llm.errors import DataFileError, UnsafeFileError, UserError
from recbole_llm.fileio import atomic_torch_save, file_fingerprint, load_plain, plain
from recbole_llm.llm.features import feature_dirs

# the keys that shape the training sequences (which files and columns are read and how, the filters, the split, the
# training users kept): the teacher inherits them from the student, and they are in its key and the similar users'
# (recbole_llm/model/similar_users.py); the cold-start items join both through cold_settings_key
SEQUENCE_KEYS = (
    "USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "load_col", "unload_col", "unused_col", "rm_dup_inter",
    "val_interval", "filter_inter_by_user_or_item", "user_inter_num_interval", "item_inter_num_interval",
    "MAX_ITEM_LIST_LENGTH", "eval_args", "benchmark_filename", "duplicate_interactions", "train_user_inter_num_interval",
    "encoding", "field_separator", "seq_separator",
)
# what the teacher inherits from the student's config and is in its key: the sequences, determinism, which epoch's
# checkpoint it keeps (valid_metric; the metric keys that one needs follow from it: validation_keys)
INHERITED_KEYS = SEQUENCE_KEYS + ("reproducibility", "valid_metric")
# inherited by the teacher run but not in its key: where it runs and its evaluation batch change no weight
RUN_KEYS = ("device", "use_gpu", "gpu_id", "eval_batch_size")
# the keys a teacher of format 3 (before 2026-12) inherited: its file is found once more (Teacher.former)
FORMAT_3_KEYS = (
    "USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "load_col", "unload_col", "unused_col", "rm_dup_inter",
    "val_interval", "filter_inter_by_user_or_item", "user_inter_num_interval", "item_inter_num_interval",
    "MAX_ITEM_LIST_LENGTH", "eval_args", "reproducibility", "benchmark_filename", "device", "use_gpu",
    "gpu_id", "eval_batch_size", "metrics", "topk", "valid_metric",
    "tail_threshold", "tail_ratio", "short_history_threshold",
)


class TeacherError(UserError, ValueError):
    """A teacher checkpoint that does not fit the dataset or the model."""


def validation_keys(config):
    """The metric keys of the teacher run: only what its checkpoint choice needs, ``valid_metric`` (``NDCG@10`` ->
    ``metrics: [NDCG], topk: [10]``), with the long-tail group keys when it is a head/tail or short/long metric."""
    name, _, cut = str(config["valid_metric"]).partition("@")
    keys = {"metrics": [name]}
    if cut:
        keys["topk"] = [int(cut)]
    group = name.lower().rsplit("_", 1)[-1] if "_" in name else ""
    needed = {"head": ("tail_threshold", "tail_ratio"), "tail": ("tail_threshold", "tail_ratio"),
              "short": ("short_history_threshold",), "long": ("short_history_threshold",)}.get(group, ())
    keys.update({key: config[key] for key in needed if config[key] is not None})
    return keys


def teacher_config(config, dim):
    """Config dict of the teacher run (a plugin SASRec of width ``dim``)."""
    inherited = {key: config[key] for key in INHERITED_KEYS + RUN_KEYS if config[key] is not None}
    return _teacher_run(config, dim, {**inherited, **validation_keys(config)})


def _teacher_run(config, dim, teacher):
    """``teacher`` (the inherited keys) with the teacher's own keys and the student's cold-start items."""
    teacher = dict(teacher)
    teacher.update(
        {
            "data_path": os.path.dirname(os.path.abspath(config["data_path"])),
            "hidden_size": int(dim),
            "inner_size": int(config["teacher_inner_size"] if config["teacher_inner_size"] is not None else 4 * dim),
            "n_layers": int(config["teacher_n_layers"]),
            "n_heads": int(config["teacher_n_heads"]),
            "epochs": int(config["teacher_epochs"]),
            "stopping_step": int(config["teacher_stopping_step"]),
            "learning_rate": float(config["teacher_learning_rate"]),
            # its own batch and seed: students of any batch size or seed share one cached teacher
            "train_batch_size": int(config["teacher_batch_size"]),
            "seed": int(config["teacher_seed"]),
            "train_mode": config["teacher_train_mode"],
            "loss_type": "CE",
            "hidden_dropout_prob": float(config["teacher_dropout"]),
            "attn_dropout_prob": float(config["teacher_dropout"]),
            "show_progress": False,
        }
    )
    cold = cold_settings_key(config)  # the same cold items as the student (its seed resolved: the teacher has its own)
    if cold:
        teacher.update(cold)
    return teacher


def dataset_stamp(config):
    stamp = []
    for suffix in ("inter", "item"):
        path = os.path.join(config["data_path"], f"{config['dataset']}.{suffix}")
        if os.path.isfile(path):
            stamp.append([suffix] + file_fingerprint(path))
    return stamp


class Teacher(Artifact):
    """The cached teacher of width ``dim`` for a config: ``<feature dir>/<dataset>.teacher-<key>.pth``. Settings: the
    teacher's run config (no device), the dataset and its files' content, the file format; ``run`` trains it
    (``recbole_llm.quick_start.run_recbole_llm``, handed down: the model layer does not import the entry point)."""

    what = "the teacher"
    reuse_line = "teacher: reusing cached {path}"
    unkeyed = RUN_KEYS + ("data_path", "feature_dir")  # the dataset's files are keyed by their content (dataset_stamp)

    def __init__(self, dim, run=None):
        self.dim, self.run = int(dim), run

    def settings(self, config):
        teacher = teacher_config(config, self.dim)
        for key in RUN_KEYS + ("data_path",):
            teacher.pop(key, None)
        # format 4: the student's sequence keys in, metric-only keys out (format 3: plain contents and its own key)
        return {"teacher": teacher, "dataset": config["dataset"], "files": dataset_stamp(config), "format": 4}

    def former(self, config, settings, key):
        """The format-3 cache of these settings: it was trained on every user with duplicates dropped (it did not
        inherit train_user_inter_num_interval or duplicate_interactions), so it serves only a student with those."""
        if config["train_user_inter_num_interval"] is not None or (config["duplicate_interactions"] or "drop") != "drop":
            return []
        teacher = _teacher_run(config, self.dim, {k: config[k] for k in FORMAT_3_KEYS if config[k] is not None})
        teacher.pop("device", None)
        teacher.pop("gpu_id", None)
        old = artifact_key({"teacher": teacher, "dataset": config["dataset"], "files": dataset_stamp(config), "format": 3})
        return [(self.path(config, settings, old), old)]

    def adopt(self, config, old, path, key):
        """The former file rewritten under ``path`` recording ``key`` (its table unchanged)."""
        checkpoint = load_plain(old, "teacher checkpoint", TEACHER_FIX)
        atomic_torch_save(plain(dict(checkpoint, cache_key=key, former_cache=os.path.basename(old))), path)

    def path(self, config, settings, key):
        return os.path.join(feature_dirs(config)[0], f"{config['dataset']}.teacher-{key}.pth")

    def validate(self, path):
        try:
            checkpoint = load_plain(path, "teacher checkpoint", TEACHER_FIX)
        except UnsafeFileError:
            raise  # a file planted under the cache's name is refused, not silently replaced
        except DataFileError as err:
            raise BrokenArtifact(str(err)) from None
        table = checkpoint.get("item_embedding")
        if not isinstance(table, torch.Tensor) or table.dim() != 2 or not isinstance(checkpoint.get("item_tokens"), list):
            raise BrokenArtifact("it holds no 2-d item_embedding and item_tokens list")
        return checkpoint.get("cache_key")

    def build(self, config, settings, key, path):
        _train_teacher(config, self.dim, path, key, getLogger(), self.run)


def teacher_path(config, dim):
    """Where the cached teacher of width ``dim`` for ``config`` lives (its key: :class:`Teacher`)."""
    artifact = Teacher(dim)
    settings = artifact.settings(config)
    return artifact.path(config, settings, artifact.key(settings))


def check_handed_teacher(config):
    """A ``teacher_checkpoint`` this run was handed a key for (``artifact_keys``, by its file name) records that key;
    else one :class:`recbole_llm.artifacts.HandedKeyError` naming the file."""
    path = config["teacher_checkpoint"]
    if path in (None, "auto") or handed_key(config, os.path.basename(str(path))) is None:
        return
    try:
        recorded = Teacher(0).validate(path)
    except BrokenArtifact:
        recorded = None
    check_handed_key(config, os.path.basename(str(path)), recorded, path, "teacher checkpoint")


def recorded_teacher_key(path):
    """The cache key a teacher file records (None: a file of your own without one, or not a sound teacher file)."""
    try:
        return Teacher(0).validate(path)
    except (BrokenArtifact, DataFileError):
        return None


def ensure_teacher(config, dim, run):
    """Path of a cached teacher of width ``dim`` for ``config``; trains and caches it when missing or broken with
    ``run`` (handed down by the caller), one run at a time: a second run started meanwhile waits and reuses it."""
    return Teacher(dim, run).ensure(config).path


def _train_teacher(config, dim, path, key, logger, run_recbole_llm):
    print(f"teacher: training SASRec (hidden {dim}) on {config['dataset']} -> {path}")
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        teacher = teacher_config(config, dim)
        teacher["checkpoint_dir"] = checkpoint_dir
        result = run_recbole_llm(model="SASRec", dataset=config["dataset"], config_dict=teacher)
        state = load_checkpoint(result["model_file"])["state_dict"]
    artifact = plain(
        {
            "item_embedding": state["item_embedding.weight"].cpu(),
            "item_tokens": [str(t) for t in result["item_tokens"]],
            "teacher_config": {k: v for k, v in teacher.items() if k != "checkpoint_dir"},
            "test_result": dict(result["test_result"]),
            "cache_key": key,
        }
    )
    atomic_torch_save(artifact, path)
    logger.info(f"teacher: test {dict(result['test_result'])}; saved {path}")


TEACHER_FIX = (
    "delete it if it is the cached teacher (teacher_checkpoint: auto trains it again), or pass a plain teacher file: "
    "python -m recbole_llm.export --model_file=YOUR_SASREC.pth --weights=teacher.pth converts your own checkpoint"
)


def _tokens_of_checkpoint(checkpoint, path):
    tokens = checkpoint.get("item_tokens")
    if not isinstance(tokens, list):
        raise TeacherError(f"teacher checkpoint '{path}' has no item_tokens list to match its rows to items: {TEACHER_FIX}")
    return [str(t) for t in tokens]


def check_teacher_cold_items(checkpoint, path, dataset):
    """With the cold-start protocol on, the teacher must have been trained without the same cold items."""
    if cold_items_of(dataset) is None:
        return
    ours = cold_settings_key(dataset.config)
    theirs = checkpoint.get("teacher_config")
    if theirs is None:
        raise TeacherError(
            f"teacher checkpoint '{path}' does not say which items it was trained without, but cold_item_ratio is on: "
            "use teacher_checkpoint: auto (it trains one without the cold items)"
        )
    theirs = {key: theirs.get(key) for key in ours}
    if theirs != ours:
        raise TeacherError(
            f"teacher checkpoint '{path}' was trained with cold items {theirs}, this run has {ours}: it saw this run's "
            "cold items; use teacher_checkpoint: auto"
        )


def load_teacher_table(path, dataset, dim):
    """(item_num, dim) frozen teacher table aligned to ``dataset``'s item ids by token."""
    if path in (None, "auto"):
        raise TeacherError("teacher_checkpoint is not built yet: run through run_recbole_llm (prepare_artifacts) or pass a path")
    checkpoint = load_plain(path, "teacher checkpoint", TEACHER_FIX)
    source = checkpoint.get("dataset")  # exported weights name the dataset they were trained on
    if isinstance(source, str) and source != dataset.dataset_name:
        raise TeacherError(
            f"teacher checkpoint '{path}' was exported from a run on dataset '{source}', this run is on "
            f"'{dataset.dataset_name}': its item rows learnt other data even where the item tokens agree; export a "
            f"SASRec trained on '{dataset.dataset_name}', or use teacher_checkpoint: auto"
        )
    if "item_embedding" in checkpoint:
        table = checkpoint["item_embedding"]
    else:
        state = checkpoint.get("state_dict", {})
        if "item_embedding.weight" not in state:
            raise TeacherError(f"teacher checkpoint '{path}' has no item_embedding.weight: {TEACHER_FIX}")
        table = state["item_embedding.weight"]
    if not isinstance(table, torch.Tensor) or table.dim() != 2:
        raise TeacherError(f"teacher checkpoint '{path}': its item table is not a 2-d tensor: {TEACHER_FIX}")
    tokens = _tokens_of_checkpoint(checkpoint, path)
    if table.size(0) < len(tokens):
        raise TeacherError(f"teacher checkpoint '{path}': {table.size(0)} rows for {len(tokens)} item tokens")
    if table.size(1) != dim:
        raise TeacherError(
            f"teacher checkpoint '{path}' has width {table.size(1)} but the model's item table has {dim}: "
            f"train the teacher with hidden_size {dim} (teacher_checkpoint: auto does)"
        )
    check_teacher_cold_items(checkpoint, path, dataset)
    index = {token: row for row, token in enumerate(tokens)}
    ours = [str(t) for t in dataset.field2id_token[dataset.iid_field]]
    missing = [t for t in ours[1:] if t not in index]
    if missing:
        raise TeacherError(
            f"teacher checkpoint '{path}' lacks {len(missing)} items of dataset '{dataset.dataset_name}' "
            f"(first: {missing[:5]}): it was trained on other data; use teacher_checkpoint: auto"
        )
    rows = torch.tensor([0] + [index[t] for t in ours[1:]])
    aligned = table.float()[rows].clone()
    aligned[0] = 0
    return aligned
