"""An approximate nearest-neighbour index of a model's item vectors: ``--index=faiss`` (faiss-cpu, optional).

- **What is indexed**: the item vectors the model scores with (:meth:`recbole_llm.serve.scoring.ModelScorer.item_factors`:
  the exported item table, after the model's scoring transform: LEARN's and UniSRec's are L2-normalised, so the
  inner product is their cosine), with a per-item bias (BERT4Rec's ``output_bias``) as one extra dimension whose
  query coordinate is 1. The index's inner product is then the model's own score.
- **Which index** (``index_type: auto``): exact ``flat`` below 50,000 items, ``ivf`` (4 sqrt(n) lists, flat) above;
  ``hnsw`` (M = 32) by name. Measured (docs/speed.md): on a catalogue of trained item vectors grown to 1M items,
  IVF reached recall@10 0.98 at 19x exact search where HNSW stayed at 0.75 at its deepest search (an
  inner-product graph hides rows behind hubs); on random vectors IVF was the faster of the two too. Its search depth (HNSW ``efSearch``, IVF ``nprobe``) is calibrated at build
  time: the smallest that gives recall@10 >= 0.97 against exact search on up to 1,000 calibration queries (the
  dataset's own users), recorded with the measured recall in the index's ``.json``. When no depth reaches it (an
  inner-product graph can hide rows behind hubs), the index is an exact flat one, said in one line.
- **Where**: beside the checkpoint (``<checkpoint stem>.<type>-<key>.faiss`` + ``.json``; ``--index_dir`` moves it),
  keyed by the checkpoint's content (size and SHA-1), its feature files' keys and the index settings: a changed
  model gets a new index, never a stale one (older indexes of the same checkpoint name are removed). A ``.faiss``
  file is only ever read by ``faiss.read_index`` (FAISS's own binary format, nothing unpickled), and only when its
  ``.json`` records the current key and the file's own content hash: a file swapped in is rebuilt, not read.
  Written atomically, ``.faiss`` first and ``.json`` last, under a build lock.
"""

import glob
import json
import os
import time

import numpy as np

from recbole_llm.serve import ServeError

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
FLAT_BELOW = 50_000
CALIBRATION_TARGET = 0.97
CALIBRATION_QUERIES = 1000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
FORMAT = 2


class AnnIndexError(ServeError):
    """An index that cannot be built, read or used."""


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise AnnIndexError("--index=faiss needs the faiss-cpu package: pip install faiss-cpu (or serve without --index)") from None
    return faiss


def choose_type(n_items, requested="auto"):
    if requested not in INDEX_TYPES:
        raise AnnIndexError(f"--index_type '{requested}' is not one of {list(INDEX_TYPES)}")
    if requested != "auto":
        return requested
    return "flat" if n_items < FLAT_BELOW else "ivf"


def with_bias(vectors, bias):
    """float32 (n, D [+ 1]) rows: the vectors, and the bias as a last column when there is one."""
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if bias is None:
        return vectors
    return np.ascontiguousarray(np.hstack([vectors, np.asarray(bias, dtype=np.float32).reshape(-1, 1)]))


def query_rows(users, has_bias):
    users = np.ascontiguousarray(np.asarray(users, dtype=np.float32))
    return np.ascontiguousarray(np.hstack([users, np.ones((len(users), 1), np.float32)])) if has_bias else users


def exact_topk(vectors, queries, k, batch=256):
    """(scores, ids) of the exact top-k by inner product (numpy; ties by id)."""
    ids = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), batch):
        block = queries[start : start + batch] @ vectors.T
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(block, part, 1)
        order = np.lexsort((part, -values), axis=1)
        ids[start : start + batch] = np.take_along_axis(part, order, 1)
        scores[start : start + batch] = np.take_along_axis(values, order, 1)
    return scores, ids


