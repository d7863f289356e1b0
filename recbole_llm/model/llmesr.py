"""LLM-ESR (Liu et al., NeurIPS 2024): a semantic and a collaborative item view on one shared backbone.

- Semantic view: the frozen LLM table through the LLMEmb adapter (:class:`AdaptedEmbedding`), so an item never
  seen in training still has this half from its text.
- Collaborative view: a trainable ID table, initialised from the PCA of the same (un-whitened) LLM features
  (``id_init: pca``, at their raw scale unless ``llmesr_id_scale`` rescales them) or RecBole's random init
  (``id_init: random``).
- The backbone (SASRec, GRU4Rec or BERT4Rec, RecBole's code with the plugin's options) encodes the sequence once
  per view with shared weights; the user vector is ``concat(h_id, h_llm)`` and items are scored with
  ``concat(e_id, g(x))``. Both views run as one batch of 2B rows (:class:`DualViewEmbedding` gives the first B the
  ID view and the marked copies the semantic view), so the backbone's own code runs once, unchanged.
- ``llmesr_cross_attention`` (on in the official scripts; off by default here, it measured worse): before the
  encoder, each view's input sequence is replaced by multi-head attention from the other view's sequence onto it
  (keys and values from the view, queries from the other one; causal for SASRec/GRU4Rec, padded keys masked);
  ``llmesr_cross_residual`` adds the view's own input back (official: replaced).
- Retrieval-augmented self-distillation (``llmesr_alpha`` > 0): the K = ``llmesr_sim_users`` most similar users by
  LLM embedding of their training history (:mod:`recbole_llm.model.similar_users`, cached); their sequence
  vectors, detached and averaged, are the target of ``kd`` (MSE) or ``cl`` (the two-sided soft-target contrastive
  loss of LLMEmb, temperature ``llmesr_distill_tau``; the official ``Contrastive_Loss2``).
  ``llmesr_distill_targets: encode`` (official) encodes them at every step: ``llmesr_sim_sample`` = m of the K per
  row (0 = all K, the official cost; the MSE to one uniformly drawn neighbour has the same expected gradient as the
  MSE to their mean). ``bank`` encodes nothing more: each user's state from its latest training batch is kept in
  a (n_users, 2H) memory bank and the targets are read from it (stale by at most an epoch, as MoCo's memory bank).
- ``llmesr_item_reg`` (official ``item_reg``): the same soft contrastive loss (tau 1) between g(x_i) and e_i of the
  batch's items, weight ``llmesr_beta``.

``loss = loss_rec + llmesr_alpha * loss_distill [+ llmesr_beta * loss_item_reg]``. See docs/llmesr.md.
"""

import contextlib
from logging import getLogger

import torch
import torch.nn.functional as F
from torch import nn

from recbole_llm.errors import ConfigError
from recbole_llm.data.utils import user_sequences
from recbole_llm.llm.extract import pca_reduce
from recbole_llm.model.adapters import AdaptedEmbedding, prepare_llm_features
from recbole_llm.model.cold_id import ColdIdMixin
from recbole_llm.model.llm2x import copy_rows, resolve_scale
from recbole_llm.model.train_modes import batch_items
from recbole_llm.llm.contrastive import soft_contrastive_loss

ID_INITS = ("pca", "random")
DISTILLS = ("kd", "cl")
DISTILL_TARGETS = ("encode", "bank")


