"""The official LLM-ESR / LLMEmb evaluation, re-expressed from its documented behaviour (not their code).

Their evaluation (trainers/sequence_trainer.py, utils/utils.py of both repositories), for each user row: the
target and ``test_neg`` = 100 items drawn uniformly from the items outside the user's whole sequence are scored,
the target's rank is its place among the 101 (0 = first), and

- HR@10 / NDCG@10: mean over rows of ``rank < 10`` and ``1 / log2(rank + 2)`` if ``rank < 10``;
- item groups: popularity = number of distinct users of the item over train + valid + *test* (the test item
  counted, a leak); tail = popularity < ``ts_item``; the first row is left out of the group numerators but not
  of their counts (a padding-index guard applied to rows);
- user groups: length = the row's input length (train + valid items for the test rows, at most max_len);
  short = length < ``ts_user``.

Ours (:mod:`recbole_llm.evaluator.longtail`): popularity over training interactions only, every row counted,
length = training items; :func:`matching_user_threshold` gives the threshold that makes both user groups equal.
"""

import numpy as np


def ranks_from_scores(scores):
    """Rank of column 0 (the target) among each row's candidates: how many score strictly higher."""
    scores = np.asarray(scores, dtype=np.float64)
    return (scores[:, 1:] > scores[:, :1]).sum(1)


def ndcg_hit(ranks, k=10):
    ranks = np.asarray(ranks)
    hit = ranks < k
    return np.where(hit, 1.0 / np.log2(ranks + 2), 0.0), hit.astype(np.float64)


def overall(ranks, k=10):
    ndcg, hit = ndcg_hit(ranks, k)
    return {f"ndcg@{k}": float(ndcg.mean()), f"hit@{k}": float(hit.mean())}


def popularity(sequences, n_items, with_test=True):
    """Distinct users per item over whole sequences (official) or training parts (all but the last two)."""
    pop = np.zeros(n_items + 1, dtype=np.int64)
    for seq in sequences:
        pop[np.unique(seq if with_test else seq[:-2])] += 1
    return pop


def item_groups(ranks, targets, pop, threshold, skip_first=True, k=10):
    """Tail / head metrics as the official report computes them (``skip_first``: their first-row guard)."""
    ndcg, hit = ndcg_hit(ranks, k)
    tail = np.asarray(pop)[np.asarray(targets)] < threshold
    counted = np.ones(len(tail), dtype=bool)
    if skip_first:
        counted[0] = False
    out = {}
    for name, rows in (("tail", tail), ("head", ~tail)):
        n = int(rows.sum())
        out[f"ndcg_{name}@{k}"] = float(ndcg[rows & counted].sum() / n) if n else 0.0
        out[f"hit_{name}@{k}"] = float(hit[rows & counted].sum() / n) if n else 0.0
    return out


def user_groups(ranks, lengths, threshold, k=10):
    ndcg, hit = ndcg_hit(ranks, k)
    short = np.asarray(lengths) < threshold
    out = {}
    for name, rows in (("short", short), ("long", ~short)):
        n = int(rows.sum())
        out[f"ndcg_{name}@{k}"] = float(ndcg[rows].sum() / n) if n else 0.0
        out[f"hit_{name}@{k}"] = float(hit[rows].sum() / n) if n else 0.0
    return out


def matching_user_threshold(ours):
    """The official ``ts_user`` whose short group (train + valid items < ts_user) is our short group (training
    items < ``ours``), for users without repeated items and under max_len."""
    return int(ours) + 1


def group_shift(sequences, n_items, threshold):
    """How the test item in the popularity count moves test targets between the groups: {"tail_ours": rows
    whose target is tail by training popularity, "tail_official": by whole-sequence popularity, "moved": rows
    in one and not the other}."""
    targets = np.array([seq[-1] for seq in sequences])
    ours = popularity(sequences, n_items, with_test=False)[targets] < threshold
    theirs = popularity(sequences, n_items, with_test=True)[targets] < threshold
    return {"rows": len(targets), "tail_ours": int(ours.sum()), "tail_official": int(theirs.sum()),
            "moved": int((ours != theirs).sum())}
