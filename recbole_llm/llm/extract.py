"""Item feature files from any local Hugging Face model directory (encoders and decoders).

Model loading, pooling and batched embedding live in :mod:`recbole_llm.llm.embed`.

- :func:`ensure_features`: builds (or reuses, when its cache key still matches) the feature file of a
  dataset, optionally with a PCA-reduced companion.
"""

import hashlib
import json
import logging
import os
import time

import numpy as np
import pandas as pd
import torch

from recbole_llm.errors import ConfigError
from recbole_llm.fileio import build_once, file_fingerprint
from recbole_llm.llm import features as feature_io
from recbole_llm.schema import setting
from recbole_llm.llm.embed import _text_key, embed_texts, llm_short_name, load_llm, resolve_llm_path
from recbole_llm.llm.prompts import build_prompts, prompt_config, read_item_text, template_hash

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


def ensure_whitened(config, name, mode, eps=1e-5):
    """Name of the ``mode``-whitened companion of feature file ``name`` (``<name>-white<mode>``), built when missing
    or stale; its cache key hashes the source file's key, the mode and ``eps``."""
    if mode in (None, "none"):
        return name
    if mode not in WHITENINGS:
        raise ConfigError(f"feature_whitening must be one of {list(WHITENINGS)}, got '{mode}'")
    source = feature_io.find_feature_file(config, name)
    if source is None:
        raise feature_io.FeatureFileError(f"feature file '{config['dataset']}.{name}' not found: build it first")
    source_key = feature_io.load_meta(source).get("cache_key")
    key = hashlib.sha1(json.dumps([source_key, mode, float(eps)]).encode()).hexdigest()[:16]
    white_name = f"{name}-white{mode}"
    if is_current(feature_io.find_feature_file(config, white_name), key):
        return white_name
    tokens, matrix, meta = feature_io.load_features(source, mmap=False, float32=True)
    meta = {k: v for k, v in meta.items() if k not in ("tokens", "rows", "dims", "created_at", "created_by")}
    meta.update(cache_key=key, whitening=mode, whitening_eps=float(eps), whitening_of=name)
    base = feature_io.feature_base(feature_io.feature_dirs(config)[0], config["dataset"], white_name)
    feature_io.save_features(base, tokens, whiten(matrix, mode, eps), meta)
    print(f"wrote {mode}-whitened features {base}.npy (of '{name}')")
    return white_name


def dataset_item_tokens(data_dir, dataset, item_text, item_field="item_id"):
    """Tokens of every item: the .item file's, plus items that only appear in the .inter file."""
    tokens = list(item_text.tokens)
    inter = os.path.join(data_dir, f"{dataset}.inter")
    if os.path.isfile(inter):
        header = pd.read_csv(inter, sep="\t", nrows=0, quoting=3).columns
        column = next((c for c in header if c.split(":")[0] == item_field), None)
        if column is not None:
            known = set(tokens)
            seen = pd.read_csv(inter, sep="\t", usecols=[column], dtype=str, quoting=3)[column].unique()
            tokens += [t for t in seen if t not in known]
    return tokens


def feature_settings(config, llm_path=None, pooling=None, prompt_style=None, normalize=None):
    """The settings that define a feature file (its cache key is their hash)."""
    prompts = prompt_config(config)
    style = prompt_style or setting(config, "prompt_style")
    settings = {
        "dataset": config["dataset"],
        "llm_path": llm_path or setting(config, "llm_path"),
        "pooling": pooling or setting(config, "llm_pooling"),
        "prompt_style": style,
        "prompt_hash": template_hash(style, prompts["instruction"], prompts["max_value_len"], prompts["text_fields"], prompts["field_names"]),
        "max_length": int(setting(config, "llm_max_length")),
        "normalize": bool(normalize if normalize is not None else setting(config, "llm_normalize")),
    }
    dtype = feature_io.check_dtype(setting(config, "feature_dtype"))
    if dtype != "float32":  # float32 files keep the cache key they always had
        settings["dtype"] = dtype
    return settings


def cache_key(settings, item_file):
    payload = dict(settings, item_file=file_fingerprint(item_file))
    payload["llm_path"] = resolve_llm_path(settings["llm_path"])
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def default_feature_name(settings, pca_dim=None):
    name = f"{llm_short_name(settings['llm_path'])}-{settings['pooling']}-{settings['prompt_style']}"
    if settings["normalize"]:
        name += "-l2"
    if settings.get("dtype"):
        name += {"float16": "-fp16", "bfloat16": "-bf16"}[settings["dtype"]]
    return name + (f"-pca{pca_dim}" if pca_dim else "")


def is_current(base, key):
    """True when the feature file ``base`` has cache key ``key`` AND opens as a sound file: the matrix matches
    its metadata (rows, dims), is a float array and holds no NaN/inf. A broken file is logged and rebuilt."""
    if base is None:
        return False
    try:
        if feature_io.load_meta(base).get("cache_key") != key:
            return False
        feature_io.check_feature_file(base)
    except feature_io.FeatureFileError as err:
        logger.warning(f"feature file {base}: {err}; rebuilding it")
        print(f"feature file {base} is broken ({err}); rebuilding it")
        return False
    return True


