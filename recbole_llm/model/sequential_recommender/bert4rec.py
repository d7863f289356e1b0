r"""BERT4Rec, the plugin's version: RecBole's model plus length bucketing and ``train_mode``.

Same name as RecBole's, so ``--model=BERT4Rec`` resolves here (plugin first). Differences, all by config:

- ``length_bucketing`` (True): RecBole's own ``forward(item_seq)`` runs on sub-batches grouped by length, each
  cut to its longest sequence. A row's length is its count of non-zero ids (the mask token counts as a real
  item); the encoder is bidirectional but padded keys are masked out, so the states at real positions are
  identical in eval mode (positions past the cut come back as zeros; nothing reads them).
  ``reconstruct_test_data`` (mask token after the last item, first column dropped, as RecBole) is the same
  operation without RecBole's per-row Python loop.
- ``train_mode``:

  * ``prefix`` (default): RecBole's training. Every prefix row is masked by RecBole's ``mask_itemseq``
    dataloader transform; RecBole's loss at the masked positions. The value is RecBole's, but computed only
    for the slots that count (``MASK_INDEX > 0``): RecBole scores all ``int(mask_ratio * MAX_ITEM_LIST_LENGTH)``
    slots of every row against every item and zero-weights the padded ones afterwards, about 18x the
    necessary logits on short sequences (scientific: 1147 real slots of 20480 in a batch of 2048).
  * ``all_positions``: the original BERT4Rec cloze training. One row per user (built by
    :mod:`recbole_llm.data.utils`): its whole training sequence, i.e. the row's input plus its target
    (the oldest item drops out when that exceeds MAX_ITEM_LIST_LENGTH). ``max(1, round(len * mask_ratio))``
    random real positions per row become the mask token, as in the original code, and the loss (CE over all
    items + ``output_bias``, or BPR with one uniform negative per position, RecBole's formula) is taken at
    every masked position. The masking happens here, in the model, not in RecBole's transform: the transform
    masks ``item_id_list``, which in a one-row-per-user batch lacks the last training item (the target), it
    keeps at most ``int(mask_ratio * MAX_ITEM_LIST_LENGTH)`` targets per row, and a masked position 0 never
    counts in its loss (0 pads its index list). Its output is unused in this mode, so ``transform: ~``
    skips that per-batch Python loop.
- ``loss_type: SSM``: sampled softmax at the masked positions (``ssm_negatives`` shared negatives, logQ,
  ``ssm_in_batch``; keys as SASRec's, recbole_llm/model/losses.py), ``output_bias`` included in every logit. The
  item table is computed whole (RecBole's forward embeds the input through it), only the logits are sampled.
- ``output_bias`` (True): RecBole's learned per-item bias added to every score. ``False`` fixes it at zero
  (a buffer, not a parameter), so scores are dot products only. The bias is an ID parameter: with an item
  table that cannot fit popularity itself (LLMEmbBERT4Rec's adapted LLM table) it learns item popularity.
"""

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.bert4rec import BERT4Rec as RecBoleBERT4Rec

from recbole_llm.model.hooks import SequentialBackbone
from recbole_llm.model.layers import bucketed_encode
from recbole_llm.compat import stand_in_loss_type
from recbole_llm.model.losses import SampledSoftmaxMixin
from recbole_llm.model.train_modes import require_target_list, valid_positions