class DualViewEmbedding(nn.Module):
    """The ``item_embedding`` of an LLM-ESR model: an ID table and an adapted LLM table side by side.

    Outside :meth:`stacked` it is the concatenated table: ``.weight`` is ``(n, 2H)`` = ``[id | g(x)]`` and calling
    it looks ids up there (what the backbone's scoring code reads). Inside :meth:`stacked` the backbone gets the
    2B rows of :meth:`stack_ids`, and calling it returns each row's view input: the ID view for plain ids, the
    semantic view for ids marked with the offset.
    """

    def __init__(self, id_embedding, llm_embedding, cross_heads=0, causal=True, dropout=0.0, residual=False):
        super().__init__()
        self.residual = bool(residual)
        self.id_embedding = id_embedding
        self.llm_embedding = llm_embedding
        width = id_embedding.weight.size(1)
        if llm_embedding.embedding_dim != width:
            raise ConfigError(f"LLM-ESR views must be equally wide: ID {width}, LLM {llm_embedding.embedding_dim}")
        self.causal = causal
        self.cross_heads = int(cross_heads)
        if self.cross_heads:
            if width % self.cross_heads:
                raise ConfigError(f"llmesr_cross_heads ({self.cross_heads}) must divide the item table width ({width})")
            self.llm_to_id = nn.MultiheadAttention(width, self.cross_heads, dropout=dropout, batch_first=True)
            self.id_to_llm = nn.MultiheadAttention(width, self.cross_heads, dropout=dropout, batch_first=True)
        self.embedding_dim = 2 * width
        self.num_embeddings = id_embedding.weight.size(0)
        self._stacked = False
        self._stack_table = None

    @property
    def weight(self):
        return torch.cat([self.id_embedding.weight, self.llm_embedding.weight], dim=1)

    @contextlib.contextmanager
    def stacked(self):
        self._stacked, self._stack_table = True, None
        try:
            yield
        finally:
            self._stacked, self._stack_table = False, None

    def cached(self):
        return self.llm_embedding.cached()

    def cross(self, e_id, e_llm, ids, to_llm):
        """One view's input after cross-attention: keys/values from that view, queries from the other."""
        pad = ids == 0
        mask = None
        if self.causal:
            mask = torch.ones(ids.size(1), ids.size(1), dtype=torch.bool, device=ids.device).triu(1)
        if to_llm:
            out = self.id_to_llm(e_id, e_llm, e_llm, key_padding_mask=pad, attn_mask=mask, need_weights=False)[0]
            return out + e_llm if self.residual else out
        out = self.llm_to_id(e_llm, e_id, e_id, key_padding_mask=pad, attn_mask=mask, need_weights=False)[0]
        return out + e_id if self.residual else out

    def stack_ids(self, item_seq):
        """(2B, L): the sequences for the ID view, then the same ones for the semantic view, marked by an
        offset of ``num_embeddings`` on their non-padding ids (0 stays 0, so the backbone's masks are unchanged
        and rows may be regrouped, e.g. by length bucketing)."""
        return torch.cat([item_seq, torch.where(item_seq > 0, item_seq + self.num_embeddings, item_seq)], dim=0)

    def forward(self, ids):
        if not self._stacked:
            return F.embedding(ids, self.weight)
        if not self.cross_heads:
            # the marked ids index the second half of [ID table; LLM table]: one lookup for both views (padding 0
            # stays the ID table's zero row), built once per stacked pass
            if self._stack_table is None:
                self._stack_table = torch.cat([self.id_embedding.weight, self.llm_embedding.weight], dim=0)
            return F.embedding(ids, self._stack_table)
        marked = ids >= self.num_embeddings
        base = torch.where(marked, ids - self.num_embeddings, ids)
        llm_rows = marked.any(dim=1)
        e_id, e_llm = self.id_embedding(base), self.llm_embedding(base)
        out = torch.empty_like(e_id)
        for rows, to_llm in ((~llm_rows, False), (llm_rows, True)):
            if rows.any():
                out[rows] = self.cross(e_id[rows], e_llm[rows], base[rows], to_llm)
        return out


def stack2(x):
    return torch.cat([x, x], dim=0)


def unstack(out):
    """(2B, ...) stacked views -> (B, ..., 2H): ID-view states then semantic-view states."""
    half = out.size(0) // 2
    return torch.cat([out[:half], out[half:]], dim=-1)