def recall_at(found, truth):
    """Mean share of each row of ``truth`` found in the same row of ``found``."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, truth)]))


def set_depth(index, kind, depth):
    faiss = import_faiss()
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(depth)
    elif kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(depth)


def build_index(vectors, kind, seed=0):
    """A FAISS inner-product index of ``vectors`` (n, d) float32, not calibrated."""
    faiss = import_faiss()
    n, d = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    elif kind == "ivf":
        nlist = int(min(max(16, round(4 * np.sqrt(n))), max(1, n // 39)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = vectors
        if n > 64 * nlist:
            sample = vectors[np.random.default_rng(seed).choice(n, 64 * nlist, replace=False)]
        index.train(sample)
    else:
        raise AnnIndexError(f"index type '{kind}' is not one of {list(INDEX_TYPES[1:])}")
    for start in range(0, n, 1 << 16):
        index.add(vectors[start : start + (1 << 16)])
    return index


class ItemIndex:
    """A built or loaded FAISS index over ``vectors`` (n, d); :meth:`search` gives rows of ``vectors`` (-1: none) with
    their exact inner products, best first."""

    def __init__(self, index, meta, vectors, path=None):
        self.index, self.meta, self.vectors, self.path = index, meta, vectors, path
        if meta.get("depth"):
            set_depth(index, meta["type"], meta["depth"])

    @property
    def kind(self):
        return self.meta["type"]

    def search(self, queries, k):
        """(scores, rows) of the ``k`` best rows by inner product, best first (rows -1 where the index found fewer)."""
        k = int(min(k, len(self.vectors)))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def calibrate(item_index, queries, k=10, target=CALIBRATION_TARGET):
    """(depth, recall@k): the smallest search depth whose recall@k on ``queries`` against exact search is >= target
    (the largest tried when none is); (None, 1.0) for a flat index."""
    kind, vectors = item_index.kind, item_index.vectors
    if kind == "flat" or not len(queries):
        return None, 1.0
    k = min(k, len(vectors))
    _, truth = exact_topk(vectors, queries, k)
    if kind == "hnsw":
        depths = [16, 32, 64, 128, 256, 512, 1024, 2048]
    else:
        nlist = import_faiss().extract_index_ivf(item_index.index).nlist
        depths = sorted({min(nlist, 2**i) for i in range(0, int(np.log2(max(nlist, 1))) + 2)})
    recall = 0.0
    for depth in depths:
        depth = max(depth, k) if kind == "hnsw" else depth
        set_depth(item_index.index, kind, depth)
        recall = recall_at(item_index.search(queries, k)[1], truth)
        if recall >= target:
            break
    item_index.meta.update(depth=depth, recall_at_10=recall)
    return depth, recall


def index_key(model_file, feature_keys, kind, dims, n, vectors=None):
    """The key of an index: the checkpoint's content, its feature files' keys, the settings, and the indexed vectors
    themselves (a re-sorted or regenerated dataset renumbers the items of the same checkpoint)."""
    import hashlib

    from recbole_llm.artifacts import artifact_key
    from recbole_llm.fileio import file_fingerprint

    content = hashlib.sha1(np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()[:16] if vectors is not None else None
    return artifact_key({"checkpoint": file_fingerprint(model_file), "features": dict(sorted((feature_keys or {}).items())),
                         "type": kind, "dims": int(dims), "items": int(n), "vectors": content, "hnsw_m": HNSW_M,
                         "hnsw_ef_construction": HNSW_EF_CONSTRUCTION, "target": CALIBRATION_TARGET, "format": FORMAT})


def index_paths(model_file, folder, kind, key):
    stem = os.path.splitext(os.path.basename(model_file))[0]
    base = os.path.join(folder or os.path.dirname(os.path.abspath(model_file)), f"{stem}.{kind}-{key}")
    return base + ".faiss", base + ".json"


def _load(path, meta_path, key, vectors):
    """The index at ``path`` when its .json records ``key`` and the file's content hash, else None."""
    from recbole_llm.fileio import file_fingerprint

    if not (os.path.isfile(path) and os.path.isfile(meta_path)):
        return None
    try:
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("index_file") != file_fingerprint(path):
        return None
    try:
        index = import_faiss().read_index(path)
    except RuntimeError:
        return None
    if index.ntotal != len(vectors) or index.d != vectors.shape[1]:
        return None
    return ItemIndex(index, meta, vectors, path)


