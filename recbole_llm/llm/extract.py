"""Item feature files from any local Hugging Face model directory (encoders and decoders).

Model loading, pooling and batched embedding live in :mod:`recbole_llm.llm.embed`.

- :func:`ensure_features`: builds (or reuses, when its cache key still matches) the feature file of a
  dataset, optionally with a PCA-reduced companion (:func:`ensure_pca_companion`); :func:`ensure_whitened` the
  whitened companion. All three are :class:`recbole_llm.artifacts.Artifact` s (feature files:
  :class:`recbole_llm.llm.features.FeatureFileArtifact`), keyed, validated and built the one way, each named by
  its key: ``minilm-mean-llmemb-<key>``, ``minilm-mean-llmemb-pca64-<key>``, ``<prefix>-whitezca-<key>``.
"""

import logging
import os
import time

import numpy as np
import torch

from recbole_llm.artifacts import name_prefix
from recbole_llm.errors import ConfigError
from recbole_llm.fileio import file_fingerprint
from recbole_llm.llm import features as feature_io
from recbole_llm.schema import setting
from recbole_llm.llm.embed import _text_key, embed_texts, llm_short_name, load_llm, resolve_llm_path
from recbole_llm.llm.prompts import dataset_prompts, prompt_hash

logger = logging.getLogger(__name__)

def pca_reduce(matrix, dim):
    """Project on the top ``dim`` principal components (plain centring, SVD); float32."""
    x = torch.from_numpy(np.asarray(matrix, dtype=np.float64))
    if dim > min(x.shape):
        raise ConfigError(f"pca_dim {dim} is larger than min(items, dims) = {min(x.shape)} of the features")
    x = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return (x @ vh[:dim].T).numpy().astype(np.float32)


WHITENINGS = ("none", "pca", "zca")


def whiten(matrix, mode="zca", eps=1e-5):
    """Whitened copy of ``matrix`` (n, d): mean removed, covariance mapped to identity; float32.

    With ``C = X^T X / n = U diag(s) U^T`` of the centred matrix X: ``pca`` is ``X U diag(s + eps)^-1/2`` (columns
    ordered by explained variance), ``zca`` is that rotated back, ``X U diag(s + eps)^-1/2 U^T`` (closest to the
    input). ``eps`` keeps directions without variance (n < d, duplicated items) from blowing up; ``none``
    returns the input unchanged. Text embeddings are strongly anisotropic (WhitenRec, arXiv 2402.10602).
    """
    if mode not in WHITENINGS:
        raise ConfigError(f"feature_whitening must be one of {list(WHITENINGS)}, got '{mode}'")
    if mode == "none":
        return np.asarray(matrix, dtype=np.float32)
    x = torch.from_numpy(np.asarray(matrix, dtype=np.float64))
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(x.size(0), 1)
    s, u = torch.linalg.eigh(cov)
    s, u = s.flip(0).clamp(min=0.0), u.flip(1)  # descending variance
    out = (x @ u) / torch.sqrt(s + float(eps))
    if mode == "zca":
        out = out @ u.T
    return out.numpy().astype(np.float32)


def check_whitening(mode):
    if mode not in WHITENINGS:
        raise ConfigError(f"feature_whitening must be one of {list(WHITENINGS)}, got '{mode}'")
    return mode


def companion_suffix(transform):
    """``-pca<d>`` or ``-white<mode>``: what a companion's name adds to its source's."""
    return f"-pca{transform['pca_dim']}" if "pca_dim" in transform else f"-white{transform['whitening']}"