class LLMESRMixin(ColdIdMixin):
    """Turn a plugin backbone (SASRec, GRU4Rec, BERT4Rec) into its LLM-ESR version; keys in properties/model/LLMESRMixin.yaml."""

    ssm_partial_table = False  # the two views run as one stacked batch over the whole [ID | LLM] tables

    llm_extra_rows = 0  # BERT4Rec: 1 (its mask token has a row in both tables)
    cross_attention_causal = True  # BERT4Rec: False (bidirectional)
    # what it wraps in the backbone (recbole_llm/model/hooks.py); it overrides embed_item_seq (ItemTableBackbone) and
    # supplies sequence_vectors and cold_id_content
    backbone_hooks = ("forward", "encode_all", "calculate_loss")

    def setup_dual_view(self, config, dataset, width):
        features = dataset.llm_feature(config["llm_feature"])
        base_name = config["llm_feature_base"] or config["llm_feature"]
        base = dataset.llm_feature(base_name)
        heads = int(config["llmesr_cross_heads"]) if config["llmesr_cross_attention"] else 0
        self._feature_key = dataset.llm_feature_key(config["llm_feature"])
        self.item_embedding = self.dual_view_embedding(config, features, base, width, heads)
        # cold_id: the ID rows of items training never saw generated from [LLM row | semantic half] (model/cold_id.py)
        view = self.item_embedding
        view.id_embedding = self.setup_cold_id(config, dataset, view.id_embedding, self.cold_id_content, features.size(1) + width)
        self.setup_distillation(config, dataset, base, base_name, width)
        self._capturing = False
        self._captured = None
        getLogger().info(
            f"{type(self).__name__}: ID table ({config['id_init']} init) + adapter({tuple(features.shape)} LLM features) -> {width} "
            f"each, cross-attention heads {heads}, distillation {self.distill} alpha {self.llmesr_alpha}"
        )

    def dual_view_embedding(self, config, features, base, width, heads):
        """The [ID | LLM] item table: RecBole's ID table (``id_init`` random or PCA of ``base``) next to the adapter."""
        llm = AdaptedEmbedding(
            features,
            width,
            layers=config["adapter_layers"],
            activation=config["adapter_activation"],
            dropout=config["adapter_dropout"],
            freeze=config["freeze_llm"] is not False,
            extra_rows=self.llm_extra_rows,
            source_key=self._feature_key,
        )
        id_embedding = self.item_embedding  # RecBole's table (n_items [+ mask token], width), random init
        id_init = config["id_init"]
        if id_init not in ID_INITS:
            raise ConfigError(f"config key 'id_init' must be one of {list(ID_INITS)}, got '{id_init}'")
        if id_init == "pca":
            if width > min(base.size(0) - 1, base.size(1)):
                raise ConfigError(f"id_init pca: the item table width {width} exceeds the {tuple(base.shape)} LLM features")
            reduced = torch.zeros(base.size(0), width)
            reduced[1:] = torch.from_numpy(pca_reduce(base[1:].numpy(), width))
            copy_rows(id_embedding.weight, reduced, resolve_scale(config["llmesr_id_scale"], config))
        return DualViewEmbedding(
            id_embedding,
            llm,
            heads,
            causal=self.cross_attention_causal,
            dropout=float(config["attn_dropout_prob"] or 0.0),
            residual=bool(config["llmesr_cross_residual"]),
        )

    def setup_distillation(self, config, dataset, base, base_name, width):
        """The similar-user self-distillation (its users from ``base``) and the item regulariser's settings."""
        self.llmesr_alpha = float(config["llmesr_alpha"])
        self.distill = config["llmesr_distill"]
        if self.distill not in DISTILLS:
            raise ConfigError(f"config key 'llmesr_distill' must be one of {list(DISTILLS)}, got '{self.distill}'")
        self.distill_tau = float(config["llmesr_distill_tau"])
        self.sim_sample = int(config["llmesr_sim_sample"])
        self.distill_targets = config["llmesr_distill_targets"] or "encode"
        if self.distill_targets not in DISTILL_TARGETS:
            raise ConfigError(
                f"config key 'llmesr_distill_targets' must be one of {list(DISTILL_TARGETS)}, got '{self.distill_targets}'"
            )
        self.item_reg_beta = float(config["llmesr_beta"]) if config["llmesr_item_reg"] else 0.0
        self.item_reg_max = int(config["align_max_items"] or 1024)
        if self.llmesr_alpha <= 0:
            return
        from recbole_llm.model.similar_users import ensure_similar_users

        k = int(config["llmesr_sim_users"])
        if k < 1 or self.sim_sample < 0:
            raise ConfigError(f"llmesr_sim_users must be >= 1 and llmesr_sim_sample >= 0, got {k} and {self.sim_sample}")
        seqs, lens = user_sequences(dataset)
        sims = ensure_similar_users(config, dataset, base, base_name, seqs, lens, k)
        self.register_buffer("user_seqs", seqs, persistent=False)
        self.register_buffer("user_seq_lens", lens, persistent=False)
        self.register_buffer("similar_users", sims, persistent=False)
        if self.distill_targets == "bank":  # every user's latest training state, (n_users, 2 * width)
            self.register_buffer("user_bank", torch.zeros(dataset.user_num, 2 * width), persistent=False)
            self.register_buffer("user_bank_seen", torch.zeros(dataset.user_num, dtype=torch.bool), persistent=False)

    def cold_id_content(self, ids):
        """The generator's input: the frozen LLM row and the adapted semantic half, both detached."""
        llm = self.item_embedding.llm_embedding
        with torch.no_grad():
            return torch.cat([llm.features[ids].float(), llm.rows(ids)], dim=1)

    # ---- both views through the backbone in one stacked batch -----------------------------------------
    def forward(self, item_seq, item_seq_len=None, *args):
        with self.item_embedding.stacked():
            stacked = self.item_embedding.stack_ids(item_seq)
            if item_seq_len is None:
                out = unstack(super().forward(stacked))
            else:
                out = unstack(super().forward(stacked, stack2(item_seq_len), *args))
        self._capture(out, item_seq, item_seq_len)
        return out

    def encode_all(self, item_seq, item_seq_len, *args):
        with self.item_embedding.stacked():
            out = unstack(super().encode_all(self.item_embedding.stack_ids(item_seq), stack2(item_seq_len), *args))
        self._capture(out, item_seq, item_seq_len)
        return out

    def embed_item_seq(self, item_seq, table=None):
        """SASRec hook: the input comes from the (stacked) view embedding, not from the scoring table."""
        return self.item_embedding(item_seq)

    def _capture(self, out, item_seq, item_seq_len):
        """Keep the first user states of a training step: (B, 2H) at each row's last real position."""
        if not self._capturing or self._captured is not None:
            return
        if out.dim() == 3:
            lengths = item_seq_len if item_seq_len is not None else (item_seq != 0).sum(1)
            out = out[torch.arange(out.size(0), device=out.device), (lengths.long() - 1).clamp(min=0)]
        self._captured = out

    def sequence_vectors(self, seqs, lens):
        """(N, 2H) user vectors of whole sequences (SASRec, GRU4Rec: ``forward``; BERT4Rec overrides)."""
        return self.forward(seqs, lens)

    # ---- losses ------------------------------------------------------------------------------------------
    def distill_loss(self, interaction, user_states):
        users = interaction[self.USER_ID].long()
        sims = self.similar_users[users]  # (B, K)
        if self.distill_targets == "bank":
            return self.bank_distill_loss(users, sims, user_states)
        if 0 < self.sim_sample < sims.size(1):
            pick = torch.randint(sims.size(1), (sims.size(0), self.sim_sample), device=sims.device)
            sims = sims.gather(1, pick)
        flat = sims.reshape(-1)
        with torch.no_grad():
            vectors = self.sequence_vectors(self.user_seqs[flat], self.user_seq_lens[flat].clamp(min=1))
        target = vectors.view(sims.size(0), sims.size(1), -1).mean(1)
        return self.distill_to(user_states, target, self.user_seq_lens[sims[:, 0]] > 0)

    def distill_to(self, user_states, target, keep):
        """``kd`` (MSE) or ``cl`` (soft contrastive) of the rows ``keep`` towards ``target``; 0 when none is kept."""
        if not keep.any():
            return user_states.sum() * 0.0
        if self.distill == "kd":
            return F.mse_loss(user_states[keep], target[keep])
        return soft_contrastive_loss(user_states[keep], target[keep], self.distill_tau)

    def bank_distill_loss(self, users, sims, user_states):
        """The distillation against the similar users' latest training states (no extra encoding), then the bank
        takes this batch's states. A neighbour not seen yet (first epoch) is left out of its row's mean."""
        seen = self.user_bank_seen[sims].float()  # (B, K)
        count = seen.sum(1)
        target = (self.user_bank[sims] * seen.unsqueeze(-1)).sum(1) / count.clamp(min=1).unsqueeze(-1)
        loss = self.distill_to(user_states, target, count > 0)
        self.user_bank[users] = user_states.detach()
        self.user_bank_seen[users] = True
        return loss

    def item_reg_loss(self, interaction):
        items = batch_items(interaction, (self.ITEM_SEQ,), self.item_reg_max)
        table = self.item_embedding
        return soft_contrastive_loss(table.llm_embedding.weight[items], table.id_embedding.weight[items], 1.0)

    def calculate_loss(self, interaction):
        with self.item_embedding.cached():
            self._capturing, self._captured = True, None
            try:
                loss = super().calculate_loss(interaction)
            finally:
                self._capturing = False
            if self.llmesr_alpha > 0 and self._captured is not None:
                loss = loss + self.llmesr_alpha * self.distill_loss(interaction, self._captured)
            self._captured = None
            if self.item_reg_beta > 0:
                loss = loss + self.item_reg_beta * self.item_reg_loss(interaction)
        return loss

    @classmethod
    def prepare_artifacts(cls, config):
        prepare_llm_features(config)
