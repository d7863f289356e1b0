"""``cold_id``: an ID row generated from text for the items training never saw (LLMESR*, LLM2X*).

A model that keeps an ID table next to text scores an item with its ID row. Every warm row moves during
training; a row whose item never appears in the training data keeps its initial value (a random row, or the PCA
of its text at another scale), so the ID half of a cold item's score is on another scale than the warm items'.

- ``cold_id: none`` (default): as before.
- ``cold_id: generate``: a small generator (an MLP, ``cold_id_layers``) maps an item's frozen LLM row (LLM2X: the
  PCA features its table starts from; LLM-ESR: the raw LLM row and the adapted semantic half, both detached) to
  an ID row. It is trained on the warm items of each batch only, to reproduce their current ID rows (ALDI-style
  distillation, Huang et al. SIGIR 2023: ``cold_id_alpha`` times the squared error relative to the rows' own
  squared norm, the rows detached). A regression to the warm rows shrinks towards their mean, so with
  ``cold_id_norm: row`` (LLM2X) each generated row is rescaled at evaluation to the warm rows' mean norm
  (``mean``, LLM-ESR: one factor for all, ``none``: as is; docs/cold_start.md has the measurements). At evaluation every item that the model's training data never holds gets the
  generated row instead of its own; warm rows are untouched, so warm scores are exactly those of ``none``.
- ``cold_id: dropout``: ``generate`` plus DropoutNet (Volkovs et al. NeurIPS 2017): in every training step the
  ID rows of a random share ``cold_id_dropout`` of the warm items are replaced by their generated rows, as
  inputs, targets and negatives alike, so the recommendation loss also trains the generator to score.

Which items are cold is read from the model's training data (items in no training row), never from the cold
protocol's list. Generated rows of cold items never enter a training loss: in training the table is the plain ID
table (``dropout`` replaces warm rows only). Keys: properties/model/ColdIdMixin.yaml; docs/cold_start.md.
"""

import contextlib

import torch
from torch import nn

from recbole_llm.errors import ConfigError
from recbole_llm.model.layers import CachedTableMixin
from recbole_llm.model.train_modes import batch_items

COLD_ID_MODES = ("none", "generate", "dropout")
NORMS = ("row", "mean", "none")


def trained_items(dataset):
    """(item_num,) bool: the items that occur in the model's training rows (as a target or in a history)."""
    inter = dataset.inter_feat
    list_field = getattr(dataset, "item_id_list_field", None)
    if list_field is None or list_field not in inter:
        raise ConfigError(
            "cold_id needs the training split to tell warm from cold items; the model was built on a dataset "
            "without item sequences: build it on train_data.dataset (RecBole's data_preparation)"
        )
    seen = torch.zeros(dataset.item_num, dtype=torch.bool)
    for field in (dataset.iid_field, list_field, dataset.iid_field + "_target_list"):
        if field in inter:
            seen[inter[field].reshape(-1).long()] = True
    seen[0] = False
    return seen


