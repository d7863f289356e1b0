"""The model side of serving: a checkpoint's model, its users' histories, and the scores it ranks items by.

:class:`ModelScorer` wraps a model rebuilt by :func:`recbole_llm.quick_start.load_model_file`:

- a dataset user's history is the one :mod:`recbole_llm.export` embeds: the test row's history plus its target (every
  interaction, the held-out valid and test items included), the last ``MAX_ITEM_LIST_LENGTH`` kept;
- :meth:`ModelScorer.full_scores` is the model's own ``full_sort_predict`` on those histories: what its evaluation
  ranks by, so an exact top-K is a ranking of these scores;
- :meth:`ModelScorer.factors` splits the scores into ``users @ items.T + bias``: user vectors, the item vectors the
  model scores with (``full_sort_factors``, else ``user_embeddings`` and the item table) and a per-item bias
  (BERT4Rec's ``output_bias``). The split is checked once against ``full_sort_predict`` on real histories; a model
  whose scores are not such a product gets no factors (no index, no new items) and says why.
"""

import numpy as np
import torch
from recbole.data.interaction import Interaction

from recbole_llm.serve import ServeError

FACTOR_RTOL = 1e-4


class ModelScorer:
    def __init__(self, config, model, train_data, valid_data, test_data):
        from recbole_llm.export import full_histories

        from recbole.utils import ModelType

        if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
            raise ServeError(
                f"--model_file holds a {config['model']}, a {config['MODEL_TYPE'].name.lower()} model: recommend ranks items "
                "for a history, so it needs a sequential model (SASRec, LLMEmbSASRec, LEARN, ...)"
            )
        self.config, self.model = config, model.eval()
        self.device = next(model.parameters()).device
        self.dataset = train_data.dataset
        # the prefix rows of the train split (all_positions and train_user_inter_num_interval train on a copy with one row
        # per kept user, whose lists hold only the last MAX_ITEM_LIST_LENGTH items): every interaction is some row's target
        train_rows = getattr(train_data._dataset, "statistics_source", None) or train_data._dataset
        self.splits = [train_rows, valid_data._dataset, test_data._dataset]
        dataset = self.dataset
        self.uid_field, self.iid_field = dataset.uid_field, dataset.iid_field
        self.item_tokens = [str(t) for t in dataset.field2id_token[self.iid_field]]
        self.item_ids = {t: i for i, t in enumerate(self.item_tokens) if i > 0}
        self.user_tokens = [str(t) for t in dataset.field2id_token[self.uid_field]]
        self.max_len = int(config["MAX_ITEM_LIST_LENGTH"])
        self.n_items = len(self.item_tokens)
        test = self.splits[2]
        self.user_seq, self.user_seq_len = full_histories(test, self.max_len)
        users = test.inter_feat[self.uid_field].tolist()
        self.row_of_user = {int(u): row for row, u in enumerate(users)}
        self._seen = None
        self._factors = "unchecked"
        self.factor_problem = None

    # ---- histories -------------------------------------------------------------------------------------------------
    def user_histories(self, user_ids):
        """(item_seq (B, L), item_seq_len (B,)) of dataset users (internal ids) that have a test row."""
        rows = torch.tensor([self.row_of_user[int(u)] for u in user_ids], dtype=torch.long)
        return self.user_seq[rows], self.user_seq_len[rows]

    def histories(self, item_id_lists):
        """(item_seq, item_seq_len) of histories given as lists of internal item ids (oldest first), the last
        ``MAX_ITEM_LIST_LENGTH`` of each kept."""
        seq = torch.zeros(len(item_id_lists), self.max_len, dtype=self.user_seq.dtype)
        lengths = torch.zeros(len(item_id_lists), dtype=self.user_seq_len.dtype)
        for row, items in enumerate(item_id_lists):
            items = list(items)[-self.max_len :]
            seq[row, : len(items)] = torch.tensor(items, dtype=seq.dtype)
            lengths[row] = len(items)
        return seq, lengths

    def seen_mask(self, user_ids):
        """(B, n_items) bool: the items of every interaction of each dataset user in any split (inputs and targets), as the
        model's run loaded the dataset (after its filters; the cold-start protocol's removed interactions excluded)."""
        if self._seen is None:
            pairs = []
            for split in self.splits:
                inter = split.inter_feat
                users = inter[self.uid_field].long()
                seq = inter[split.item_id_list_field].long()
                pairs.append(users * self.n_items + inter[self.iid_field].long())
                pairs.append((users.unsqueeze(1) * self.n_items + seq)[seq > 0])
            keys = torch.unique(torch.cat(pairs))  # sorted: grouped by user
            users = keys // self.n_items
            starts = torch.searchsorted(users, torch.arange(len(self.user_tokens) + 1))
            self._seen = (keys % self.n_items, starts)
        items, starts = self._seen
        mask = torch.zeros(len(user_ids), self.n_items, dtype=torch.bool)
        for row, user in enumerate(user_ids):
            mask[row, items[starts[int(user)] : starts[int(user) + 1]]] = True
        return mask

    @staticmethod
    def history_mask(seq, n_columns):
        """(B, n_columns) bool: the items of each given history."""
        mask = torch.zeros(seq.size(0), n_columns, dtype=torch.bool)
        mask.scatter_(1, seq.long(), True)
        mask[:, 0] = False
        return mask

    # ---- scores --------------------------------------------------------------------------------------------------
    def interaction(self, seq, seq_len, user_ids=None):
        user_ids = torch.zeros(len(seq), dtype=torch.long) if user_ids is None else torch.as_tensor(user_ids, dtype=torch.long)
        model = self.model
        return Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: seq_len, model.USER_ID: user_ids}).to(self.device)

    @torch.no_grad()
    def full_scores(self, seq, seq_len, user_ids=None):
        """(B, n_items) float32 scores of every item, the model's ``full_sort_predict`` (column 0, padding, included)."""
        scores = self.model.full_sort_predict(self.interaction(seq, seq_len, user_ids))
        return scores.view(len(seq), -1)[:, : self.n_items].float().cpu()

    def _raw_factors(self, seq, seq_len):
        model = self.model
        if callable(getattr(model, "full_sort_factors", None)):
            users, items = model.full_sort_factors(self.interaction(seq, seq_len))
            bias = None
        elif callable(getattr(model, "user_embeddings", None)):
            from recbole_llm.export import item_embeddings

            users = model.user_embeddings(seq.to(self.device), seq_len.to(self.device))
            items = item_embeddings(model)
            bias = getattr(model, "output_bias", None)
        else:
            raise TypeError(f"{type(model).__name__} has no full_sort_factors or user_embeddings")
        if not isinstance(bias, torch.Tensor) or bias.dim() != 1:
            bias = None
        items = items[: self.n_items].float()
        return users.detach().float().cpu(), items.detach().cpu(), None if bias is None else bias[: self.n_items].detach().float().cpu()

    @torch.no_grad()
    def item_factors(self):
        """(items (n_items, D), bias (n_items,) or None) with ``scores = users @ items.T + bias``; raises a ServeError
        naming the reason when the model's scores are not such a product."""
        self._check_factors()
        if self._factors is None:
            raise ServeError(self.factor_problem)
        return self._factors

    @torch.no_grad()
    def user_factors(self, seq, seq_len):
        """(B, D) user vectors of histories: ``full_scores = user_factors @ items.T + bias``."""
        self.item_factors()
        return self._raw_factors(seq, seq_len)[0]

    def has_factors(self):
        self._check_factors()
        return self._factors is not None

    def _check_factors(self):
        """Factor once and compare the product with full_sort_predict on up to 16 users' histories."""
        if self._factors != "unchecked":
            return
        name = type(self.model).__name__
        rows = min(16, len(self.user_seq))
        seq, seq_len = self.user_seq[:rows], self.user_seq_len[:rows]
        try:
            with torch.no_grad():
                users, items, bias = self._raw_factors(seq, seq_len)
                product = users @ items.t() + (0 if bias is None else bias)
                reference = self.full_scores(seq, seq_len)
        except (TypeError, AttributeError, RuntimeError) as err:
            self._factors = None
            self.factor_problem = (f"{name}'s scores cannot be split into user and item vectors ({str(err).splitlines()[0][:120]}): "
                                   "--index and --new_items need a model that scores by a dot product (the SASRec / GRU4Rec / "
                                   "BERT4Rec families, LEARN, UniSRec)")
            return
        scale = float(reference.abs().max()) + 1.0
        if product.shape != reference.shape or not torch.allclose(product, reference, rtol=FACTOR_RTOL, atol=FACTOR_RTOL * scale):
            self._factors = None
            self.factor_problem = (f"{name}'s full_sort_predict is not the dot product of its user and item vectors (checked on "
                                   f"{rows} histories): --index and --new_items cannot serve it")
            return
        self._factors = (items, bias)


def topk_rows(scores, k):
    """(values, indices) of the ``k`` best columns per row, best first; equal scores go to the lower column, at the
    K-th place too (``torch.topk`` picks among ties at the boundary freely: those rows are sorted stably)."""
    k = min(k, scores.size(1))
    if not k:
        return scores[:, :0], torch.zeros(scores.size(0), 0, dtype=torch.long)
    values, indices = torch.topk(scores, k, dim=1)
    boundary = values[:, -1:]
    overflow = ((scores >= boundary) & torch.isfinite(boundary)).sum(1) > k  # ties across the K-th place
    order = torch.from_numpy(np.lexsort((indices.numpy(), -values.numpy().astype(np.float64)), axis=1))
    values, indices = values.gather(1, order), indices.gather(1, order)
    for row in torch.nonzero(overflow).view(-1).tolist():
        row_values, row_indices = torch.sort(scores[row], descending=True, stable=True)
        values[row], indices[row] = row_values[:k], row_indices[:k]
    return values, indices
