"""Similar users for LLM-ESR's retrieval-augmented self-distillation, cached as an artifact.

A user's LLM vector is the mean of the (un-whitened) LLM features of the items of its whole *training*
sequence (the last MAX_ITEM_LIST_LENGTH of them); its K most similar users are the others with the highest
cosine of those vectors. The official code embeds each user's history text with the LLM in a notebook, over the
whole sequence (test item included); here no LLM runs and only training interactions count.

``llmesr_similar_users: auto`` computes them once and caches
``<feature dir>/<dataset>.simusers-<key>.pth`` = {"user_tokens": [...], "neighbors": LongTensor (U, K) of rows of
user_tokens, "k": K, "cache_key": ...}, a :class:`recbole_llm.artifacts.Artifact` (:class:`SimilarUsers`): the key
hashes the dataset files, the keys that shape the training sequences (``recbole_llm.model.teacher.SEQUENCE_KEYS``,
the cold-start items), the feature file's key and K, so changed data rebuild it, and a file
that does not open as one is rebuilt. ``llmesr_similar_users: <path>`` takes a file in that format. Rows are matched to
the dataset by user token; a file that lacks users of the dataset is rejected with an error naming it.
"""

import os
from logging import getLogger

import torch
import torch.nn.functional as F

from recbole_llm.artifacts import Artifact, BrokenArtifact
from recbole_llm.errors import DataFileError, UnsafeFileError, UserError
from recbole_llm.fileio import atomic_torch_save, load_plain
from recbole_llm.llm import features as feature_io
from recbole_llm.data.cold import cold_settings_key
from recbole_llm.model.teacher import SEQUENCE_KEYS, dataset_stamp

SPLIT_KEYS = SEQUENCE_KEYS  # the users' training sequences are what it is computed from


class SimilarUsersError(UserError, ValueError):
    """A similar-user file that does not fit the dataset."""


def nearest_users(user_vectors, valid, k, chunk=2048):
    """(U, k) indices of each user's k most cosine-similar other valid users (row i never lists i).

    ``valid`` (U,) marks users with a training sequence; invalid users neither get nor are neighbours (their
    rows repeat index 0, the padding user). Fewer than k valid others: the rest repeat the best one.
    """
    vectors = F.normalize(user_vectors.float(), dim=-1)
    n = vectors.size(0)
    k_eff = max(1, min(int(k), int(valid.sum()) - 1))
    out = torch.zeros(n, int(k), dtype=torch.long)
    for start in range(0, n, chunk):
        sims = vectors[start : start + chunk] @ vectors.t()
        sims[:, ~valid] = -float("inf")
        rows = torch.arange(start, min(start + chunk, n))
        sims[torch.arange(len(rows)), rows] = -float("inf")
        top = sims.topk(k_eff, dim=1).indices
        if k_eff < k:
            top = torch.cat([top, top[:, :1].expand(-1, int(k) - k_eff)], dim=1)
        out[start : start + chunk] = top
    out[~valid] = 0
    return out


def user_llm_vectors(features, seqs, lens):
    """(U, d) mean LLM feature of every user's training items (zeros for users without any)."""
    mask = (torch.arange(seqs.size(1)).unsqueeze(0) < lens.unsqueeze(1)).float()
    summed = (features.float()[seqs] * mask.unsqueeze(-1)).sum(1)
    return summed / mask.sum(1, keepdim=True).clamp(min=1.0)


class SimilarUsers(Artifact):
    """The cached similar users of ``dataset`` for feature file ``feature_name`` and ``k`` neighbours (module docstring);
    ``features``, ``seqs`` and ``lens`` are what it is built from."""

    what = "the similar users"
    reuse_line = None  # logged only: every model build (each DDP process) reads it
    unkeyed = ("data_path", "feature_dir")  # the dataset's files are keyed by their content

    def __init__(self, feature_name, k, dataset=None, features=None, seqs=None, lens=None):
        self.feature_name, self.k = feature_name, int(k)
        self.dataset, self.features, self.seqs, self.lens = dataset, features, seqs, lens

    def settings(self, config):
        # the feature file by its key (its content), not its name
        feature_key = feature_io.recorded_key(config, self.feature_name)
        settings = {
            "dataset": config["dataset"],
            "files": dataset_stamp(config),
            "split": {key: config[key] for key in SPLIT_KEYS if config[key] is not None},
            "feature": feature_key,
            "k": self.k,
        }
        if cold_settings_key(config):
            settings["cold"] = cold_settings_key(config)
        return settings

    def path(self, config, settings, key):
        return os.path.join(feature_io.feature_dirs(config)[0], f"{config['dataset']}.simusers-{key}.pth")

    def validate(self, path):
        try:
            artifact = load_plain(path, "similar-user file", "delete it, or set llmesr_similar_users: auto")
        except UnsafeFileError:
            raise
        except DataFileError as err:
            raise BrokenArtifact(str(err)) from None
        neighbors = artifact.get("neighbors")
        if not isinstance(artifact.get("user_tokens"), list) or not isinstance(neighbors, torch.Tensor) or neighbors.dim() != 2:
            raise BrokenArtifact("it holds no user_tokens list and 2-D neighbors tensor")
        return artifact.get("cache_key")

    def build(self, config, settings, key, path):
        artifact = build_similar_users(self.dataset, self.features, self.seqs, self.lens, self.k)
        atomic_torch_save(dict(artifact, cache_key=key), path)
        getLogger().info(f"similar users: wrote {path}")


