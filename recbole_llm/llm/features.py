"""Feature files: item tokens + a float matrix + metadata, written atomically, loaded memory-mapped.

A feature file named ``<name>`` of dataset ``<dataset>`` is two files in the feature folder:

    <dataset>.<name>.npy    float32 / float16 matrix, one row per item token (np.load(mmap_mode="r")); bfloat16,
                            which numpy lacks, is stored as its raw 16 bits (uint16) with "dtype": "bfloat16"
    <dataset>.<name>.json   {"tokens": [...], "dims": d, "rows": n, "model": ..., "pooling": ...,
                             "prompt_hash": ..., "created_by": ..., "created_at": ..., ...}

The ``.npy`` is written first and the ``.json`` last, each to a temp file renamed into place: a file
whose ``.json`` exists is complete. Feature folder: ``feature_dir`` if set, else the dataset folder when
it is writable and not inside an installed package, else ``dataset_atomic/<dataset>/`` of the checkout
(``../shared/datasets`` and the recbole wheel are read-only).
"""

import hashlib
import json
import os
import stat
import sys
import time

import numpy as np
import torch

from recbole_llm.artifacts import Artifact, BrokenArtifact, check_handed_key, handed_key, keyed_name
from recbole_llm.errors import UserError
from recbole_llm.fileio import atomic_open, atomic_write_text, build_once, file_fingerprint
from recbole_llm.paths import PROJECT_ROOT

SUFFIX_MATRIX = ".npy"
SUFFIX_META = ".json"


class FeatureFileError(UserError, ValueError):
    """A missing, corrupt or mismatched feature file; the message names the file and the fix."""


FEATURE_DTYPES = ("float32", "float16", "bfloat16")
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_dtype(dtype, key="feature_dtype"):
    if dtype not in FEATURE_DTYPES:
        from recbole_llm.errors import ConfigError

        raise ConfigError(f"config key '{key}' must be one of {list(FEATURE_DTYPES)}, got {dtype!r}")
    return dtype


def dtype_suffix(dtype):
    """The part of a built feature file's name that says its stored dtype ("" for float32)."""
    return {"float32": "", "float16": "-fp16", "bfloat16": "-bf16"}[check_dtype(dtype)]


