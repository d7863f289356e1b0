r"""SASRec, the plugin's version: RecBole's model plus speed options and hooks for LLM item tables.

Same name as RecBole's, so ``--model=SASRec`` resolves here (plugin first). Differences, all by config:

- ``length_bucketing`` (True): encode sub-batches grouped by length, each cut to its longest sequence
  (identical outputs, see :mod:`recbole_llm.model.layers`).
- ``bidirectional_attention`` (False): no causal mask, key-padding mask only (the official LLMEmb SASRec).
  Only safe with prefix-augmented training (``train_mode: prefix``), where the target is never inside the
  input sequence; with ``all_positions`` a position could attend to the items it must predict.
- ``train_mode``: ``prefix`` (RecBole: one row per prefix, loss at the last position) or ``all_positions``
  (one row per user, loss at every position: the original SASRec and the official LLMEmb code).
- ``loss_type``: ``CE`` (all items), ``BPR`` (RecBole), ``BCE`` (one sampled negative per position, the
  official LLMEmb loss; needs ``train_neg_sample_args`` in prefix mode, samples uniformly in all_positions),
  ``SSM`` (sampled softmax: ``ssm_negatives`` shared negatives per batch from ``ssm_sampler`` uniform or
  popularity ** ``ssm_power``, logQ-corrected, accidental hits removed; ``ssm_in_batch`` adds the batch's other
  targets as negatives, corrected by their training frequency).

Hooks for subclasses (LLMEmb, LLM2X, LLM-ESR, UniSRec), declared in :mod:`recbole_llm.model.hooks`
(:class:`~recbole_llm.model.hooks.ItemTableBackbone`): :meth:`item_table` is the (n_items, hidden) table used for the
input sequence AND for scoring; :meth:`embed_item_seq` embeds the input sequence from it.
"""

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec
from torch import nn

from recbole_llm.model.hooks import ItemTableBackbone
from recbole_llm.model.layers import bucketed_encode
from recbole_llm.compat import stand_in_loss_type
from recbole_llm.model.losses import SampledSoftmaxMixin
from recbole_llm.model.train_modes import check_train_mode, require_target_list, valid_positions

TARGET_LIST_SUFFIX = "_target_list"