class Companion(feature_io.FeatureFileArtifact):
    """A feature file computed from another one, ``source``: its PCA reduction (``{"pca_dim": d}``) or its whitening
    (``{"whitening": mode, "eps": eps}``). Settings: the transform, the source's key (a file built here: its cache key;
    a file of your own: its content hash) with its name's prefix (the name less its key: the key it had before keys
    joined the names), the stored dtype (``feature_dtype``). Named ``<source prefix><suffix>-<key>`` unless ``name``."""

    def __init__(self, source, transform, name=None):
        transform = dict(transform)
        super().__init__(name=name, prefix=None if name else name_prefix(source) + companion_suffix(transform))
        self.source, self.transform = source, transform

    def settings(self, config):
        base = feature_io.find_feature_file(config, self.source)
        if base is None:
            raise feature_io.FeatureFileError(f"feature file '{config['dataset']}.{self.source}' not found: build it first")
        source_key = feature_io.feature_key(base, feature_io.load_meta(base))
        dtype = feature_io.check_dtype(setting(config, "feature_dtype"))
        return dict(self.transform, source=[name_prefix(self.source), source_key], dtype=dtype)

    def build(self, config, settings, key, path):
        tokens, matrix, meta = feature_io.load_features(feature_io.find_feature_file(config, self.source), mmap=False, float32=True)
        meta = {k: v for k, v in meta.items() if k not in ("tokens", "rows", "dims", "dtype", "created_at", "created_by")}
        if "pca_dim" in self.transform:
            matrix = pca_reduce(matrix, self.transform["pca_dim"])
            meta.update(pca_dim=self.transform["pca_dim"], pca_of=self.source)
            line = f"wrote {matrix.shape[0]} x {matrix.shape[1]} PCA features to {path}.npy"
        else:
            mode, eps = self.transform["whitening"], self.transform["eps"]
            matrix = whiten(matrix, mode, eps)
            meta.update(whitening=mode, whitening_eps=eps, whitening_of=self.source)
            line = f"wrote {mode}-whitened features {path}.npy (of '{self.source}')"
        meta["cache_key"] = key
        feature_io.save_features(path, tokens, matrix, meta, dtype=settings["dtype"])
        print(line)


def ensure_whitened(config, name, mode, eps=1e-5):
    """Name of the ``mode``-whitened companion of feature file ``name`` (``<name's prefix>-white<mode>-<key>``), built
    when missing or stale (:class:`Companion`: keyed on the source file's key, the mode, ``eps`` and ``feature_dtype``)."""
    if mode in (None, "none"):
        return name
    return Companion(name, {"whitening": check_whitening(mode), "eps": float(eps)}).ensure_name(config)


def ensure_pca_companion(config, base_name, pca_dim, name=None, force=False):
    """Name of the PCA-reduced companion of feature file ``base_name`` (``<prefix>-pca<d>-<key>``, or ``name``), built
    when missing or stale: the one PCA path of extracted and SCFT-tuned features (:class:`Companion`: keyed on the
    source's key and the width)."""
    return Companion(base_name, {"pca_dim": int(pca_dim)}, name=name).ensure_name(config, force=force)


def feature_settings(config, llm_path=None, pooling=None, prompt_style=None, normalize=None):
    """The requested settings of a feature file (the arguments, else the config's keys at their YAML defaults); its
    artifact settings add the resolved model path and the .item file's content (:class:`ExtractedFeatures`)."""
    style = prompt_style or setting(config, "prompt_style")
    settings = {
        "dataset": config["dataset"],
        "llm_path": llm_path or setting(config, "llm_path"),
        "pooling": pooling or setting(config, "llm_pooling"),
        "prompt_style": style,
        "prompt_hash": prompt_hash(config, style),
        "max_length": int(setting(config, "llm_max_length")),
        "normalize": bool(normalize if normalize is not None else setting(config, "llm_normalize")),
    }
    dtype = feature_io.check_dtype(setting(config, "feature_dtype"))
    if dtype != "float32":  # float32 files keep the cache key they always had
        settings["dtype"] = dtype
    return settings


def default_feature_name(settings, pca_dim=None):
    """The readable prefix of a built feature file's name, ``<llm>-<pooling>-<prompt>[-l2][-fp16][-pca<d>]``: the file
    is named ``<prefix>-<key>`` (:class:`recbole_llm.llm.features.FeatureFileArtifact`; the prefix alone was its name
    before 2026-12, found once more as its former copy)."""
    name = f"{llm_short_name(settings['llm_path'])}-{settings['pooling']}-{settings['prompt_style']}"
    if settings["normalize"]:
        name += "-l2"
    name += feature_io.dtype_suffix(settings.get("dtype", "float32"))
    return name + (f"-pca{pca_dim}" if pca_dim else "")


class ExtractedFeatures(feature_io.FeatureFileArtifact):
    """The feature file the LLM embeds from the dataset's item text; ``request``: :func:`feature_settings`. Named
    ``<default_feature_name>-<key>`` unless ``name``."""

    # how and where it is computed, not what: the same vectors (up to float rounding) on any device, batch or Ray pool
    unkeyed = feature_io.FeatureFileArtifact.unkeyed + (
        "device", "llm_batch_size", "llm_ray", "llm_ray_workers", "llm_ray_gpus_per_worker", "llm_ray_address", "llm_ray_block_size")

    def __init__(self, request, name=None, show_progress=True):
        super().__init__(name=name, prefix=None if name else default_feature_name(request))
        self.request, self.show_progress = request, show_progress

    def settings(self, config):
        item_path = os.path.join(config["data_path"], f"{config['dataset']}.item")
        return dict(self.request, item_file=file_fingerprint(item_path), llm_path=resolve_llm_path(self.request["llm_path"]))

    def build(self, config, settings, key, path):
        _build_features(config, settings, key, path, self.name_for(key), self.show_progress)