def to_stored(matrix, dtype):
    """A float32 numpy matrix as it is stored for ``dtype`` (bfloat16: its raw bits as uint16)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return np.ascontiguousarray(matrix, dtype=np.dtype(dtype))


def to_tensor(block, stored, dtype):
    """Rows of a stored matrix (numpy, maybe memory-mapped) as a torch tensor of ``dtype``."""
    if stored == "bfloat16":
        tensor = torch.from_numpy(np.array(block, dtype=np.uint16).view(np.int16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(np.array(block))
    return tensor.to(_TORCH_DTYPES[dtype])


def _writable(folder):
    """A folder we may add files to: write permission bits set (root passes os.access on read-only folders
    such as ../shared/datasets), and not inside an installed package."""
    if not os.path.isdir(folder) or "site-packages" in os.path.abspath(folder):
        return False
    mode = os.stat(folder).st_mode
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(folder, os.W_OK)


def feature_dirs(config):
    """Folders searched for feature files, the first being where new ones are written."""

    dataset = config["dataset"]
    data_dir = config["data_path"]
    fallback = os.path.join(os.getcwd(), "dataset_atomic", dataset)
    repo_fallback = os.path.join(PROJECT_ROOT, "dataset_atomic", dataset)
    from recbole_llm.schema import setting

    if setting(config, "feature_dir"):
        dirs = [setting(config, "feature_dir")]
    elif _writable(data_dir):
        dirs = [data_dir]
    else:
        dirs = [fallback]
    for extra in (data_dir, fallback, repo_fallback):
        if extra not in dirs:
            dirs.append(extra)
    return [os.path.abspath(d) for d in dirs]


def feature_base(folder, dataset, name):
    return os.path.join(folder, f"{dataset}.{name}")


def find_feature_file(config, name):
    """Base path (without suffix) of feature ``name``, or None when no complete file exists."""
    for folder in feature_dirs(config):
        base = feature_base(folder, config["dataset"], name)
        if os.path.isfile(base + SUFFIX_META) and os.path.isfile(base + SUFFIX_MATRIX):
            return base
    return None


def save_features(base, tokens, matrix, meta=None, dtype="float32"):
    """Write ``<base>.npy`` and ``<base>.json`` atomically, the matrix stored as ``dtype`` (float32 | float16 |
    bfloat16); returns the metadata written."""
    check_dtype(dtype)
    matrix = np.ascontiguousarray(np.asarray(matrix, dtype=np.float32))
    tokens = [str(t) for t in tokens]
    if matrix.ndim != 2 or matrix.shape[0] != len(tokens):
        raise FeatureFileError(
            f"feature matrix for '{base}' has shape {matrix.shape}, expected ({len(tokens)}, d): one row per token"
        )
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        examples = [tokens[i] for i in np.flatnonzero(bad)[:5]]
        raise FeatureFileError(f"refusing to write '{base}': {int(bad.sum())} rows contain NaN/inf (items {examples})")
    write_matrix_blockwise(base + SUFFIX_MATRIX, len(tokens), matrix.shape[1], [matrix], dtype)
    return write_meta(base, tokens, matrix.shape[1], dtype, meta)


def write_meta(base, tokens, dims, dtype, meta=None):
    """Write ``<base>.json`` (last: a file whose .json exists is complete) with the fingerprint of the ``<base>.npy``
    just written (``matrix``: the pair is one unit, :func:`load_features` checks it); returns the metadata written."""
    meta = dict(meta or {})
    meta.update(
        {
            "matrix": file_fingerprint(base + SUFFIX_MATRIX),
            "tokens": [str(t) for t in tokens],
            "rows": len(tokens),
            "dims": int(dims),
            "dtype": dtype,
            "created_at": meta.get("created_at") or time.strftime("%Y-%m-%dT%H:%M:%S"),
            "created_by": meta.get("created_by") or " ".join([os.path.basename(sys.executable)] + sys.argv),
        }
    )
    atomic_write_text(base + SUFFIX_META, json.dumps(meta, indent=1))
    return meta


def write_matrix_blockwise(path, n_rows, dims, blocks, dtype="float32"):
    """``path`` (.npy, atomically; what ``np.save`` writes) from float32 ``blocks`` of consecutive rows, stored as
    ``dtype``; never whole in memory."""
    storage = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
    written = 0
    with atomic_open(path, "wb") as handle:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(storage)), "fortran_order": False, "shape": (int(n_rows), int(dims))}
        np.lib.format.write_array_header_1_0(handle, header)
        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            if block.ndim != 2 or block.shape[1] != dims or not np.isfinite(block).all():
                raise FeatureFileError(f"refusing to write '{path}': a block of shape {block.shape} is not finite ({dims} dims)")
            if dtype == "float16" and np.abs(block).max(initial=0.0) > np.finfo(np.float16).max:
                raise FeatureFileError(f"refusing to write '{path}' as float16: values exceed {np.finfo(np.float16).max:.0f}; use bfloat16")
            handle.write(to_stored(block, dtype).tobytes())
            written += len(block)
        if written != n_rows:
            raise FeatureFileError(f"'{path}': {written} rows written for {n_rows}")


def save_features_blockwise(base, tokens, dims, blocks, meta=None, dtype="float32"):
    """A feature file written block by block, never whole in memory (tables larger than memory): ``blocks`` yields
    float32 arrays of consecutive rows, ``len(tokens)`` rows in all."""
    check_dtype(dtype)
    write_matrix_blockwise(base + SUFFIX_MATRIX, len(tokens), dims, blocks, dtype)
    return write_meta(base, tokens, dims, dtype, meta)


REBUILD = "delete it (the next run rebuilds it) or run python -m recbole_llm.features --dataset=<name> --force"


def feature_key(base, meta):
    """What identifies a feature file's content: the cache key of a file this project built, else its content hash."""
    return meta.get("cache_key") or "sha1:{1}".format(*file_fingerprint(base + SUFFIX_MATRIX))


