"""Item embeddings on a Ray cluster: Ray Data ``map_batches`` over a pool of actors, one LLM per actor.

Used by :func:`recbole_llm.llm.extract.ensure_features` when ``llm_ray: True`` (``python -m recbole_llm.features
--ray``); the file it writes is the one the single-process path writes (same name, cache key, format), so
every model attaches it as usual. The driver splits the prompts into chunks of ``chunk_size`` (in input order);
each chunk is sorted by length, handed to Ray Data in blocks of ``llm_ray_block_size`` prompts, and every actor
embeds a block with :func:`embed_texts` (token-length-sorted batches of ``llm_batch_size`` inside the block). A
finished chunk is saved atomically under the chunk folder, so a rerun resumes after the last finished chunk,
as the single-process path does. PCA / whitening run afterwards on the gathered table (in the driver).

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
    """float32 (len(texts), hidden_size) embeddings in input order, computed by ``num_workers`` Ray actors."""
    from tqdm.auto import tqdm

    init_ray(address, num_workers)
    import ray.data

    texts = [str(t) for t in texts]
    out = np.zeros((len(texts), hidden_size), dtype=np.float32)
    device = "cuda" if gpus_per_worker else "cpu"
    constructor = {"llm_path": llm_path, "pooling": pooling, "max_length": max_length, "normalize": normalize,
                   "batch_size": batch_size, "device": device}
    progress = tqdm(total=len(texts), desc="embed items (ray)", unit="item", disable=not show_progress)
    for chunk_start in range(0, len(texts), chunk_size):
        rows = np.arange(chunk_start, min(chunk_start + chunk_size, len(texts)))
        chunk_file = os.path.join(chunk_dir, f"{chunk_key}-ray-{chunk_start}.npy") if chunk_dir else None
        if chunk_file and os.path.isfile(chunk_file):
            out[rows] = np.load(chunk_file)
            progress.update(len(rows))
            continue
        rows = rows[np.argsort([len(texts[i]) for i in rows], kind="stable")]  # similar lengths share a block
        items = [{"row": int(i), "text": texts[i]} for i in rows]
        dataset = ray.data.from_items(items, parallelism=max(1, -(-len(items) // block_size)))
        embedded = dataset.map_batches(ItemEmbedder, fn_constructor_kwargs=constructor, batch_size=block_size, batch_format="numpy",
                                       compute=ray.data.ActorPoolStrategy(size=int(num_workers)), num_gpus=gpus_per_worker or None)
        done = 0
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            out[batch["row"]] = batch["embedding"]
            done += len(batch["row"])
            progress.update(len(batch["row"]))
        if done != len(rows):
            raise RuntimeError(f"Ray extraction returned {done} of {len(rows)} rows of chunk {chunk_start}")
        if chunk_file:
            os.makedirs(chunk_dir, exist_ok=True)
            with atomic_open(chunk_file, "wb") as handle:
                np.save(handle, out[np.sort(rows)])
    progress.close()
    return out