class BERT4Rec(SampledSoftmaxMixin, RecBoleBERT4Rec, SequentialBackbone):
    def __init__(self, config, dataset):
        with stand_in_loss_type(config, {"SSM": "CE"}) as loss_type:  # RecBole's BERT4Rec accepts BPR and CE only
            super().__init__(config, dataset)
        self.setup_plugin_options(config, dataset, loss_type)
        if self.loss_type == "CE":  # RecBole's BERT4Rec calls F.cross_entropy; a loss_fct can be swapped (cold items)
            self.loss_fct = torch.nn.CrossEntropyLoss()
        if config["output_bias"] is False:  # every reader of self.output_bias gets zeros
            del self.output_bias
            self.register_buffer("output_bias", torch.zeros(self.n_items))

    def user_embeddings(self, item_seq, item_seq_len):
        """(B, H) user states as full_sort_predict scores them: the output at a mask token after the history. As in
        RecBole, the mask goes to position ``len`` and the first column is dropped, so it sits at ``len - 1``; a
        history that fills MAX_ITEM_LIST_LENGTH loses its oldest item to make room."""
        masked = self.reconstruct_test_data(item_seq, item_seq_len)
        return self.gather_indexes(self.forward(masked), item_seq_len - 1)

    def forward(self, item_seq):
        """(B, L, H) states of left-aligned ``item_seq`` (RecBole's forward, per length group)."""
        if not self.length_bucketing:
            return super().forward(item_seq)
        return bucketed_encode(super().forward, item_seq, (item_seq != 0).sum(dim=1))

    def encode_all(self, item_seq, item_seq_len=None):
        """(B, L, H) states at every position: this class's ``forward`` (named, not ``self.forward``: LLM-ESR's
        ``encode_all`` stacks its two views and calls this one through ``super()``)."""
        return BERT4Rec.forward(self, item_seq)

    def reconstruct_test_data(self, item_seq, item_seq_len):
        """RecBole's: the mask token at position len, then the first column dropped (no per-row loop)."""
        padded = F.pad(item_seq, (0, 1))
        return padded.scatter(1, item_seq_len.long().view(-1, 1), self.mask_token)[:, 1:]

    # ---- train_mode all_positions ---------------------------------------------------------------------
    def cloze_batch(self, interaction):
        """(masked input, whole sequence, masked positions), each (B, L), from one row per user."""
        require_target_list(interaction, self.TARGET_SEQ)  # one row per user, not prefix rows
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN].long()
        max_len = item_seq.size(1)
        whole = F.pad(item_seq, (0, 1)).scatter(1, item_seq_len.view(-1, 1), interaction[self.ITEM_ID].view(-1, 1))
        whole = torch.where((item_seq_len >= max_len).unsqueeze(1), whole[:, 1:], whole[:, :-1])
        lengths = (item_seq_len + 1).clamp(max=max_len)
        valid = valid_positions(lengths, max_len)
        noise = torch.rand(whole.shape, device=whole.device).masked_fill(~valid, 2.0)
        rank = noise.argsort(dim=1).argsort(dim=1)  # a random order of the real positions first
        n_masked = (lengths.float() * self.mask_ratio).round().clamp(min=1)
        masked = rank < n_masked.unsqueeze(1)
        return whole.masked_fill(masked, self.mask_token), whole, masked

    def calculate_loss(self, interaction):
        if self.train_mode == "all_positions":
            masked_seq, whole, masked = self.cloze_batch(interaction)
            return self.masked_item_loss(self.forward(masked_seq)[masked], whole[masked])
        masked_index = interaction[self.MASK_INDEX]  # (B, mask_len), 0 = padding slot
        slots = masked_index > 0  # RecBole's loss weights: 1 for these slots, 0 for the others
        hidden = self.forward(interaction[self.MASK_ITEM_SEQ])
        rows = torch.arange(masked_index.size(0), device=masked_index.device).unsqueeze(1).expand_as(masked_index)
        states = hidden[rows[slots], masked_index[slots]]  # (N, H) at the masked positions that count
        neg_items = interaction[self.NEG_ITEMS][slots] if self.loss_type == "BPR" else None
        return self.masked_item_loss(states, interaction[self.POS_ITEMS][slots], neg_items)

    def masked_item_loss(self, states, pos_items, neg_items=None):
        """Mean loss of ``states`` (N, H) for ``pos_items`` (N,): RecBole's CE over all items + ``output_bias``,
        sampled softmax (SSM), or its BPR formula (one uniformly sampled negative per position when ``neg_items`` is None)."""
        table = self.item_embedding.weight[: self.n_items]  # without the mask token
        if self.loss_type == "CE":
            return self.loss_fct(states @ table.t() + self.output_bias, pos_items)
        if self.loss_type == "SSM":
            return self.ssm_loss(states, pos_items, table, *self.sample_negatives(states.device), bias=self.output_bias)
        if neg_items is None:
            neg_items = torch.randint(1, self.n_items, pos_items.shape, device=pos_items.device)
        pos_score = (states * table[pos_items]).sum(-1) + self.output_bias[pos_items]
        neg_score = (states * table[neg_items]).sum(-1) + self.output_bias[neg_items]
        return -torch.log(1e-14 + torch.sigmoid(pos_score - neg_score)).mean()
