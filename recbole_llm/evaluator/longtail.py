"""Long-tail grouped metrics, registered in RecBole's metric registry.

For every eval row (one user, one target item in leave-one-out) RecBole's ``rec.topk`` holds the hit
vector of the top-k list. These metrics average HR / NDCG / Recall over the rows whose *target item*
is a head or a tail item, or whose *user history* is short or long:

    hit_head@10, hit_tail@10, ndcg_head@10, ndcg_tail@10, recall_head@10, recall_tail@10,
    hit_short@10, hit_long@10, ndcg_short@10, ndcg_long@10, recall_short@10, recall_long@10
    hit_cold@10, hit_warm@10, ndcg_cold@10, ndcg_warm@10, recall_cold@10, recall_warm@10

Cold / warm: the target item is (is not) one of the cold-start items that training never saw
(``cold_item_ratio`` > 0, recbole_llm/data/cold.py); the cold and warm metrics also report
``targets_cold`` / ``targets_warm``, the number of rows in the group. With the protocol off they are not
reported (no cold items: the groups are not defined). With it on, head and tail split the warm items only: a cold
item is neither, and the tail quota (``tail_ratio``) is a share of the warm items (:func:`tail_mask`), so the
head / tail rows are the warm rows.

A group without rows is not reported (its metrics are absent from the result, with a warning), never 0.0.

Popularity of an item = number of distinct users that interacted with it in the *training*
interactions (the official LLMEmb code also counts the test item: leakage, not copied). History length
of a user = number of distinct items in the user's training interactions.

Config keys:
    tail_threshold (int|None): items with popularity < tail_threshold are tail (LLMEmb: beauty 4, yelp 13).
    tail_ratio (float): used when tail_threshold is None: the least popular ``tail_ratio`` share of
        items (ties broken by item id) are tail. Default 0.8. Under the cold-start protocol: of the warm items.
    short_history_threshold (int|None): users with history length < threshold are short
        (LLMEmb: beauty 9, yelp 12). None: the median history length of the training users.
"""

from logging import getLogger

import numpy as np
import torch
from recbole.evaluator.base_metric import TopkMetric
from recbole.evaluator.metrics import NDCG, Hit, Recall
from recbole.utils import EvaluatorType

from recbole_llm.compat import register_recbole_metrics
from recbole_llm.errors import ConfigError

# keys of the DataStruct that LongTailCollector fills
TARGET_KEY = "rec.lt_target_item"  # (n_rows,) target item id of each eval row
USER_KEY = "rec.lt_user"  # (n_rows,) user id of each eval row
ITEM_POP_KEY = "data.lt_item_pop"  # (n_items,) training popularity (distinct users)
USER_LEN_KEY = "data.lt_user_len"  # (n_users,) training history length
COLD_KEY = "data.lt_cold_items"  # (n_items,) bool: cold-start items (only set with the protocol on)
ROW_KEYS = (TARGET_KEY, USER_KEY)
_BASE_METRICS = {"hit": Hit, "ndcg": NDCG, "recall": Recall}


def training_statistics(dataset):
    """(item_pop, user_len) from the training interactions of a RecBole dataset.

    Works for plain datasets (one row per interaction) and sequential ones, whose rows hold a target
    item plus the history list: the union of targets and histories is the set of training
    interactions. Each (user, item) pair is counted once.
    """
    dataset = getattr(dataset, "statistics_source", dataset)  # all_positions train sets point at the full split
    uid, iid = dataset.uid_field, dataset.iid_field
    n_items, n_users = dataset.item_num, dataset.user_num
    inter = dataset.inter_feat
    users = inter[uid].long()
    items = inter[iid].long()
    pairs = [users * n_items + items]
    list_field = getattr(dataset, "item_id_list_field", None)
    if list_field is not None and list_field in inter:
        hist = inter[list_field].long()
        mask = hist > 0
        pairs.append((users.unsqueeze(1).expand_as(hist) * n_items + hist)[mask])
    pairs = torch.unique(torch.cat(pairs))
    pair_users, pair_items = pairs // n_items, pairs % n_items
    item_pop = torch.bincount(pair_items, minlength=n_items)
    user_len = torch.bincount(pair_users, minlength=n_users)
    item_pop[0] = 0
    user_len[0] = 0
    return item_pop, user_len


