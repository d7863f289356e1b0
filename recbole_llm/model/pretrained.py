"""Pre-training on other datasets, then fine-tuning or zero-shot: the weights that carry over (LEARN, UniSRec).

``pretrain_datasets: [beauty, yelp, ml-100k]`` on a run of a model that declares :class:`Pretrainable` builds, once:

1. the corpus of those datasets (recbole_llm/data/corpus.py: one atomic dataset, tokens kept apart by dataset,
   item text in one set of fields so one LLM and prompt embed every item);
2. the pre-trained weights (:class:`Pretrained`): a run of the same model on the corpus, with the architecture and
   feature-space keys of this run (``model_class.PRETRAIN_INHERITED``, so the weights fit and the content
   embeddings live in one space), the ``pretrain_*`` budget (a fixed number of epochs, no early stopping, as the
   public LEARN script: its fine-tuning resumes epoch 20 of its pre-training) and the model's pre-training loss
   (``pretrain_overrides``). Only weights are kept: ``<corpus>/<Model>-pretrained-<key>.pth``, a plain file
   (:func:`recbole_llm.fileio.plain`, read with ``weights_only=True``) holding the state dict without the
   item-specific tables, the pre-training config and the corpus it saw;
3. this run then starts from those weights (``pretrained_checkpoint`` is set to the file) and fine-tunes on its own
   dataset; with ``epochs: 0`` it is evaluated as it is: zero-shot, a dataset the model never trained on.

``pretrained_checkpoint: FILE`` takes a weights file made elsewhere (this artifact, or ``python -m
recbole_llm.export --weights`` of your own checkpoint). :func:`transfer_weights` loads every weight but the
item-specific tables and refuses in one line a file of another model, other shapes, or another feature space.

The key of the weights: the pre-training run's config (the inherited keys, the budget, the seed) and the corpus's
key (its sources' content); the run keys (device, evaluation batch) are not in it. One pre-training serves the
fine-tuning runs of every seed (``pretrain_seed``).
"""

import os
import tempfile

import torch

from recbole_llm.artifacts import Artifact, BrokenArtifact, keyed_name
from recbole_llm.errors import ConfigError, DataFileError, UnsafeFileError
from recbole_llm.fileio import atomic_torch_save, load_plain, plain

FORMAT = 1
# the keys that decide the content embeddings: a pre-trained model only transfers into the same feature space
FEATURE_KEYS = (
    "llm_path", "llm_pooling", "prompt_style", "llm_normalize", "pca_dim", "scft", "llm_max_length", "feature_dtype",
    "feature_whitening", "feature_whitening_eps", "prompt_max_value_len", "text_list_fields", "llm_feature",
)
# where the pre-training runs and how it reports: not in its key
RUN_KEYS = ("device", "use_gpu", "gpu_id", "eval_batch_size", "eval_item_chunk", "llm_batch_size", "llm_ray",
            "llm_ray_address", "llm_ray_workers", "llm_ray_gpus_per_worker", "llm_ray_block_size", "checkpoint_dir",
            "data_path", "feature_dir", "show_progress", "state")
PRETRAIN_FIX = ("pass plain weights of the same model: the artifact pretrain_datasets builds, or "
                "python -m recbole_llm.export --model_file=YOUR.pth --weights=FILE of your own checkpoint")


class Pretrainable:
    """What a model declares to be pre-trained on a corpus and transferred (LEARN, UniSRec).

    ``PRETRAIN_INHERITED``: config keys the pre-training run takes from this run (architecture, sequence length,
    feature space): equal on both sides. ``ITEM_SPECIFIC``: state-dict prefixes that belong to one dataset's items
    and never transfer. ``pretrain_overrides(config)``: the model's own keys of the pre-training run (its loss)."""

    PRETRAIN_INHERITED = ()
    ITEM_SPECIFIC = ()

    @classmethod
    def pretrain_overrides(cls, config):
        return {}

    def load_pretrained(self, path):
        transfer_weights(self, path)