def similar_users_path(config, feature_name, k):
    """Where the cached similar users of ``config`` for ``feature_name`` and ``k`` live (their key: :class:`SimilarUsers`)."""
    artifact = SimilarUsers(feature_name, k)
    settings = artifact.settings(config)
    return artifact.path(config, settings, artifact.key(settings))


def build_similar_users(dataset, features, seqs, lens, k):
    """The artifact dict for ``dataset`` (its user tokens, in internal-id order)."""
    valid = lens > 0
    neighbors = nearest_users(user_llm_vectors(features, seqs, lens), valid, k)
    return {
        "user_tokens": [str(t) for t in dataset.field2id_token[dataset.uid_field]],
        "neighbors": neighbors,
        "k": int(k),
    }


def load_similar_users(path, dataset, lens, k):
    """(U, k) internal user ids of the similar users of every internal user id of ``dataset``."""
    not_one = (f"similar-user file '{path}' is not one (a torch file of user_tokens and a 2-D neighbors tensor, read with "
               "weights_only=True, so nothing in it runs): delete it, or set llmesr_similar_users: auto")
    try:
        artifact = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises UnpicklingError, KeyError, RuntimeError, ... for what is not one)
        raise SimilarUsersError(f"{not_one} ({type(err).__name__})") from None
    if (not isinstance(artifact, dict) or "user_tokens" not in artifact or not isinstance(artifact.get("neighbors"), torch.Tensor)
            or artifact["neighbors"].dim() != 2):
        raise SimilarUsersError(not_one)
    tokens, neighbors = [str(t) for t in artifact["user_tokens"]], artifact["neighbors"]
    if neighbors.size(1) < k:
        raise SimilarUsersError(f"similar-user file '{path}' has {neighbors.size(1)} neighbours per user, the config asks for {k}")
    index = {token: row for row, token in enumerate(tokens)}
    ours = [str(t) for t in dataset.field2id_token[dataset.uid_field]]
    needed = [t for uid, t in enumerate(ours) if uid > 0 and lens[uid] > 0]
    missing = [t for t in needed if t not in index]
    if missing:
        raise SimilarUsersError(
            f"similar-user file '{path}' lacks {len(missing)} users of dataset '{dataset.dataset_name}' (first: "
            f"{missing[:5]}): it was built for other data; delete it, or set llmesr_similar_users: auto"
        )
    ours_index = {token: uid for uid, token in enumerate(ours)}
    to_ours = torch.tensor([ours_index.get(t, 0) for t in tokens], dtype=torch.long)
    rows = torch.tensor([index.get(t, 0) for t in ours], dtype=torch.long)
    result = to_ours[neighbors[rows, :k]]
    result[lens == 0] = 0
    return result


def ensure_similar_users(config, dataset, features, feature_name, seqs, lens, k):
    """(U, k) similar internal user ids for ``dataset``: from ``llmesr_similar_users`` (a path), or the cached
    artifact of this data and feature file, built (once, under a lock) when missing."""
    source = config["llmesr_similar_users"]
    if source not in (None, "auto"):
        if not os.path.isfile(source):
            raise SimilarUsersError(f"llmesr_similar_users '{source}' does not exist: give a file or use auto")
        return load_similar_users(source, dataset, lens, k)
    path = SimilarUsers(feature_name, k, dataset, features, seqs, lens).ensure(config).path
    return load_similar_users(path, dataset, lens, k)
