"""A RecBole ``Collector`` that also collects what the long-tail metrics need, and gathers DDP ranks' rows."""

import torch
from recbole.evaluator.collector import Collector

from recbole_llm.compat import distributed_world
from recbole_llm.data.cold import cold_items_of
from recbole_llm.evaluator.longtail import (
    COLD_KEY,
    ITEM_POP_KEY,
    ROW_KEYS,
    TARGET_KEY,
    USER_KEY,
    USER_LEN_KEY,
    training_statistics,
)


class TopKScores:
    """The top-k of each row of a (B, n_items) score matrix that was never built whole (chunked evaluation)."""

    def __init__(self, values, indices, n_items):
        self.values, self.indices, self.n_items = values, indices, n_items
        self.shape = (values.shape[0], n_items)
        self.device = values.device


# DataStruct keys with one entry per evaluation row (RecBole's and the long-tail ones)
_PER_ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label") + ROW_KEYS


def gather_rows(parts, n_rows):
    """The rows of a ``DistributedSampler(shuffle=False)`` split, back in dataset order: rank r held rows
    r, r + W, r + 2W, ... of the index list padded to W * ceil(n/W) by repeating its start; the padding is cut."""
    size = max(len(p) for p in parts)
    if any(len(p) != size for p in parts):
        raise RuntimeError(f"DDP evaluation: ranks hold {[len(p) for p in parts]} rows; DistributedSampler gives each the same number")
    rows = torch.stack(parts, dim=1).reshape(size * len(parts), *parts[0].shape[1:])
    return rows[:n_rows] if n_rows is not None else rows


class LongTailCollector(Collector):
    """Adds per-row target item and user, and training popularity / history length."""

    eval_rows = None  # rows of the evaluation data (the trainer sets it): the padding DDP adds is cut at it

    def data_collect(self, train_data):
        super().data_collect(train_data)
        if self.register.need(ITEM_POP_KEY) or self.register.need(USER_LEN_KEY):
            item_pop, user_len = training_statistics(train_data.dataset)
            self.data_struct.set(ITEM_POP_KEY, item_pop)
            self.data_struct.set(USER_LEN_KEY, user_len)
        cold = cold_items_of(train_data.dataset)
        if self.register.need(COLD_KEY) and cold is not None:
            self.data_struct.set(COLD_KEY, cold)

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        if isinstance(scores_tensor, TopKScores):  # chunked evaluation (recbole_llm.trainer.trainer.chunked_topk)
            self._collect_topk(scores_tensor, positive_u, positive_i)
        else:
            super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if self.register.need(TARGET_KEY) or self.register.need(USER_KEY):
            n_rows = scores_tensor.shape[0]
            target = torch.zeros(n_rows, dtype=torch.long, device=scores_tensor.device)
            target[positive_u.to(target.device)] = positive_i.to(target.device).long()
            users = interaction[self.config["USER_ID_FIELD"]]
            if len(users) != n_rows:
                raise RuntimeError(
                    f"long-tail metrics: {len(users)} interaction rows for {n_rows} score rows; "
                    "use a trainer from recbole_llm.utils.get_trainer (it hands one row per user)"
                )
            self.data_struct.update_tensor(TARGET_KEY, target)
            self.data_struct.update_tensor(USER_KEY, users.to(target.device).long())

    def _collect_topk(self, topk, positive_u, positive_i):
        """rec.topk / rec.items from the top-k alone (what RecBole's Collector computes from the full scores)."""
        unsupported = [k for k in ("rec.meanrank", "rec.score", "data.label") if self.register.need(k)]
        if unsupported:
            from recbole_llm.errors import ConfigError

            raise ConfigError(f"config key eval_item_chunk keeps only the top-k, but the metrics need {unsupported}: drop eval_item_chunk")
        k = max(self.config["topk"])
        index = topk.indices[:, :k]
        if self.register.need("rec.items"):
            self.data_struct.update_tensor("rec.items", index)
        if self.register.need("rec.topk"):
            rows = torch.as_tensor(positive_u, device=index.device).long()
            keys = rows * topk.n_items + torch.as_tensor(positive_i, device=index.device).long()
            grid = torch.arange(index.size(0), device=index.device).unsqueeze(1) * topk.n_items + index
            pos_idx = torch.isin(grid, keys).int()
            pos_len = torch.bincount(rows, minlength=index.size(0)).int().unsqueeze(1)
            self.data_struct.update_tensor("rec.topk", torch.cat((pos_idx, pos_len), dim=1))

    def _gather_ranks(self):
        """Every rank's per-row tensors, concatenated in dataset order on every rank (DDP evaluation)."""
        for key in _PER_ROW_KEYS:
            if key in self.data_struct:
                parts = [None] * distributed_world()[1]
                torch.distributed.all_gather_object(parts, self.data_struct[key].cpu())
                self.data_struct.set(key, gather_rows(parts, self.eval_rows))

    def get_data_struct(self):
        if distributed_world()[1] > 1:
            self._gather_ranks()
        returned = super().get_data_struct()
        for key in ROW_KEYS:
            if key in self.data_struct:
                del self.data_struct[key]
        return returned
