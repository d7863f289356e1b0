r"""GRU4Rec, the plugin's version: RecBole's model plus length bucketing and ``train_mode``.

Same name as RecBole's, so ``--model=GRU4Rec`` resolves here (plugin first). Differences, all by config:

- ``length_bucketing`` (True): RecBole's own ``forward`` runs on sub-batches grouped by length, each cut to
  its longest sequence (:func:`recbole_llm.model.layers.bucketed_forward`). A unidirectional GRU's output
  at position j depends on positions 0..j only, so trailing padding never reaches the gathered state:
  identical outputs in eval mode, far fewer recurrent steps (the GRU runs step by step over time).
- ``train_mode``: ``prefix`` (RecBole: one row per prefix, loss at the last position) or ``all_positions``
  (one row per user, the GRU output at every real position scored against all items, like the plugin's
  SASRec). ``loss_type`` CE: cross-entropy over all items; BPR: one uniformly sampled negative per position;
  SSM: sampled softmax (recbole_llm.model.losses; the whole table, shared sampled negatives).
"""

import torch
from recbole.model.sequential_recommender.gru4rec import GRU4Rec as RecBoleGRU4Rec

from recbole_llm.model.hooks import SequentialBackbone
from recbole_llm.model.layers import bucketed_encode, bucketed_forward
from recbole_llm.compat import stand_in_loss_type
from recbole_llm.model.losses import SampledSoftmaxMixin
from recbole_llm.model.train_modes import require_target_list, valid_positions


class GRU4Rec(SampledSoftmaxMixin, RecBoleGRU4Rec, SequentialBackbone):
    def __init__(self, config, dataset):
        with stand_in_loss_type(config, {"SSM": "CE"}) as loss_type:
            super().__init__(config, dataset)
        self.setup_plugin_options(config, dataset, loss_type)

    def forward(self, item_seq, item_seq_len):
        """(B, embedding_size) state at the last real position (RecBole's forward, per length group)."""
        if self.length_bucketing:
            return bucketed_forward(super().forward, item_seq, item_seq_len)
        return super().forward(item_seq, item_seq_len)

    def user_embeddings(self, item_seq, item_seq_len):
        """(B, embedding_size) user vectors as full_sort_predict scores them: ``forward``."""
        return self.forward(item_seq, item_seq_len)

    def encode_sequence(self, item_seq):
        """(B, L, embedding_size) states at every position: RecBole's forward without the final gather."""
        gru_output, _ = self.gru_layers(self.emb_dropout(self.item_embedding(item_seq)))
        return self.dense(gru_output)

    def encode_all(self, item_seq, item_seq_len):
        if self.length_bucketing:
            return bucketed_encode(self.encode_sequence, item_seq, item_seq_len)
        return self.encode_sequence(item_seq)

    def calculate_loss(self, interaction):
        if self.train_mode != "all_positions" and self.loss_type != "SSM":
            return super().calculate_loss(interaction)
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.train_mode == "all_positions":
            targets = require_target_list(interaction, self.TARGET_SEQ)
            valid = valid_positions(item_seq_len, item_seq.size(1))
            states = self.encode_all(item_seq, item_seq_len)[valid]  # (N, H): every real position of every row
            pos_items = targets[valid]
        else:  # SSM on prefix rows: the state at the last position
            states, pos_items = self.forward(item_seq, item_seq_len), interaction[self.POS_ITEM_ID]
        table = self.item_embedding.weight
        if self.loss_type == "SSM":  # the whole (ID or adapted) table, sampled negatives
            return self.ssm_loss(states, pos_items, table, *self.sample_negatives(states.device))
        if self.loss_type == "CE":
            return self.loss_fct(states @ table.t(), pos_items)
        neg_items = torch.randint(1, self.n_items, pos_items.shape, device=pos_items.device)
        pos_score = (states * table[pos_items]).sum(-1)
        neg_score = (states * table[neg_items]).sum(-1)
        return self.loss_fct(pos_score, neg_score)