def ensure_index(vectors, model_file, feature_keys=None, requested="auto", folder=None, calibration_queries=None, log=print):
    """The index of ``vectors`` (n, d) for the checkpoint ``model_file``: reused when an up-to-date one is on disk,
    else built, calibrated on ``calibration_queries`` and saved (atomically, under a build lock)."""
    from recbole_llm.fileio import atomic_open, build_lock, file_fingerprint

    faiss = import_faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dims = vectors.shape
    kind = choose_type(n, requested)
    key = index_key(model_file, feature_keys, kind, dims, n, vectors)
    path, meta_path = index_paths(model_file, folder, kind, key)
    folder = os.path.dirname(path)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise AnnIndexError(f"--index_dir '{folder}' is a file: pass a folder for the index")
    found = _load(path, meta_path, key, vectors)
    if found is not None:
        depth = f" at depth {found.meta['depth']}" if found.meta.get("depth") else ""
        log(f"reusing the {kind} index {path} (recall@10 {found.meta['recall_at_10']:.3f}{depth})")
        return found
    try:
        with build_lock(path, "the item index"):
            found = _load(path, meta_path, key, vectors)
            if found is not None:
                return found
            start = time.perf_counter()
            built = ItemIndex(build_index(vectors, kind), {"type": kind}, vectors, path)
            seconds = time.perf_counter() - start
            queries = calibration_queries if calibration_queries is not None else np.zeros((0, dims), np.float32)
            queries = np.ascontiguousarray(queries[:CALIBRATION_QUERIES], dtype=np.float32)
            depth, recall = calibrate(built, queries)
            if recall < CALIBRATION_TARGET:  # e.g. an inner-product graph whose hubs hide some rows: exact search instead
                log(f"the {kind} index reaches recall@10 {recall:.3f} at most (depth {depth}) against exact search, below "
                    f"{CALIBRATION_TARGET}: using exact (flat) search")
                built = ItemIndex(build_index(vectors, "flat"), {"type": "flat"}, vectors, path)
                depth, recall = None, 1.0
            with atomic_open(path, "wb") as handle:
                handle.write(faiss.serialize_index(built.index).tobytes())
            built.meta = {"key": key, "type": built.kind, "requested": kind, "depth": depth, "recall_at_10": recall, "calibration_queries": len(queries),
                          "items": n, "dims": dims, "build_seconds": round(seconds, 2), "faiss": faiss.__version__,
                          "model_file": os.path.abspath(model_file), "index_file": file_fingerprint(path),
                          "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            with atomic_open(meta_path, "w", encoding="utf-8") as handle:
                json.dump(built.meta, handle, indent=1)
    except OSError as err:  # no permission, a path under a file, a full disk
        raise AnnIndexError(f"cannot write the index into '{folder}' ({err.strerror or type(err).__name__}): pass "
                            "--index_dir=A_WRITABLE_FOLDER") from None
    remove_stale(model_file, folder, kind, keep=path)
    log(f"built the {kind} index of {n} items x {dims} dims in {seconds:.1f} s: {path}"
        + (f" (recall@10 {recall:.3f} against exact search at depth {depth}, {len(queries)} queries)" if depth else ""))
    return built


def remove_stale(model_file, folder, kind, keep):
    """Remove the indexes of the same checkpoint name and type built for another key (a retrained model)."""
    stem = os.path.splitext(os.path.basename(model_file))[0]
    for old in glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(stem)}.{kind}-*.faiss")):
        if old != keep and len(os.path.basename(old)) == len(os.path.basename(keep)):
            for file in (old, old[: -len(".faiss")] + ".json"):
                if os.path.isfile(file):
                    os.remove(file)