def pretrain_names(config):
    from recbole_llm.data.corpus import source_names
    from recbole_llm.schema import setting

    return source_names(setting(config, "pretrain_datasets"))


def check_pretrainable(config, model_class):
    """One line when ``pretrain_datasets`` / ``pretrained_checkpoint`` are set for a model that does not transfer."""
    if not issubclass(model_class, Pretrainable):
        key = "pretrain_datasets" if config["pretrain_datasets"] else "pretrained_checkpoint"
        raise ConfigError(f"config key '{key}' is set, but {config['model']} does not transfer weights from other "
                          "datasets (LEARN and UniSRec do): drop the key")


def check_pretrain_keys(config, model_class):
    """One line for pre-training keys a run cannot honour: a model that does not pre-train, the target among the
    sources, both ``pretrain_datasets`` and ``pretrained_checkpoint``, a per-dataset PCA."""
    names = pretrain_names(config)
    if not names:
        return names
    check_pretrainable(config, model_class)
    if config["dataset"] in names:
        raise ConfigError(f"config key 'pretrain_datasets' names the target dataset '{config['dataset']}': pre-train on "
                          "other datasets only (zero-shot and transfer mean the target was never seen)")
    if config["pca_dim"]:
        raise ConfigError("config key 'pca_dim' fits a PCA per dataset, so the corpus and the target would not share a "
                          "feature space: set pca_dim: null with pretrain_datasets")
    return names


