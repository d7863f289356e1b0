r"""FDSA, the plugin's version: RecBole's model plus length bucketing.

Same name as RecBole's, so ``--model=FDSA`` resolves here (plugin first). ``length_bucketing`` (True) calls
RecBole's own ``forward(item_seq, item_seq_len)`` on sub-batches grouped by length, each cut to its longest
sequence (:func:`recbole_llm.model.layers.bucketed_forward`). Inside it the item and feature embeddings are
looked up from the item ids, positions start at 0 and both transformers use RecBole's causal mask built from
``item_seq > 0``, so the state gathered at position len-1 never sees the cut padding: identical outputs in eval
mode at a fraction of the attention and feed-forward work of two encoders. Training is RecBole's (prefix rows,
loss at the last position).
"""

from recbole.model.sequential_recommender.fdsa import FDSA as RecBoleFDSA

from recbole_llm.model.layers import bucketed_forward


class FDSA(RecBoleFDSA):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.length_bucketing = config["length_bucketing"] is not False

    def forward(self, item_seq, item_seq_len):
        """(B, H) sequence state (RecBole's forward, per length group)."""
        if self.length_bucketing:
            return bucketed_forward(super().forward, item_seq, item_seq_len)
        return super().forward(item_seq, item_seq_len)