def tail_mask(item_pop, config, cold=None):
    """Boolean (n_items,) mask of tail items (index 0, the padding id, is never tail).

    ``cold`` (the cold-start protocol's (n_items,) mask, None when it is off): cold items are a group of their own,
    neither tail nor head, and ``tail_ratio`` is a share of the other items. (Counted with them, the cold items, all
    of popularity 0, would take that many places of the quota and move as many warm tail items to head.)
    """
    item_pop = torch.as_tensor(item_pop)
    ranked = torch.ones(len(item_pop), dtype=torch.bool)
    ranked[0] = False
    if cold is not None:
        ranked &= ~torch.as_tensor(cold, dtype=torch.bool)
    threshold = config["tail_threshold"]
    if threshold is not None:
        return (item_pop < float(threshold)) & ranked
    ratio = config["tail_ratio"]
    ratio = 0.8 if ratio is None else float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"config key 'tail_ratio' must be in [0, 1], got {ratio}")
    ids = torch.nonzero(ranked).view(-1).numpy()
    order = np.lexsort((ids, item_pop.numpy()[ids]))  # by popularity, then id
    mask = torch.zeros(len(item_pop), dtype=torch.bool)
    mask[torch.as_tensor(ids[order[: int(round(ratio * len(ids)))]])] = True
    return mask


def head_mask(item_pop, config, cold=None):
    """Boolean (n_items,) mask of head items: the items that are not tail, neither the padding id nor cold."""
    head = ~tail_mask(item_pop, config, cold)
    head[0] = False
    if cold is not None:
        head &= ~torch.as_tensor(cold, dtype=torch.bool)
    return head


def short_mask(user_len, config):
    """Boolean (n_users,) mask of users with a short training history."""
    user_len = torch.as_tensor(user_len)
    threshold = config["short_history_threshold"]
    if threshold is None:
        real = user_len[1:]
        real = real[real > 0]
        threshold = float(real.float().median()) if len(real) else 0.0
    return user_len < float(threshold)


class _GroupedTopkMetric(TopkMetric):
    """Average of a per-row top-k metric over the rows of one group (head/tail, short/long)."""

    metric_type = EvaluatorType.RANKING
    metric_need = ["rec.topk", TARGET_KEY, USER_KEY, ITEM_POP_KEY, USER_LEN_KEY, COLD_KEY]
    base = None  # "hit" | "ndcg" | "recall"
    group = None  # "head" | "tail" | "short" | "long" | "cold" | "warm"

    def __init__(self, config):
        super().__init__(config)
        self.config = config
        self._base_metric = _BASE_METRICS[self.base](config)

    def row_mask(self, dataobject):
        if ITEM_POP_KEY not in dataobject:
            raise RuntimeError(
                "long-tail metrics need the training statistics: the trainer collects them in fit(); "
                "when evaluating without fit, call trainer.eval_collector.data_collect(train_data) first"
            )
        cold = torch.as_tensor(dataobject.get(COLD_KEY)).bool() if COLD_KEY in dataobject else None
        targets = dataobject.get(TARGET_KEY).long()
        if self.group in ("cold", "warm"):
            if cold is None:
                return None
            return cold[targets] if self.group == "cold" else ~cold[targets]
        if self.group in ("head", "tail"):
            group = tail_mask if self.group == "tail" else head_mask
            return group(dataobject.get(ITEM_POP_KEY), self.config, cold)[targets]
        short = short_mask(dataobject.get(USER_LEN_KEY), self.config)
        rows = short[dataobject.get(USER_KEY).long()]
        return rows if self.group == "short" else ~rows

    def metric_info(self, pos_index, pos_len):
        # RecBole's own Hit / NDCG / Recall compute the per-row values
        if self.base == "hit":
            return self._base_metric.metric_info(pos_index)
        return self._base_metric.metric_info(pos_index, pos_len)

    def calculate_metric(self, dataobject):
        name = f"{self.base}_{self.group}"
        mask = self.row_mask(dataobject)
        if mask is None:  # cold / warm without the cold-start protocol
            _warn_once(f"{name}: not reported, the cold-start protocol is off (set cold_item_ratio > 0)")
            return {}
        mask = mask.numpy()
        if not mask.any():
            _warn_once(f"{name}: not reported, no evaluation row has a {self.group} target")
            return {}
        pos_index, pos_len = self.used_info(dataobject)
        result = self.metric_info(pos_index[mask], pos_len[mask])
        result = self.topk_result(name, result)
        if self.group in ("cold", "warm"):
            result[f"targets_{self.group}"] = int(mask.sum())
        return result