class ColdIdTable(CachedTableMixin, nn.Module):
    """An ID table (``table``, an ``nn.Embedding``) whose rows of untrained items are generated from content.

    ``weight`` is the table the model reads: in training the plain rows (with ``dropout``, inside :meth:`step`, a
    share of warm rows generated), in evaluation the plain rows of trained items and the generated rows of the
    others. ``content(ids)`` gives the generator's input rows.
    """

    def __init__(self, table, content_fn, content_dim, warm, mode, layers=2, dropout=0.0, norm="row"):
        super().__init__()
        from recbole_llm.model.adapters import build_adapter

        if not 0 <= float(dropout) < 1:
            raise ConfigError(f"config key 'cold_id_dropout' must be a number in [0, 1), got {dropout!r}")
        if norm not in NORMS:
            raise ConfigError(f"config key 'cold_id_norm' must be one of {list(NORMS)}, got {norm!r}")
        self.table = table
        self.mode = mode
        self.norm = norm
        self.drop_share = float(dropout) if mode == "dropout" else 0.0
        width = table.weight.size(1)
        self.generator = build_adapter(int(content_dim), width, int(layers), "relu", 0.0)
        rows = table.weight.size(0)
        real = torch.zeros(rows, dtype=torch.bool)
        real[1 : len(warm)] = True  # item rows; padding 0 and extra rows (BERT4Rec's mask token) keep their own
        is_warm = torch.zeros(rows, dtype=torch.bool)
        is_warm[: len(warm)] = warm
        self.register_buffer("warm", is_warm & real, persistent=False)
        self.register_buffer("cold", ~is_warm & real, persistent=False)
        object.__setattr__(self, "_content", content_fn)  # a bound method of the model: not a submodule
        self.embedding_dim = width
        self.num_embeddings = rows
        self._dropped = None
        self._cache = None

    def generate(self, ids):
        return self.generator(self._content(ids))

    def generated_rows(self, ids):
        """The rows that replace ``ids``' own: the generator's, rescaled (a regression to the warm rows shrinks
        towards their mean, so smaller scores). ``cold_id_norm: row``: each row to the warm rows' mean norm;
        ``mean``: all by one factor, their mean norm to the warm rows' (their relative norms kept); ``none``: as is."""
        rows = self.generate(ids)
        if self.norm == "none":
            return rows
        target = self.table.weight[self.warm].detach().norm(dim=1).mean()
        norms = rows.norm(dim=1, keepdim=True)
        scale = norms if self.norm == "row" else norms.mean()
        return rows / scale.clamp(min=1e-12) * target

    @property
    def weight(self):
        plain = self.table.weight
        if self.training:
            if self._dropped is None or not len(self._dropped):
                return plain
            # training reads the generator's own rows: the norm rule is an evaluation-side correction (measured so)
            return plain.index_put((self._dropped,), self.generate(self._dropped).to(plain.dtype))
        if self._cache is None:
            cold = self.cold.nonzero().view(-1)
            self._cache = plain.index_put((cold,), self.generated_rows(cold).to(plain.dtype)) if len(cold) else plain
        return self._cache

    def forward(self, ids):
        return nn.functional.embedding(ids, self.weight)

    @contextlib.contextmanager
    def step(self):
        """One training step: with ``dropout`` the warm items whose rows are generated in it are drawn here."""
        if self.drop_share > 0 and self.training:
            pick = torch.rand(self.warm.size(0), device=self.warm.device) < self.drop_share
            self._dropped = (pick & self.warm).nonzero().view(-1)
        try:
            yield
        finally:
            self._dropped = None

    def distill_loss(self, ids):
        """Relative squared error between the generated and the current (detached) ID rows of warm ``ids``."""
        ids = ids[self.warm[ids]]
        if not len(ids):
            return self.table.weight.new_zeros(())
        target = self.table.weight[ids].detach()
        error = (self.generate(ids) - target).pow(2).sum(1)
        return error.mean() / target.pow(2).sum(1).mean().clamp(min=1e-12)


class ColdIdMixin:
    """``cold_id`` for models with an ID table next to text; the model calls :meth:`setup_cold_id` with its table.

    Hook: ``cold_id_content(ids)``, the generator's input rows (its width passed to :meth:`setup_cold_id`).
    """

    backbone_hooks = ("calculate_loss",)  # declared in recbole_llm/model/hooks.py, checked by tests/test_hooks.py
    model_hooks = ("cold_id_content",)

    @property
    def cold_table(self):
        """The model's :class:`ColdIdTable` (registered where the model keeps its ID table), or None."""
        return self.__dict__.get("_cold_table")

    def setup_cold_id(self, config, dataset, table, content_fn, content_dim):
        """Return ``table`` wrapped in a :class:`ColdIdTable` (or unchanged with ``cold_id: none``)."""
        mode = config["cold_id"] or "none"
        if mode not in COLD_ID_MODES:
            raise ConfigError(f"config key 'cold_id' must be one of {list(COLD_ID_MODES)}, got {mode!r}")
        self.cold_id_alpha = float(config["cold_id_alpha"])
        self.cold_id_max_items = int(config["align_max_items"] or 1024)
        if mode == "none":
            return table
        if self.cold_id_alpha <= 0 and mode == "generate":
            raise ConfigError("cold_id: generate trains its generator only through cold_id_alpha: set cold_id_alpha > 0")
        warm = trained_items(dataset)
        wrapped = ColdIdTable(table, content_fn, content_dim, warm, mode, config["cold_id_layers"], config["cold_id_dropout"],
                              config["cold_id_norm"] or "row")
        self.__dict__["_cold_table"] = wrapped  # a reference, not a second submodule (one state_dict entry)
        return wrapped

    def cold_id_items(self, interaction):
        """The batch's items (targets, target lists, histories), at most ``align_max_items`` of them."""
        fields = (self.ITEM_ID, self.ITEM_ID + "_target_list", self.ITEM_SEQ)
        return batch_items(interaction, fields, self.cold_id_max_items)

    def calculate_loss(self, interaction):
        if self.cold_table is None:
            return super().calculate_loss(interaction)
        with self.cold_table.step():
            loss = super().calculate_loss(interaction)
        if self.cold_id_alpha > 0:
            loss = loss + self.cold_id_alpha * self.cold_table.distill_loss(self.cold_id_items(interaction))
        return loss
