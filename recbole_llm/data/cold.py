"""Cold-start items: a share of the catalogue that training never sees (``cold_item_ratio`` > 0).

Config keys (properties/overall.yaml):
    cold_item_ratio (float, 0.0 = off): the share of items (of those with interactions) that are cold.
    cold_item_selection: ``random`` (seeded) or ``newest`` (the items whose first interaction is the latest;
        needs a ``TIME_FIELD`` that is a real time).
    cold_item_seed (int | null): seed of ``random``; null = the run's ``seed``.

With the protocol on, every interaction with a cold item is removed from the training rows (inputs and
targets) and from every input history, validation and test included; the leave-one-out validation and test
*targets* are kept, so the users whose target is cold form the ``cold`` group of the grouped metrics
(``ndcg_cold@10``, ...). Cold items stay in the item table and are candidates at evaluation (full ranking
ranks every item; uni100 samples negatives from all items). No training loss uses them as negatives either
(:func:`exclude_cold_items_from_loss`: full-softmax CE masked by item id, samplers without them, the one-negative
losses refused): a model meets a cold item first at evaluation, as a new item that arrives after training.

The history of every row is exact: the non-cold items before its target, the last ``MAX_ITEM_LIST_LENGTH``
of them (a cold validation target is dropped from its user's test history, which is then the validation
row's history). A row left with an empty history is dropped (its user had only cold items before it).
"""

from logging import getLogger

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from torch import nn

from recbole_llm.compat import replace_loss_fct
from recbole_llm.errors import UserError

SELECTIONS = ("random", "newest")
_LS_EVAL_ROWS = {"valid_and_test": 2, "valid_only": 1, "test_only": 1}


class ColdItemError(UserError, ValueError):
    """A cold-start setting that cannot work with this config or dataset (one line, names the key)."""


def cold_item_settings(config):
    """(ratio, selection, seed) of the protocol, validated; ratio 0.0 means off."""
    ratio = config["cold_item_ratio"]
    ratio = 0.0 if ratio is None else ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise ColdItemError(f"config key 'cold_item_ratio' must be a number in [0, 1), got {ratio!r}")
    selection = config["cold_item_selection"] or "random"
    if selection not in SELECTIONS:
        raise ColdItemError(f"config key 'cold_item_selection' must be one of {list(SELECTIONS)}, got {selection!r}")
    seed = config["cold_item_seed"]
    seed = config["seed"] if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ColdItemError(f"config key 'cold_item_seed' must be an integer or null (= seed), got {seed!r}")
    if ratio > 0:
        split = (config["eval_args"] or {}).get("split") or {}
        if config["benchmark_filename"] is not None or list(split) != ["LS"] or split["LS"] not in _LS_EVAL_ROWS:
            raise ColdItemError(
                "config key 'cold_item_ratio' needs the leave-one-out split (eval_args: {split: {LS: valid_and_test}}) "
                f"and no benchmark_filename; got split {split!r}"
            )
    return float(ratio), selection, int(seed)


def cold_settings_key(config):
    """The resolved protocol settings for cache keys of artifacts trained on the training split (teacher, ...)."""
    ratio, selection, seed = cold_item_settings(config)
    return None if ratio == 0 else {"cold_item_ratio": ratio, "cold_item_selection": selection, "cold_item_seed": seed}


def select_cold_items(item_ids, tokens, ratio, selection, seed, first_times=None):
    """Sorted array of the cold internal ids among ``item_ids`` (the items that have interactions).

    ``random``: a seeded permutation of the items ordered by token, so the same seed picks the same items
    whatever the internal id order. ``newest``: the items with the latest ``first_times`` (ties: by token).
    """
    item_ids = np.asarray(item_ids)
    n_cold = int(round(ratio * len(item_ids)))
    if n_cold == 0:
        raise ColdItemError(
            f"config key 'cold_item_ratio' = {ratio} selects no item of the {len(item_ids)} items with interactions: raise it"
        )
    if n_cold >= len(item_ids):
        raise ColdItemError(
            f"config key 'cold_item_ratio' = {ratio} makes all {len(item_ids)} items with interactions cold, so training "
            "has no item: lower it"
        )
    tokens = np.asarray([str(t) for t in tokens])
    if selection == "random":
        by_token = item_ids[np.argsort(tokens, kind="stable")]
        chosen = np.random.default_rng(seed).permutation(len(by_token))[:n_cold]
        return np.sort(by_token[chosen])
    order = np.lexsort((tokens, -np.asarray(first_times, dtype=np.float64)))  # newest first, then token
    return np.sort(item_ids[order[:n_cold]])


