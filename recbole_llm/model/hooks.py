"""The hooks a plugin backbone offers to the LLM mixins, the trainer and export, declared once.

The plugin's backbones subclass these abstract bases (SASRec :class:`ItemTableBackbone`, GRU4Rec and BERT4Rec
:class:`SequentialBackbone`): a class that lacks a hook cannot be instantiated (``abc``). A mixin names the hooks it
calls through ``super()`` in ``backbone_hooks`` and those the model class must supply in ``model_hooks``;
tests/test_hooks.py checks every backbone and every LLM model class (LLMEmb*, LLMESR*, LLM2X*) against them.

Besides the methods below, the mixins read attributes RecBole's ``SequentialRecommender`` sets in ``__init__``:
``ITEM_ID``, ``ITEM_SEQ``, ``ITEM_SEQ_LEN``, ``USER_ID``, ``n_items``, and ``item_embedding``: the module the backbone
reads its item table from, for the input sequence and for scoring, through ``.weight`` ((n_items [+ extra rows], H))
and ``item_embedding(ids)`` only. The mixins replace it (LLMEmb: :class:`~recbole_llm.model.adapters.AdaptedEmbedding`;
LLM-ESR: :class:`~recbole_llm.model.llmesr.DualViewEmbedding`; ``cold_id``: :class:`~recbole_llm.model.cold_id.ColdIdTable`),
so a backbone must never keep a copy of the table. ``forward`` is RecBole's: ``forward(item_seq, item_seq_len)`` ->
(B, H) for SASRec and GRU4Rec, ``forward(item_seq)`` -> (B, L, H) for BERT4Rec; LLM-ESR wraps it (both views in one
stacked batch of 2B rows) and calls the backbone's own through ``super()``.
"""

from abc import ABC, abstractmethod


class SequentialBackbone(ABC):
    """Hooks of every plugin sequential backbone (SASRec, GRU4Rec, BERT4Rec)."""

    @abstractmethod
    def encode_all(self, item_seq, item_seq_len):
        """(B, L, H) encoder states at every position of the left-aligned ``item_seq`` (B, L); ``item_seq_len`` (B,)
        are the real lengths. Positions past a row's length may hold anything (nothing reads them). ``train_mode:
        all_positions`` scores these states; LLM-ESR runs both views through it."""

    @abstractmethod
    def user_embeddings(self, item_seq, item_seq_len):
        """(B, H) user vectors as ``full_sort_predict`` scores them (SASRec, GRU4Rec: ``forward``; BERT4Rec: the state
        at a mask token after the history). ``recbole_llm.export`` writes them."""


class ItemTableBackbone(SequentialBackbone):
    """Hooks of a backbone whose item table is one tensor used for the input sequence and for scoring (SASRec and
    its subclasses: LLMEmbSASRec, LLM2XSASRec, LLMESRSASRec, UniSRec). The trainer's chunked and sampled evaluation
    use :meth:`full_sort_factors`; export uses :meth:`item_table` and :meth:`output_table`."""

    @abstractmethod
    def item_table(self):
        """(n_items, H) item vectors used for the input sequence and, through :meth:`output_table`, for scoring."""

    @abstractmethod
    def item_rows(self, ids):
        """``item_table()[ids]`` (same shape as ``ids`` plus H); a row-wise table (LLMEmb's adapter) computes only
        those rows: sampled softmax needs the batch's items and its negatives, not the whole table."""

    @abstractmethod
    def embed_item_seq(self, item_seq, table=None):
        """(B, L, H) input embeddings of ``item_seq`` from ``table`` (default :meth:`item_table`); LLM-ESR reads its
        stacked view embedding instead."""

    @abstractmethod
    def encode_sequence(self, item_seq, table=None):
        """(B, L, H) encoder states of ``item_seq`` (B, L), without length bucketing."""

    @abstractmethod
    def output_states(self, states):
        """(N, H) sequence states as they are scored (identity; UniSRec: L2-normalised, divided by its temperature)."""

    @abstractmethod
    def output_table(self, table):
        """(n, H) item table as it is scored (identity; UniSRec: L2-normalised)."""

    @abstractmethod
    def full_sort_factors(self, interaction):
        """(users (B, H), items (n_items, H)) with ``full_sort_predict(interaction) == users @ items.T``."""


def missing_hooks(model_class):
    """Names of the hooks ``model_class`` lacks: abstract ones left open, each mixin's ``backbone_hooks`` that no
    class after that mixin in the MRO defines (``super()`` would not find them) and its ``model_hooks`` that the
    class does not have. Empty for a complete model class."""
    missing = sorted(getattr(model_class, "__abstractmethods__", ()))
    mro = model_class.__mro__
    for index, klass in enumerate(mro):
        for name in vars(klass).get("backbone_hooks", ()):
            if not any(name in vars(later) for later in mro[index + 1 :]):
                missing.append(f"{klass.__name__}.backbone_hooks: {name}")
        for name in vars(klass).get("model_hooks", ()):
            if not callable(getattr(model_class, name, None)):
                missing.append(f"{klass.__name__}.model_hooks: {name}")
    return missing