def pretrain_config(config, model_class, corpus_name, corpus_dir):
    """Config dict of the pre-training run of ``config``'s model on the corpus."""
    from recbole_llm.data.corpus import TEXT_FIELDS
    from recbole_llm.schema import setting

    inherited = {key: config[key] for key in tuple(model_class.PRETRAIN_INHERITED) + FEATURE_KEYS + ("MAX_ITEM_LIST_LENGTH",)
                 if config[key] is not None}
    inherited.pop("llm_feature", None)  # the corpus's own feature file, built with the same keys
    lr = setting(config, "pretrain_learning_rate")
    run = {
        **inherited,
        "epochs": int(setting(config, "pretrain_epochs")),
        "eval_step": int(setting(config, "pretrain_epochs")),  # a fixed budget (the public pre-training): one validation,
        # after the last epoch, which is the one kept
        "learning_rate": float(lr if lr is not None else config["learning_rate"]),
        "train_batch_size": int(setting(config, "pretrain_batch_size")),
        "seed": int(setting(config, "pretrain_seed")),
        "train_user_inter_num_interval": setting(config, "pretrain_user_inter_num_interval"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"] + TEXT_FIELDS},
        "text_fields": list(TEXT_FIELDS),
        "text_field_names": {},
        "selected_features": [], "item_attribute": None,
        "metrics": ["NDCG", "Recall"], "topk": [10], "valid_metric": "NDCG@10",
        "reproducibility": config["reproducibility"],
        "cold_item_ratio": 0.0,
        "pretrain_datasets": None,
        "pretrained_checkpoint": None,
        "train_mode": config["train_mode"],
    }
    run.update(model_class.pretrain_overrides(config))
    run = {k: v for k, v in run.items() if v is not None or k in ("pretrain_datasets", "pretrained_checkpoint", "item_attribute")}
    return run


class Pretrained(Artifact):
    """The pre-trained weights of ``config``'s model on the corpus of its ``pretrain_datasets`` (module docstring)."""

    what = "pre-trained weights"
    reuse_line = "pre-training: reusing {path} (cache key {key})"
    unkeyed = RUN_KEYS

    def __init__(self, model_class, corpus_name, corpus_dir, corpus_key, run=None):
        self.model_class, self.corpus_name, self.corpus_dir, self.corpus_key = model_class, corpus_name, corpus_dir, corpus_key
        self.run = run

    def settings(self, config):
        run = pretrain_config(config, self.model_class, self.corpus_name, self.corpus_dir)
        for key in RUN_KEYS:
            run.pop(key, None)
        return {"model": config["model"], "run": run, "corpus": self.corpus_key, "format": FORMAT}

    def path(self, config, settings, key):
        return os.path.join(self.corpus_dir, keyed_name(f"{config['model']}-pretrained", key) + ".pth")

    def validate(self, path):
        try:
            checkpoint = load_plain(path, "pre-trained weights", "delete it: pretrain_datasets builds it again")
        except UnsafeFileError:
            raise
        except DataFileError as err:
            raise BrokenArtifact(str(err)) from None
        if not isinstance(checkpoint.get("state_dict"), dict):
            raise BrokenArtifact("it holds no state_dict")
        return checkpoint.get("cache_key")

    def build(self, config, settings, key, path):
        run = pretrain_config(config, self.model_class, self.corpus_name, self.corpus_dir)
        print(f"pre-training: {config['model']} on {self.corpus_name} ({run['epochs']} epochs) -> {path}")
        with tempfile.TemporaryDirectory() as checkpoint_dir:  # ours, just written: the one file unpickled here
            keys = {**run, "data_path": os.path.dirname(self.corpus_dir), "checkpoint_dir": checkpoint_dir, "show_progress": False}
            for name in ("device", "use_gpu", "gpu_id", "eval_batch_size", "eval_item_chunk", "llm_batch_size"):
                if config[name] is not None:
                    keys[name] = config[name]
            if config["feature_dir"]:  # the corpus's features beside the corpus, not among the target's
                keys["feature_dir"] = self.corpus_dir
            result = self.run(model=config["model"], dataset=self.corpus_name, config_dict=keys)
            from recbole_llm.compat import load_checkpoint

            state = load_checkpoint(result["model_file"])["state_dict"]
        atomic_torch_save(plain({
            "state_dict": transferable_state(self.model_class, state),
            "model": config["model"],
            "dataset": self.corpus_name,
            "pretrain_config": settings["run"],
            "feature_space": feature_space(config),
            "corpus": self.corpus_key,
            "test_result": dict(result["test_result"]),
            "cache_key": key,
        }), path)
        print(f"pre-training: corpus test {dict(result['test_result'])}; saved {path}")


def feature_space(config):
    """The keys that shape the content embeddings, as recorded in a pre-trained file and compared on load."""
    from recbole_llm.schema import setting

    return {key: setting(config, key) for key in FEATURE_KEYS if key != "llm_feature"}


def item_specific(model_class, key):
    """True for a state-dict key of one dataset's items: a table of ``ITEM_SPECIFIC`` (``item_embedding.weight``) or
    the key recording which frozen table a model was built with (``content_key``)."""
    return any(key == p or key.startswith(p + ".") or key == p + "_key" for p in model_class.ITEM_SPECIFIC)


def transferable_state(model_class, state):
    """``state`` without the item-specific tables."""
    return {k: v.detach().cpu().clone() for k, v in state.items() if not item_specific(model_class, k)}


def ensure_pretrained(config, model_class, run):
    """Path of the pre-trained weights of ``config`` (corpus and weights built when missing), or None without
    ``pretrain_datasets``. ``run`` is the training entry point, handed down (the model layer does not import it)."""
    from recbole_llm.data.corpus import Corpus, ensure_corpus

    names = check_pretrain_keys(config, model_class)
    if not names:
        return None
    corpus_name, corpus_dir, _ = ensure_corpus(config, names)
    corpus_key = corpus_name.rsplit("-", 1)[1]
    assert Corpus.name(corpus_key) == corpus_name
    path = Pretrained(model_class, corpus_name, corpus_dir, corpus_key, run).ensure(config).path
    given = config["pretrained_checkpoint"]
    if given and os.path.abspath(str(given)) != os.path.abspath(path):  # a run handed this very file is fine
        raise ConfigError("config keys 'pretrain_datasets' and 'pretrained_checkpoint' are both set: pre-train here "
                          "(pretrain_datasets) or start from a file (pretrained_checkpoint), not both")
    return path


def recorded_pretrained_key(path):
    """The cache key a pre-trained weights file records (None: a file of your own without one, or not sound)."""
    try:
        return Pretrained(None, None, None, None).validate(path)
    except (BrokenArtifact, DataFileError):
        return None


def handed_pretrained(config):
    """True when ``config`` was handed its pre-trained weights with their key (``artifact_keys``, by the process that
    built them): the run uses that file, checked by :func:`check_handed_pretrained`, and does not look for the corpus
    again (a handed ``feature_dir`` is the target's own folder, not where the parent put the corpus)."""
    from recbole_llm.artifacts import handed_key

    path = config["pretrained_checkpoint"]
    return bool(path) and handed_key(config, os.path.basename(str(path))) is not None


def check_handed_pretrained(config):
    """A ``pretrained_checkpoint`` this run was handed a key for (``artifact_keys``) records that key; else one line."""
    from recbole_llm.artifacts import check_handed_key, handed_key

    path = config["pretrained_checkpoint"]
    if not path or handed_key(config, os.path.basename(str(path))) is None:
        return
    check_handed_key(config, os.path.basename(str(path)), recorded_pretrained_key(path), path, "pre-trained weights")


def transfer_weights(model, path, expected_space=None):
    """Load every weight of the plain weights file ``path`` but ``model``'s item-specific tables (``weights_only=True``).

    One line, and nothing loaded, for: a file of another model, one that transfers no weight, names a parameter this
    model lacks or gives another shape, or was pre-trained in another feature space (LLM, pooling, prompt)."""
    name = type(model).__name__
    checkpoint = load_plain(path, "pretrained checkpoint", PRETRAIN_FIX)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"pretrained checkpoint '{path}' has no state_dict of tensors: {PRETRAIN_FIX}")
    source = checkpoint.get("model")
    if isinstance(source, str) and source != name:
        raise ConfigError(f"pretrained checkpoint '{path}' holds the weights of a {source}, not a {name}: {PRETRAIN_FIX}")
    space = checkpoint.get("feature_space")
    if isinstance(space, dict) and expected_space is not None:
        differ = {k: (space.get(k), v) for k, v in expected_space.items() if k in space and space.get(k) != v}
        if differ:
            key, (theirs, ours) = next(iter(differ.items()))
            raise ConfigError(f"pretrained checkpoint '{path}' was pre-trained with {key}: {theirs}, this run has {ours}: "
                              f"its towers read another feature space; set {key}: {theirs} or pre-train again")
    transferable = transferable_state(type(model), state)
    if not transferable:
        raise ConfigError(f"pretrained checkpoint '{path}' transfers no weight: {PRETRAIN_FIX}")
    ours = transferable_state(type(model), model.state_dict())
    unexpected = [k for k in transferable if k not in ours]
    if unexpected:
        raise ConfigError(f"pretrained checkpoint '{path}' has parameters this {name} lacks: {unexpected[:5]}: pre-train "
                          "with the same architecture keys")
    wrong = [f"{k} {tuple(v.shape)} (here {tuple(ours[k].shape)})" for k, v in transferable.items() if v.shape != ours[k].shape]
    if wrong:
        raise ConfigError(f"pretrained checkpoint '{path}' has other shapes than this {name}: {', '.join(wrong[:3])}: "
                          "pre-train with the same widths, layers, sequence length and feature width")
    missing = [k for k in ours if k not in transferable]
    if missing:
        raise ConfigError(f"pretrained checkpoint '{path}' lacks weights of this {name}: {missing[:5]}: pre-train with the "
                          "same architecture keys (item_tower, position_embedding, ...)")
    model.load_state_dict(transferable, strict=False)
    return sorted(transferable)