class ColdItemsMixin:
    """Put in front of a ``SequentialDataset`` class (recbole_llm.data.dataset.plugin_dataset_class does)."""

    cold_items = None  # (item_num,) bool tensor, True for cold items; set in data_augmentation

    def data_augmentation(self):
        ratio, selection, seed = cold_item_settings(self.config)
        split = self.config["eval_args"]["split"]
        n_eval = _LS_EVAL_ROWS[split["LS"]]
        self._check_field("uid_field", "time_field")
        # the order RecBole's augmentation uses (stable sorts: ties keep the file order)
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        inter = self.inter_feat
        users = inter[self.uid_field].numpy()
        items = inter[self.iid_field].numpy()
        candidates = np.unique(items)
        candidates = candidates[candidates > 0]
        first_times = None
        if selection == "newest":
            times = inter[self.time_field].numpy().astype(np.float64)
            warn_if_positions(users, times, self.time_field, self.dataset_name)
            first = np.full(self.item_num, np.inf)
            np.minimum.at(first, items, times)
            first_times = first[candidates]
        tokens = self.field2id_token[self.iid_field][candidates]
        cold_ids = select_cold_items(candidates, tokens, ratio, selection, seed, first_times)
        cold = np.zeros(self.item_num, dtype=bool)
        cold[cold_ids] = True
        self.cold_items = torch.from_numpy(cold)
        # keep the warm interactions and every user's last n_eval ones (the valid / test targets)
        n = len(users)
        same_next = np.zeros(n, dtype=bool)
        same_next[:-1] = users[1:] == users[:-1]
        eval_position = ~same_next  # the user's last interaction
        if n_eval == 2:
            second = np.zeros(n, dtype=bool)
            second[:-1] = eval_position[1:] & same_next[:-1]
            eval_position |= second
        keep = ~cold[items] | eval_position
        self.inter_feat = inter[torch.from_numpy(keep)]
        super().data_augmentation()
        self._drop_cold_from_histories()
        getLogger().info(
            f"cold items: {len(cold_ids)} of {len(candidates)} ({selection}, seed {seed}); "
            f"{int((~keep).sum())} interactions with them removed from training and histories"
        )

    def _drop_cold_from_histories(self):
        """A kept cold validation target sits last in its user's test history: replace that history by the
        validation row's (the same warm items), or drop the row when it has no validation row."""
        inter = self.inter_feat
        seq = inter[self.item_id_list_field]
        lengths = inter[self.item_list_length_field].long()
        last_item = seq[torch.arange(len(seq)), (lengths - 1).clamp(min=0)]
        bad = self.cold_items[last_item] & (lengths > 0)
        if not bad.any():
            return
        users = inter[self.uid_field]
        rows = torch.nonzero(bad).view(-1)
        has_prev = torch.zeros(len(rows), dtype=torch.bool)
        inner = rows > 0
        has_prev[inner] = users[rows[inner] - 1] == users[rows[inner]]
        fix, drop = rows[has_prev], rows[~has_prev]
        list_fields = [f for f in inter.columns if f.endswith(self.config["LIST_SUFFIX"])]
        for field in list_fields + [self.item_list_length_field]:
            inter[field][fix] = inter[field][fix - 1]
        if len(drop):
            keep = torch.ones(len(inter), dtype=torch.bool)
            keep[drop] = False
            self.inter_feat = inter[keep]

    def build(self):
        datasets = super().build()
        train = datasets[0]
        warm = ~self.cold_items[train.inter_feat[self.iid_field].long()]
        if not warm.all():  # users with too few rows for a valid row: their cold valid target fell into train
            datasets[0] = train.copy(train.inter_feat[warm])
        if len(datasets[0].inter_feat) == 0:
            ratio = self.config["cold_item_ratio"]
            raise ColdItemError(
                f"config key 'cold_item_ratio' = {ratio} leaves no training row ({int(self.cold_items.sum())} of the items "
                f"are cold, and no user of {self.dataset_name} has a warm item with a warm history before it): lower it"
            )
        return datasets


def warn_if_positions(users, times, time_field, dataset):
    """``newest`` on timestamps that are positions in each user's sequence (0, 1, 2, ... per user: the shared datasets')
    picks the items first seen late in someone's history, not new items: warn. ``users`` sorted, times by user."""
    if not len(times) or not np.array_equal(times, np.round(times)):
        return
    starts = np.ones(len(users), dtype=bool)
    starts[1:] = users[1:] != users[:-1]
    position = np.arange(len(users)) - np.maximum.accumulate(np.where(starts, np.arange(len(users)), 0))
    offset = times - position
    if np.all(offset == offset[0]) and offset[0] in (0, 1):
        getLogger().warning(
            f"cold_item_selection: newest orders items by the {time_field} of their first interaction, but {dataset}'s "
            f"{time_field} is each interaction's position in its user's sequence ({int(offset[0])}, {int(offset[0]) + 1}, ...): "
            "newest then picks the items first seen late in some history (ties by token), not new items; use random, "
            "or a real time"
        )