class SASRec(SampledSoftmaxMixin, RecBoleSASRec, ItemTableBackbone):
    def __init__(self, config, dataset):
        with stand_in_loss_type(config, {"BCE": "BPR", "SSM": "CE"}) as loss_type:  # RecBole builds the pieces we reuse
            super().__init__(config, dataset)
        self.loss_type = loss_type
        if loss_type == "BCE":
            self.loss_fct = nn.BCEWithLogitsLoss()
        self.length_bucketing = config["length_bucketing"] is not False
        self.bidirectional_attention = bool(config["bidirectional_attention"])
        self.train_mode = check_train_mode(config)
        self.TARGET_SEQ = self.ITEM_ID + TARGET_LIST_SUFFIX
        if loss_type == "SSM":
            self.init_sampled_softmax(config, dataset)

    # ---- hooks ------------------------------------------------------------------------------------
    def item_table(self):
        """(n_items, hidden) item embeddings used for the input sequence and for scoring."""
        return self.item_embedding.weight

    def item_rows(self, ids):
        """``item_table()[ids]``; subclasses whose table is a row-wise function compute only those rows (LLMEmb)."""
        return self.item_table()[ids]

    def embed_item_seq(self, item_seq, table=None):
        return F.embedding(item_seq, self.item_table() if table is None else table)

    def output_states(self, states):
        """Hook on sequence states before scoring (UniSRec: L2 norm / temperature)."""
        return states

    def output_table(self, table):
        """Hook on the item table before scoring (UniSRec: L2 norm)."""
        return table

    # ---- encoder ------------------------------------------------------------------------------------
    def encode_sequence(self, item_seq, table=None):
        """(B, L, H) encoder states of left-aligned ``item_seq`` (B, L)."""
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        input_emb = self.embed_item_seq(item_seq, table) + self.position_embedding(position_ids).unsqueeze(0)
        input_emb = self.dropout(self.LayerNorm(input_emb))
        mask = self.get_attention_mask(item_seq, bidirectional=self.bidirectional_attention)
        return self.trm_encoder(input_emb, mask, output_all_encoded_layers=False)[-1]

    def encode_all(self, item_seq, item_seq_len, table=None):
        """(B, L, H) states at every position."""
        if self.length_bucketing:
            return bucketed_encode(lambda s: self.encode_sequence(s, table), item_seq, item_seq_len)
        return self.encode_sequence(item_seq, table)

    def forward(self, item_seq, item_seq_len, table=None):
        """(B, H) state at the last real position."""
        if self.length_bucketing:
            states = bucketed_encode(lambda s: self.encode_sequence(s, table), item_seq, item_seq_len, gather_last=True)
        else:
            states = self.gather_indexes(self.encode_sequence(item_seq, table), item_seq_len - 1)
        return self.output_states(states)

    def user_embeddings(self, item_seq, item_seq_len):
        """(B, H) user vectors as full_sort_predict scores them: ``forward``."""
        return self.forward(item_seq, item_seq_len)

    # ---- losses ---------------------------------------------------------------------------------------
    ssm_partial_table = True  # SSM computes only the rows a step needs (LLM-ESR's stacked views turn it off)

    def sampled_softmax_step(self, interaction):
        """The SSM loss on the rows this step needs: the batch's inputs and targets and the sampled negatives,
        renumbered into a compact table (``item_rows``), never the whole catalogue."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.train_mode == "all_positions":
            valid = valid_positions(item_seq_len, item_seq.size(1))
            pos_items = require_target_list(interaction, self.TARGET_SEQ)[valid]
        else:
            pos_items = interaction[self.POS_ITEM_ID]
        negs, log_q = self.sample_negatives(item_seq.device)
        zero = torch.zeros(1, dtype=item_seq.dtype, device=item_seq.device)
        needed = torch.unique(torch.cat([zero, item_seq.flatten(), pos_items, negs]))  # sorted; 0 stays local 0
        rows = self.item_rows(needed)

        def local(ids):
            return torch.searchsorted(needed, ids)

        seq = local(item_seq)
        if self.train_mode == "all_positions":
            states = self.output_states(self.encode_all(seq, item_seq_len, rows)[valid])
        else:
            states = self.forward(seq, item_seq_len, rows)
        return self.ssm_loss(states, pos_items, self.output_table(rows), negs, log_q, local=local)

    def calculate_loss(self, interaction):
        if self.loss_type == "SSM" and self.ssm_partial_table:
            return self.sampled_softmax_step(interaction)
        table = self.item_table()
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        if self.train_mode == "all_positions":
            if self.TARGET_SEQ not in interaction:
                raise KeyError(
                    f"train_mode all_positions needs '{self.TARGET_SEQ}' in the training batch: build the "
                    "dataloaders with recbole_llm.utils.data_preparation"
                )
            hidden = self.encode_all(item_seq, item_seq_len, table)
            positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
            valid = positions < item_seq_len.unsqueeze(1)
            return self.score_loss(self.output_states(hidden[valid]), interaction[self.TARGET_SEQ][valid], table)
        seq_output = self.forward(item_seq, item_seq_len, table)
        neg_items = interaction[self.NEG_ITEM_ID] if self.loss_type in ("BPR", "BCE") and self.NEG_ITEM_ID in interaction else None
        return self.score_loss(seq_output, interaction[self.POS_ITEM_ID], table, neg_items)

    def score_loss(self, states, pos_items, table, neg_items=None):
        """Recommendation loss of ``states`` (N, H) for ``pos_items`` (N,) scored against ``table``."""
        table = self.output_table(table)
        if self.loss_type == "CE":
            return self.loss_fct(states @ table.t(), pos_items)
        if self.loss_type == "SSM":
            return self.ssm_loss(states, pos_items, table, *self.sample_negatives(states.device))
        if neg_items is None:  # all_positions: one uniformly sampled negative per position
            neg_items = torch.randint(1, table.size(0), pos_items.shape, device=pos_items.device)
        pos_score = (states * table[pos_items]).sum(-1)
        neg_score = (states * table[neg_items]).sum(-1)
        if self.loss_type == "BPR":
            return self.loss_fct(pos_score, neg_score)
        # the official LLMEmb / LLM-ESR BCE: the positives' mean plus the negatives' mean (their weight against
        # align_alpha / llmesr_alpha; one mean over both halves would weigh the auxiliary losses twice)
        return self.loss_fct(pos_score, torch.ones_like(pos_score)) + self.loss_fct(neg_score, torch.zeros_like(neg_score))

    # ---- prediction -----------------------------------------------------------------------------------
    def predict(self, interaction):
        table = self.item_table()
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], table)
        return (seq_output * self.output_table(table)[interaction[self.ITEM_ID]]).sum(dim=1)

    def full_sort_factors(self, interaction):
        """(users (B, H), items (n_items, H)) with ``full_sort_predict = users @ items.T`` (chunked evaluation)."""
        table = self.item_table()
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], table)
        return seq_output, self.output_table(table)

    def full_sort_predict(self, interaction):
        users, items = self.full_sort_factors(interaction)
        return users @ items.t()
