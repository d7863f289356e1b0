"""Item embeddings on a Ray cluster: Ray Data ``map_batches`` over a pool of actors, one LLM per actor.

Used by :func:`recbole_llm.llm.extract.ensure_features` when ``llm_ray: True`` (``python -m recbole_llm.features
--ray``); the file it writes is the one the single-process path writes (same name, cache key, format), so
every model attaches it as usual. The driver splits the prompts into chunks of ``chunk_size`` (in input order);
the chunks still to do are sorted by length each and handed to one actor pool in blocks of ``llm_ray_block_size``
prompts, and every actor embeds a block with :func:`embed_texts` (token-length-sorted batches of ``llm_batch_size``
inside the block). A chunk is saved atomically under the chunk folder when its last row is back, so a rerun resumes
with the chunks not finished, as the single-process path does. PCA / whitening run afterwards on the gathered table (in the driver).

Keys: ``llm_ray_address`` (null = a local Ray started here; ``auto`` = the running cluster; ``ray://host:10001``
= a remote one through Ray Client), ``llm_ray_workers`` (actors), ``llm_ray_gpus_per_worker`` (0 on CPU),
``llm_ray_block_size``. Every worker must be able to import recbole_llm and read ``llm_path`` (shared storage
or the same path on every node); the driver writes the feature file.
"""

import os

import numpy as np

from recbole_llm.fileio import atomic_open


class ItemEmbedder:
    """The Ray Data actor: loads the LLM once, embeds the ``text`` column of each block it is given."""

    def __init__(self, llm_path, pooling, max_length, normalize, batch_size, device):
        import torch

        from recbole_llm.llm.embed import load_llm

        if device == "cuda" and not torch.cuda.is_available():
            device = "cpu"
        self.model, self.tokenizer = load_llm(llm_path, device=device)
        self.options = {"pooling": pooling, "max_length": max_length, "normalize": normalize, "batch_size": batch_size,
                        "device": device, "show_progress": False}

    def __call__(self, batch):
        from recbole_llm.llm.embed import embed_texts

        vectors = embed_texts([str(t) for t in batch["text"]], self.model, self.tokenizer, **self.options)
        return {"row": np.asarray(batch["row"], dtype=np.int64), "embedding": vectors}


def init_ray(address, num_workers):
    """Connect to ``address`` (auto, ray://...), or start a local Ray with a CPU per worker; idempotent."""
    import ray

    from recbole_llm.compat import import_ray_data

    import_ray_data()
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    else:
        ray.init(num_cpus=max(int(num_workers), 1), include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)


def embed_texts_ray(texts, llm_path, hidden_size, pooling="mean", max_length=256, normalize=False, batch_size=64, num_workers=2,
                    gpus_per_worker=0, address=None, block_size=256, chunk_dir=None, chunk_key=None, chunk_size=20000,
                    show_progress=True):
    """float32 (len(texts), hidden_size) embeddings in input order, computed by ``num_workers`` Ray actors (one pool,
    each actor loading the LLM once, for every chunk still to do; a chunk is saved as soon as its last row is back)."""
    from tqdm.auto import tqdm

    init_ray(address, num_workers)
    import ray.data

    texts = [str(t) for t in texts]
    out = np.zeros((len(texts), hidden_size), dtype=np.float32)
    progress = tqdm(total=len(texts), desc="embed items (ray)", unit="item", disable=not show_progress)
    remaining, order = {}, []
    for start in range(0, len(texts), chunk_size):
        rows = np.arange(start, min(start + chunk_size, len(texts)))
        chunk_file = chunk_path(chunk_dir, chunk_key, start)
        if chunk_file and os.path.isfile(chunk_file):
            out[rows] = np.load(chunk_file)
            progress.update(len(rows))
            continue
        remaining[start] = len(rows)
        order.append(rows[np.argsort([len(texts[i]) for i in rows], kind="stable")])  # similar lengths share a block
    if order:
        items = [{"row": int(i), "text": texts[i]} for i in np.concatenate(order)]
        constructor = {"llm_path": llm_path, "pooling": pooling, "max_length": max_length, "normalize": normalize,
                       "batch_size": batch_size, "device": "cuda" if gpus_per_worker else "cpu"}
        dataset = ray.data.from_items(items, parallelism=max(1, -(-len(items) // block_size)))
        embedded = dataset.map_batches(ItemEmbedder, fn_constructor_kwargs=constructor, batch_size=block_size, batch_format="numpy",
                                       compute=ray.data.ActorPoolStrategy(size=int(num_workers)), num_gpus=gpus_per_worker or None)
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            out[batch["row"]] = batch["embedding"]
            progress.update(len(batch["row"]))
            starts, counts = np.unique(batch["row"] // chunk_size * chunk_size, return_counts=True)
            for start, count in zip(starts.tolist(), counts.tolist()):
                remaining[start] -= count
                if remaining[start] == 0 and chunk_dir:
                    save_chunk(chunk_path(chunk_dir, chunk_key, start), out[start : start + chunk_size])
    progress.close()
    missing = {start: left for start, left in remaining.items() if left}
    if missing:
        raise RuntimeError(f"Ray extraction returned too few rows for chunks {missing}")
    return out


def chunk_path(chunk_dir, chunk_key, start):
    return os.path.join(chunk_dir, f"{chunk_key}-ray-{start}.npy") if chunk_dir else None


def save_chunk(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_open(path, "wb") as handle:
        np.save(handle, rows)