def load_meta(base):
    path = base + SUFFIX_META
    if not os.path.isfile(path):
        raise FeatureFileError(f"feature metadata '{path}' not found: build it with python -m recbole_llm.features")
    try:
        with open(path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FeatureFileError(f"feature metadata '{path}' is corrupt ({err}): {REBUILD}")
    if not isinstance(meta, dict) or "tokens" not in meta:
        raise FeatureFileError(f"feature metadata '{path}' has no 'tokens' list: {REBUILD}")
    return meta


def load_features(base, mmap=True, float32=False):
    """(tokens, matrix, meta) of a feature file; the matrix is memory-mapped when ``mmap`` and in its stored dtype
    (meta["dtype"]; bfloat16 as raw uint16), or a float32 array in memory with ``float32``."""
    meta = load_meta(base)
    path = base + SUFFIX_MATRIX
    try:
        matrix = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FeatureFileError(f"feature matrix '{path}' cannot be read ({err}): {REBUILD}")
    tokens = [str(t) for t in meta["tokens"]]
    if matrix.ndim != 2 or matrix.shape[0] != len(tokens):
        raise FeatureFileError(
            f"feature matrix '{path}' has shape {matrix.shape} but its metadata lists {len(tokens)} tokens: "
            f"the pair is out of sync; {REBUILD}"
        )
    if "dims" in meta and int(meta["dims"]) != matrix.shape[1]:
        raise FeatureFileError(
            f"feature matrix '{path}' has {matrix.shape[1]} dims but its metadata says {meta['dims']}: {REBUILD}"
        )
    if meta.get("matrix") and file_fingerprint(path) != list(meta["matrix"]):  # hashed once per process and file version
        raise FeatureFileError(
            f"feature matrix '{path}' is not the one its metadata was written with (another build replaced one of the "
            f"pair, or it was stopped between the two): {REBUILD}"
        )
    if float32:
        matrix = to_tensor(matrix, meta.get("dtype", "float32"), "float32").numpy()
    return tokens, matrix, meta


def check_feature_file(base):
    """Open ``base`` and check it: matrix vs metadata (load_features), a float matrix, every value finite."""
    tokens, matrix, meta = load_features(base, mmap=True)
    stored = meta.get("dtype", "float32")
    expected = np.uint16 if stored == "bfloat16" else np.dtype(stored) if stored in FEATURE_DTYPES else None
    if not np.issubdtype(matrix.dtype, np.floating) and matrix.dtype != expected:
        raise FeatureFileError(f"feature matrix '{base}{SUFFIX_MATRIX}' has dtype {matrix.dtype}, not float: {REBUILD}")
    if matrix.dtype != expected:
        raise FeatureFileError(f"feature matrix '{base}{SUFFIX_MATRIX}' has dtype {matrix.dtype} but its metadata says {stored}: {REBUILD}")
    for start in range(0, matrix.shape[0], 65536):  # in blocks: a memory-mapped file is never loaded whole
        if not torch.isfinite(to_tensor(matrix[start : start + 65536], stored, "float32")).all():
            raise FeatureFileError(f"feature matrix '{base}{SUFFIX_MATRIX}' holds NaN/inf values: {REBUILD}")
    return tokens, matrix


def aligned_rows(tokens, matrix, id2token, source, expected_dims=None):
    """Row of the feature file for every internal item id 1..n (matched by token, never by position); duplicated
    tokens, a dims mismatch and missing items raise :class:`FeatureFileError` naming ``source``."""
    index = {}
    duplicates = []
    for row, token in enumerate(tokens):
        if token in index:
            duplicates.append(token)
        index[token] = row
    if duplicates:
        raise FeatureFileError(
            f"feature file '{source}' lists {len(duplicates)} duplicated item tokens (first: {duplicates[:5]}): {REBUILD}"
        )
    if expected_dims is not None and matrix.shape[1] != int(expected_dims):
        raise FeatureFileError(
            f"feature file '{source}' has {matrix.shape[1]} dims but the config expects {expected_dims}: "
            "pick the matching feature file or change the dims in the config"
        )
    missing = [t for t in id2token[1:] if t not in index]
    if missing:
        raise FeatureFileError(
            f"{len(missing)} items of the dataset are missing from feature file '{source}' "
            f"(first: {missing[:5]}): rebuild the features for this dataset (python -m recbole_llm.features --dataset=<name> --force)"
        )
    return np.asarray([index[t] for t in id2token[1:]], dtype=np.int64)


def aligned_blocks(matrix, rows, stored, dtype, source, id2token):
    """(first id, tensor of ``dtype``) blocks of 65,536 aligned rows, each read in file order from the (memory-mapped)
    matrix; a NaN/inf row raises :class:`FeatureFileError`."""
    for start in range(0, len(rows), 65536):
        part = rows[start : start + 65536]
        block = to_tensor(matrix[np.sort(part)], stored, dtype)[np.argsort(np.argsort(part))]
        bad = ~torch.isfinite(block).all(dim=1)
        if bad.any():
            examples = [id2token[1 + start + i] for i in torch.nonzero(bad).view(-1)[:5].tolist()]
            raise FeatureFileError(f"feature file '{source}' has NaN/inf rows for {int(bad.sum())} items (first: {examples}): {REBUILD}")
        yield 1 + start, block


def align_features(tokens, matrix, id2token, source, expected_dims=None, dtype="float32", stored="float32"):
    """A (len(id2token), d) tensor of ``dtype`` whose row i is the feature of internal item id i; ``matrix`` is
    the file's (maybe memory-mapped) matrix in its ``stored`` dtype, read 65,536 rows at a time. Row 0 (RecBole's
    ``[PAD]``) is zeros."""
    check_dtype(dtype)
    id2token = [str(t) for t in id2token]
    rows = aligned_rows(tokens, matrix, id2token, source, expected_dims)
    table = torch.zeros((len(id2token), matrix.shape[1]), dtype=_TORCH_DTYPES[dtype])
    for first, block in aligned_blocks(matrix, rows, stored, dtype, source, id2token):
        table[first : first + len(block)] = block
    return table


def mapped_features(base, tokens, matrix, meta, id2token, cache_dir, expected_dims=None, dtype="float32"):
    """What :func:`align_features` returns, memory-mapped instead of in memory (``feature_mmap: True``): an aligned
    copy ``<dataset>.<name>.aligned-<key>.npy`` (row i = internal item id i, row 0 zeros, in ``dtype``) is written once
    in ``cache_dir``, block by block, and mapped copy-on-write; a row is read from disk when a step first uses it."""
    check_dtype(dtype)
    id2token = [str(t) for t in id2token]
    rows = aligned_rows(tokens, matrix, id2token, base + SUFFIX_MATRIX, expected_dims)
    ids = hashlib.sha1("\0".join(id2token).encode("utf-8")).hexdigest()
    key = hashlib.sha1(json.dumps([feature_key(base, meta), dtype, ids]).encode()).hexdigest()
    path = os.path.join(cache_dir, f"{os.path.basename(base)}.aligned-{key[:12]}{SUFFIX_MATRIX}")
    stored = meta.get("dtype", "float32")

    def build():
        def blocks():
            yield np.zeros((1, matrix.shape[1]), dtype=np.float32)  # row 0: padding
            for _, block in aligned_blocks(matrix, rows, stored, "float32", base + SUFFIX_MATRIX, id2token):
                yield block.numpy()

        os.makedirs(cache_dir, exist_ok=True)
        write_matrix_blockwise(path, len(id2token), matrix.shape[1], blocks(), dtype)

    build_once(path, lambda: os.path.isfile(path), build, "aligned features")
    tensor = torch.from_numpy(np.load(path, mmap_mode="c"))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


class FeatureFileArtifact(Artifact):
    """A feature file ``<dataset>.<name>`` as an :class:`recbole_llm.artifacts.Artifact`: written to the first feature
    folder, found in any of them, sound when :func:`check_feature_file` passes; its key is the metadata's
    ``cache_key``. A built file is named by its key, ``<prefix>-<key>`` (:func:`recbole_llm.artifacts.keyed_name`;
    :meth:`name_for`), so two settings never share a file; the name ``<prefix>`` the files had before is its former
    copy (taken over when it records the same key). A ``name`` of your own is used as it is. Subclasses (extraction,
    SCFT, PCA and whitening companions) define ``settings`` and ``build``."""

    what = "features"
    reuse_line = "reusing up-to-date features {path}.npy (cache key {key})"
    unkeyed = ("data_path", "feature_dir")  # where the files are: the .item file is keyed by its content

    def __init__(self, name=None, prefix=None):
        if (name is None) == (prefix is None):
            raise TypeError("FeatureFileArtifact takes a name of your own or a prefix (the name is then <prefix>-<key>)")
        self.name, self.prefix = name, prefix

    def name_for(self, key):
        """The file's name for ``key``: ``<prefix>-<key>``, or the name of your own."""
        return self.name if self.name is not None else keyed_name(self.prefix, key)

    def feature_name(self, config):
        """The name of the file the current settings of ``config`` build or reuse (nothing is built)."""
        return self.name_for(self.key(self.settings(config)))

    def ensure_name(self, config, force=False):
        """:meth:`ensure`, returning the feature name."""
        return self.name_for(self.ensure(config, force=force).key)

    def path(self, config, settings, key):
        return feature_base(feature_dirs(config)[0], config["dataset"], self.name_for(key))

    def find(self, config, settings, key):
        return find_feature_file(config, self.name_for(key))

    def former(self, config, settings, key):
        if self.name is not None:
            return []
        return [(find_feature_file(config, self.prefix), key)]  # the name it had before the key joined it (2026-12)

    def files(self, path):
        return [path + SUFFIX_MATRIX, path + SUFFIX_META]  # the .json last: a file whose .json exists is complete

    def validate(self, path):
        try:
            meta = load_meta(path)
            check_feature_file(path)
        except FeatureFileError as err:
            raise BrokenArtifact(str(err)) from None
        return meta.get("cache_key")


def recorded_key(config, name):
    """The key feature file ``name`` of ``config``'s dataset records (:func:`feature_key`), or None when there is none."""
    base = find_feature_file(config, name)
    return None if base is None else feature_key(base, load_meta(base))


def check_handed_features(config, names):
    """Each feature file of ``names`` that ``config`` was handed a key for (``artifact_keys``) records that key;
    else one :class:`recbole_llm.artifacts.HandedKeyError` naming the file."""
    for name in names:
        if handed_key(config, name) is not None:
            base = find_feature_file(config, name)
            where = f"{base}{SUFFIX_META}" if base else f"{config['dataset']}.{name}"
            check_handed_key(config, name, recorded_key(config, name), where, "feature file")