def ensure_features(config, name=None, llm_path=None, pooling=None, prompt_style=None, pca_dim=None, normalize=None, show_progress=True,
                    force=False):
    """Name of an up-to-date feature file for ``config``'s dataset; builds it if missing or stale.

    ``config`` is a recbole_llm Config (or a dict with ``dataset`` and ``data_path`` = the dataset
    folder). Reads ``llm_path``, ``llm_pooling``, ``prompt_style``, ``pca_dim``, ``llm_max_length``,
    ``llm_batch_size``, ``llm_normalize``, ``feature_dtype`` and the prompt keys when the arguments are None. ``force``
    rebuilds the file (and its PCA companion) even when it is up to date.
    """
    request = feature_settings(config, llm_path, pooling, prompt_style, normalize)
    pca_dim = pca_dim if pca_dim is not None else setting(config, "pca_dim")
    own = name + "-full" if (name is not None and pca_dim) else name  # a name of your own: the PCA file's
    base_name = ExtractedFeatures(request, own, show_progress).ensure_name(config, force=force)
    if not pca_dim:
        return base_name
    return ensure_pca_companion(config, base_name, int(pca_dim), name, force)


def _embed_with_ray(config, settings, texts, chunk_dir, show_progress):
    """The feature matrix computed by Ray actors (recbole_llm.llm.ray_extract); same rows as embed_texts."""
    from transformers import AutoConfig

    from recbole_llm.llm.ray_extract import embed_texts_ray

    path = resolve_llm_path(settings["llm_path"])
    hidden_size = AutoConfig.from_pretrained(path, local_files_only=True).hidden_size
    chunk_key = _text_key(texts, {k: settings[k] for k in ("pooling", "max_length", "normalize")} | {"model": path})
    return embed_texts_ray(texts, path, hidden_size, pooling=settings["pooling"], max_length=settings["max_length"],
                           normalize=settings["normalize"], batch_size=int(setting(config, "llm_batch_size")),
                           num_workers=int(setting(config, "llm_ray_workers")), gpus_per_worker=float(setting(config, "llm_ray_gpus_per_worker")),
                           address=setting(config, "llm_ray_address"), block_size=int(setting(config, "llm_ray_block_size")),
                           chunk_dir=chunk_dir, chunk_key=chunk_key, show_progress=show_progress)


def _remove_chunks(chunk_dir):
    if os.path.isdir(chunk_dir):
        for file in os.listdir(chunk_dir):
            os.remove(os.path.join(chunk_dir, file))
        os.rmdir(chunk_dir)


def _build_features(config, settings, key, base, base_name, show_progress):
    """Embed every item of ``config``'s dataset and write the feature file ``base`` (``<folder>/<dataset>.<base_name>``)."""
    _, tokens, prompts = dataset_prompts(config, settings["prompt_style"])
    start = time.perf_counter()
    texts = [prompts[t] for t in tokens]
    chunk_dir = os.path.join(os.path.dirname(base), f".chunks-{base_name}")
    if setting(config, "llm_ray"):
        matrix = _embed_with_ray(config, settings, texts, chunk_dir, show_progress)
    else:
        device = setting(config, "device", "cpu")
        model, tokenizer = load_llm(settings["llm_path"], device=device)
        matrix = embed_texts(texts, model, tokenizer, pooling=settings["pooling"], batch_size=int(setting(config, "llm_batch_size")),
                             max_length=settings["max_length"], device=device, normalize=settings["normalize"],
                             show_progress=show_progress, chunk_dir=chunk_dir)
    seconds = time.perf_counter() - start
    meta = dict(settings, cache_key=key, seconds=round(seconds, 2))
    feature_io.save_features(base, tokens, matrix, meta, dtype=settings.get("dtype", "float32"))
    _remove_chunks(chunk_dir)
    rate = len(tokens) / max(seconds, 1e-9)
    logger.info(f"wrote features '{base_name}' {matrix.shape} to {base}.npy ({rate:.0f} items/s)")
    print(f"wrote {matrix.shape[0]} x {matrix.shape[1]} features to {base}.npy ({rate:.1f} items/s)")