_WARNED = set()


def _warn_once(message):
    if message not in _WARNED:
        _WARNED.add(message)
        getLogger().warning(message)


# the grouped metrics, one named class each (RecBole's registry maps the lower-case metric name to its class)
class HIT_head(_GroupedTopkMetric):
    """Hit@k over the rows whose target item is head."""

    base, group = "hit", "head"


class HIT_tail(_GroupedTopkMetric):
    """Hit@k over the rows whose target item is tail."""

    base, group = "hit", "tail"


class HIT_short(_GroupedTopkMetric):
    """Hit@k over the rows whose user history is short."""

    base, group = "hit", "short"


class HIT_long(_GroupedTopkMetric):
    """Hit@k over the rows whose user history is long."""

    base, group = "hit", "long"


class HIT_cold(_GroupedTopkMetric):
    """Hit@k over the rows whose target item is cold."""

    base, group = "hit", "cold"


class HIT_warm(_GroupedTopkMetric):
    """Hit@k over the rows whose target item is warm."""

    base, group = "hit", "warm"


class NDCG_head(_GroupedTopkMetric):
    """NDCG@k over the rows whose target item is head."""

    base, group = "ndcg", "head"


class NDCG_tail(_GroupedTopkMetric):
    """NDCG@k over the rows whose target item is tail."""

    base, group = "ndcg", "tail"


class NDCG_short(_GroupedTopkMetric):
    """NDCG@k over the rows whose user history is short."""

    base, group = "ndcg", "short"


class NDCG_long(_GroupedTopkMetric):
    """NDCG@k over the rows whose user history is long."""

    base, group = "ndcg", "long"


class NDCG_cold(_GroupedTopkMetric):
    """NDCG@k over the rows whose target item is cold."""

    base, group = "ndcg", "cold"


class NDCG_warm(_GroupedTopkMetric):
    """NDCG@k over the rows whose target item is warm."""

    base, group = "ndcg", "warm"


class Recall_head(_GroupedTopkMetric):
    """Recall@k over the rows whose target item is head."""

    base, group = "recall", "head"


class Recall_tail(_GroupedTopkMetric):
    """Recall@k over the rows whose target item is tail."""

    base, group = "recall", "tail"


class Recall_short(_GroupedTopkMetric):
    """Recall@k over the rows whose user history is short."""

    base, group = "recall", "short"


class Recall_long(_GroupedTopkMetric):
    """Recall@k over the rows whose user history is long."""

    base, group = "recall", "long"


class Recall_cold(_GroupedTopkMetric):
    """Recall@k over the rows whose target item is cold."""

    base, group = "recall", "cold"


class Recall_warm(_GroupedTopkMetric):
    """Recall@k over the rows whose target item is warm."""

    base, group = "recall", "warm"


GROUPED_METRICS = {f"{cls.base}_{cls.group}": cls for cls in (
    HIT_head, HIT_tail, HIT_short, HIT_long, HIT_cold, HIT_warm,
    NDCG_head, NDCG_tail, NDCG_short, NDCG_long, NDCG_cold, NDCG_warm,
    Recall_head, Recall_tail, Recall_short, Recall_long, Recall_cold, Recall_warm,
)}


def register_metrics():
    """Add the grouped metrics to RecBole's registry (the dicts Config and Evaluator read): recbole_llm.compat."""
    register_recbole_metrics(GROUPED_METRICS)


register_metrics()