def check_sequential(dataset_class):
    if not issubclass(dataset_class, SequentialDataset):
        raise ColdItemError(
            f"config key 'cold_item_ratio' needs a sequential model; this model's dataset is {dataset_class.__name__}"
        )


def cold_items_of(dataset):
    """The (item_num,) bool cold mask of a dataset (its copies, the splits, keep it), or None when the protocol is off."""
    return getattr(dataset, "cold_items", None)


class ColdMaskedCrossEntropyLoss(nn.CrossEntropyLoss):
    """CrossEntropyLoss whose logits over the item table never score cold items (training never sees them).

    Column i of the class dimension is item i. Logits wider than the item table are fine (the extra columns, a mask
    token, are never cold); narrower ones are refused: which column is which item would be a guess, so the mask is
    never silently skipped. A model that scores only part of the catalogue pads the missing columns first (LEARN's
    catalogue loss pads the padding item's column).
    """

    def __init__(self, cold_items, base):
        if base.label_smoothing:
            raise ColdItemError(
                f"config key 'cold_item_ratio' masks cold items out of the CE loss, but its label_smoothing "
                f"{base.label_smoothing} would spread target mass onto them: use label_smoothing 0"
            )
        super().__init__(weight=base.weight, ignore_index=base.ignore_index, reduction=base.reduction)
        self.register_buffer("cold_items", cold_items.clone(), persistent=False)  # moves with the model

    def forward(self, input, target):
        class_dim = 1 if input.dim() >= 2 else 0  # CrossEntropyLoss's: (N, C, ...) or an unbatched (C,)
        width, n = input.size(class_dim), self.cold_items.numel()
        if width < n:
            raise ColdItemError(
                f"config key 'cold_item_ratio': a CE loss got logits over {width} columns, fewer than the {n} items, so "
                "its cold columns are unknown; score every item (column i = item i) or set cold_item_ratio: 0"
            )
        mask = self.cold_items
        if width > n:  # extra columns (a mask token) are never cold
            mask = torch.nn.functional.pad(mask, (0, width - n))
        shape = [1] * input.dim()
        shape[class_dim] = width
        return super().forward(input.masked_fill(mask.view(shape), torch.finfo(input.dtype).min), target)


ONE_NEGATIVE_LOSSES = ("BPR", "BCE")


def exclude_cold_items_from_loss(model, dataset):
    """Keep the cold items of ``dataset`` out of ``model``'s training loss; no-op when the protocol is off.

    A model's ``negative_sampler`` (sampled softmax, LEARN's random negatives, S3Rec's pre-training negatives) never
    draws them, and a full-softmax ``loss_fct`` (CE: SASRec, GRU4Rec, BERT4Rec, FDSA, S3Rec, UniSRec, the LLM models
    built on them, LEARN's catalogue loss) never scores them. The one-negative losses (``loss_type`` BPR, BCE) draw
    their negatives from the whole catalogue (RecBole's sampler in prefix mode): refused.
    """
    cold = cold_items_of(dataset)
    if cold is None or not bool(cold.any()):
        return False
    loss_type = getattr(model, "loss_type", None)
    if loss_type in ONE_NEGATIVE_LOSSES:
        raise ColdItemError(
            f"config key 'loss_type' is {loss_type}, whose sampled negatives may be cold items, but cold_item_ratio > 0 "
            "keeps them out of training: use loss_type CE or SSM"
        )
    handled = False
    sampler = getattr(model, "negative_sampler", None)
    if sampler is not None:
        sampler.exclude(cold)
        handled = True
    loss_fct = getattr(model, "loss_fct", None)
    if isinstance(loss_fct, nn.CrossEntropyLoss):
        if not isinstance(loss_fct, ColdMaskedCrossEntropyLoss):
            replace_loss_fct(model, ColdMaskedCrossEntropyLoss(cold, loss_fct))
        handled = True
    if handled:
        return True
    getLogger().warning(
        f"cold items: {type(model).__name__} has no full-softmax CE loss_fct and no negative_sampler; its training "
        "negatives may be cold items"
    )
    return False