def ensure_features(config, name=None, llm_path=None, pooling=None, prompt_style=None, pca_dim=None, normalize=None, show_progress=True,
                    force=False):
    """Name of an up-to-date feature file for ``config``'s dataset; builds it if missing or stale.

    ``config`` is a recbole_llm Config (or a dict with ``dataset`` and ``data_path`` = the dataset
    folder). Reads ``llm_path``, ``llm_pooling``, ``prompt_style``, ``pca_dim``, ``llm_max_length``,
    ``llm_batch_size``, ``llm_normalize`` and the prompt keys when the arguments are None. ``force`` rebuilds
    the file (and its PCA companion) even when it is up to date.
    """
    settings = feature_settings(config, llm_path, pooling, prompt_style, normalize)
    pca_dim = pca_dim if pca_dim is not None else setting(config, "pca_dim")
    dataset, data_dir = config["dataset"], config["data_path"]
    item_path = os.path.join(data_dir, f"{dataset}.item")
    key = cache_key(settings, item_path)
    base_name = default_feature_name(settings) if (name is None or pca_dim) else name
    if name is not None and pca_dim:
        base_name = name + "-full"
    target_dir = feature_io.feature_dirs(config)[0]

    forced = [force]  # the first check of build_once says "stale" once; the re-check under the lock too

    def current():
        if forced[0]:
            return False
        return is_current(feature_io.find_feature_file(config, base_name), key)

    def build():
        _build_features(config, settings, key, base_name, target_dir, show_progress)
        forced[0] = False

    built = build_once(
        feature_io.feature_base(target_dir, dataset, base_name),
        current,
        build,
        f"features '{base_name}'",
    )
    existing = feature_io.find_feature_file(config, base_name)
    if not built:
        logger.info(f"features '{base_name}' are up to date ({existing}.npy): reusing them")
        print(f"reusing up-to-date features {existing}.npy (cache key {key})")
    if not pca_dim:
        return base_name

    return ensure_pca_companion(config, base_name, key, int(pca_dim), name or default_feature_name(settings, pca_dim), force)


def ensure_pca_companion(config, base_name, base_key, pca_dim, pca_name, force=False):
    """Name of the PCA-reduced companion ``pca_name`` of feature file ``base_name`` (cache key ``base_key``), built
    when missing or stale: the one PCA path of extracted and SCFT-tuned features (its key: hash of the base key and
    the width)."""
    pca_key = hashlib.sha1(f"{base_key}-pca{pca_dim}".encode()).hexdigest()[:16]
    pca_existing = feature_io.find_feature_file(config, pca_name)
    if not force and is_current(pca_existing, pca_key):
        logger.info(f"PCA features '{pca_name}' are up to date: reusing them")
        print(f"reusing up-to-date features {pca_existing}.npy (cache key {pca_key})")
        return pca_name
    tokens, matrix, meta = feature_io.load_features(feature_io.find_feature_file(config, base_name), mmap=False, float32=True)
    reduced = pca_reduce(matrix, pca_dim)
    pca_meta = {k: v for k, v in meta.items() if k not in ("tokens", "rows", "dims", "created_at", "created_by")}
    pca_meta.update(cache_key=pca_key, pca_dim=pca_dim, pca_of=base_name)
    base = feature_io.feature_base(feature_io.feature_dirs(config)[0], config["dataset"], pca_name)
    feature_io.save_features(base, tokens, reduced, pca_meta)
    print(f"wrote {reduced.shape[0]} x {reduced.shape[1]} PCA features to {base}.npy")
    return pca_name


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


def _build_features(config, settings, key, base_name, target_dir, show_progress):
    """Embed every item of ``config``'s dataset and write the feature file ``<target_dir>/<dataset>.<base_name>``."""
    dataset, data_dir = config["dataset"], config["data_path"]
    prompts_cfg = prompt_config(config)
    item_text = read_item_text(
        data_dir, dataset, prompts_cfg["text_fields"], prompts_cfg["field_names"], prompts_cfg["list_fields"], prompts_cfg["item_field"]
    )
    tokens = dataset_item_tokens(data_dir, dataset, item_text, prompts_cfg["item_field"])
    prompts = build_prompts(item_text, settings["prompt_style"], prompts_cfg["instruction"], prompts_cfg["max_value_len"], tokens)
    start = time.perf_counter()
    texts = [prompts[t] for t in tokens]
    chunk_dir = os.path.join(target_dir, f".chunks-{base_name}")
    if setting(config, "llm_ray"):
        matrix = _embed_with_ray(config, settings, texts, chunk_dir, show_progress)
    else:
        device = setting(config, "device", "cpu")
        model, tokenizer = load_llm(settings["llm_path"], device=device)
        matrix = embed_texts(texts, model, tokenizer, pooling=settings["pooling"], batch_size=int(setting(config, "llm_batch_size")),
                             max_length=settings["max_length"], device=device, normalize=settings["normalize"],
                             show_progress=show_progress, chunk_dir=chunk_dir)
    seconds = time.perf_counter() - start
    meta = dict(settings, llm_path=resolve_llm_path(settings["llm_path"]), cache_key=key, seconds=round(seconds, 2))
    base = feature_io.feature_base(target_dir, dataset, base_name)
    feature_io.save_features(base, tokens, matrix, meta, dtype=settings.get("dtype", "float32"))
    _remove_chunks(os.path.join(target_dir, f".chunks-{base_name}"))
    rate = len(tokens) / max(seconds, 1e-9)
    logger.info(f"wrote features '{base_name}' {matrix.shape} to {base}.npy ({rate:.0f} items/s)")
    print(f"wrote {matrix.shape[0]} x {matrix.shape[1]} features to {base}.npy ({rate:.1f} items/s)")
