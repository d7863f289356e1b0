"""A RecBole ``Collector`` that also collects what the long-tail metrics need."""

import torch
from recbole.evaluator.collector import Collector

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


class LongTailCollector(Collector):
    """Adds per-row target item and user, and training popularity / history length."""

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

    def get_data_struct(self):
        returned = super().get_data_struct()
        for key in ROW_KEYS:
            if key in self.data_struct:
                del self.data_struct[key]
        return returned
