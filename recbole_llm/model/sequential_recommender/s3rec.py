r"""S3Rec, the plugin's version: RecBole's model with a fast pre-training epoch and length bucketing.

Same name as RecBole's, so ``--model=S3Rec`` resolves here (plugin first); the plugin's ``S3RecTrainer``
pre-trains and fine-tunes it from one command. Differences, all by config:

- ``length_bucketing`` (True): RecBole's encoder runs on sub-batches grouped by length, each cut to its
  longest sequence. Fine-tuning and prediction feed left-aligned sequences (positions 0..len-1, causal
  mask): RecBole's own ``forward`` per group, as the plugin's SASRec/BERT4Rec/FDSA. Pre-training feeds
  RecBole's *left-padded* sequences (items at positions L-len..L-1, bidirectional attention): each group
  keeps its last ``cut`` columns *and their position ids* L-cut..L-1. Padded keys are masked in both
  cases, so the states at real positions are RecBole's (tested in eval mode; training differs in dropout
  draws only). Which layout a batch has is read off its zeros; any other layout runs unbucketed.
- Pre-training (``train_stage: pretrain``):

  * ``pretrain_rows``: ``user`` (default) = one row per user, its whole training sequence (the longest
    training prefix plus its target, the last ``MAX_ITEM_LIST_LENGTH`` items): every training item once per
    epoch, in a quarter of the rows and a third of the tokens of ``prefix`` on scientific. ``prefix`` =
    RecBole: every prefix row (a user's last training item is only ever a target there, never in a
    sequence). The original S3-Rec code also pre-trains on every prefix (of the whole training sequence,
    ``PretrainDataset.split_sequence``): ``user`` is a cost choice, not the paper's set-up. The rows come
    from the plugin's ``S3RecTrainer`` (``recbole_llm.data.utils.all_positions_dataset``, in batches of
    ``pretrain_batch_size``); a ``user`` batch must carry ``<item_id>_target_list`` (the marker that it
    holds one row per user).
  * :meth:`pretrain_sequences` builds RecBole's six pre-training sequences with torch ops instead of
    RecBole's per-row, per-item Python loops, with the same distributions (not the same random draws):
    every real position masked with probability ``mask_ratio``; a masked position's negative uniform over
    the items not in the row's sequence; a segment of length ``randint(1, len // 2)`` at a uniform start for
    rows of length >= 2, its negative the same number of consecutive items at a uniform start in the
    concatenation of the batch's sequences (rows shorter than 2 get copies of the sequence, as in RecBole).
    One difference: RecBole draws negatives from ``randint(1, n_items - 1)``, which includes the mask token
    id; here only real items (1..n_items-2) are drawn.
  * :meth:`pretrain` keeps RecBole's four losses, weights and formulas (sums over positions), but scores
    only the positions that count: RecBole scores all B*L positions against all attributes (scientific:
    2048 * 50 * 931 logits for AAP and again for MAP) and multiplies most by a zero mask. The attribute
    targets are looked up for those positions only, instead of RecBole's dense (B, L, n_features) tensor
    built from Python lists. Same value on the same inputs (tested against RecBole's ``pretrain``).

Fine-tuning and prediction are RecBole's code (``calculate_loss`` / ``predict`` / ``full_sort_predict``
call ``forward``, which buckets).
"""

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.s3rec import S3Rec as RecBoleS3Rec

from recbole_llm.errors import ConfigError
from recbole_llm.model.layers import bucketed_encode, length_groups
from recbole_llm.model.losses import NegativeSampler
from recbole_llm.model.train_modes import require_target_list, target_list_field

PRETRAIN_ROWS = ("user", "prefix")
MAX_NEGATIVE_ROUNDS = 1000


def _uniform_below(high):
    """A uniform integer in [0, high) per element of the long tensor ``high`` (> 0), like ``random.randint(0, high - 1)``."""
    draws = torch.rand(high.shape, dtype=torch.float64, device=high.device)
    return (draws * high).long().minimum(high - 1)


class S3Rec(RecBoleS3Rec):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.length_bucketing = config["length_bucketing"] is not False
        self.pretrain_rows = config["pretrain_rows"] or "user"
        if self.pretrain_rows not in PRETRAIN_ROWS:
            raise ConfigError(f"config key 'pretrain_rows' must be 'user' or 'prefix', got '{self.pretrain_rows}'")
        self.TARGET_SEQ = target_list_field(self.ITEM_ID)
        # attribute ids of every item id (the mask token has none); not saved: rebuilt from the dataset
        attributes = self.item_feat[self.FEATURE_FIELD]
        attributes = torch.cat([attributes, torch.zeros_like(attributes[:1])])
        self.register_buffer("item_attribute_ids", attributes, persistent=False)
        # pre-training negatives: uniform over the real items 1..n_items-2 (n_items-1 is the mask token)
        self.negative_sampler = NegativeSampler(self.n_items - 1)

    # ---- encoder ------------------------------------------------------------------------------------
    def forward(self, item_seq, bidirectional=True):
        """(B, L, H) states of ``item_seq`` (RecBole's forward), per length group when ``length_bucketing``."""
        if not self.length_bucketing:
            return super().forward(item_seq, bidirectional)
        real = item_seq != 0
        lengths = real.sum(dim=1)
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        if torch.equal(real, positions < lengths.unsqueeze(1)):  # left-aligned: fine-tuning, prediction
            return bucketed_encode(lambda seq: super(S3Rec, self).forward(seq, bidirectional), item_seq, lengths)
        if torch.equal(real, positions >= item_seq.size(1) - lengths.unsqueeze(1)):  # left-padded: pre-training
            return self.bucketed_left_padded(item_seq, lengths, bidirectional)
        return super().forward(item_seq, bidirectional)

    def bucketed_left_padded(self, item_seq, lengths, bidirectional):
        """(B, L, H) states of left-padded ``item_seq``: each length group's last ``cut`` columns, encoded with
        their own position ids L-cut..L-1 (zeros in the cut-away leading columns)."""
        max_len = item_seq.size(1)
        groups = length_groups(lengths, max_len)
        if len(groups) == 1 and groups[0][1] == max_len:
            return super().forward(item_seq, bidirectional)
        outputs = []
        for idx, cut in groups:
            hidden = self.encode_positions(item_seq[idx, max_len - cut :], max_len - cut, bidirectional)
            outputs.append(F.pad(hidden, (0, 0, max_len - cut, 0)))
        perm = torch.cat([idx for idx, _ in groups])
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(len(perm), device=perm.device)
        return torch.cat(outputs, dim=0)[inverse]

    def encode_positions(self, item_seq, first_position, bidirectional):
        """RecBole's ``forward`` with position ids starting at ``first_position``. A copy of its body (RecBole
        numbers positions from 0, which would change the states of a left-padded group cut at the front)."""
        position_ids = torch.arange(
            first_position, first_position + item_seq.size(1), dtype=torch.long, device=item_seq.device
        )
        position_embedding = self.position_embedding(position_ids.unsqueeze(0).expand_as(item_seq))
        input_emb = self.dropout(self.LayerNorm(self.item_embedding(item_seq) + position_embedding))
        attention_mask = self.get_attention_mask(item_seq, bidirectional=bidirectional)
        return self.trm_encoder(input_emb, attention_mask, output_all_encoded_layers=True)[-1]

    # ---- pre-training data ----------------------------------------------------------------------------
    def pretrain_input(self, interaction):
        """(item_seq, item_seq_len), left-aligned, that pre-training reconstructs: the row's sequence
        (``prefix``) or the user's whole training sequence, i.e. the row's sequence plus its target
        (``user``; the oldest item drops out when that exceeds MAX_ITEM_LIST_LENGTH)."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN].long()
        if self.pretrain_rows == "prefix":
            return item_seq, item_seq_len
        require_target_list(interaction, self.TARGET_SEQ)  # one row per user, not prefix rows
        max_len = item_seq.size(1)
        target = interaction[self.ITEM_ID].view(-1, 1)
        whole = F.pad(item_seq, (0, 1)).scatter(1, item_seq_len.clamp(max=max_len).view(-1, 1), target)
        whole = torch.where((item_seq_len >= max_len).unsqueeze(1), whole[:, 1:], whole[:, :-1])
        return whole, (item_seq_len + 1).clamp(max=max_len)

    def sample_negatives(self, rows, sequences):
        """One item per entry of ``rows`` (N,), uniform over the real items not in ``sequences[rows]`` (drawn by
        ``negative_sampler``: the cold-start protocol takes its cold items out of it)."""
        negatives = torch.zeros_like(rows)
        todo = torch.arange(len(rows), device=rows.device)
        for _ in range(MAX_NEGATIVE_ROUNDS):
            if len(todo) == 0:
                return negatives
            negatives[todo] = self.negative_sampler.sample(len(todo), rows.device)[0]
            todo = todo[(negatives[todo].unsqueeze(1) == sequences[rows[todo]]).any(dim=1)]
        raise RuntimeError("S3Rec: no negative item outside a pre-training sequence (a sequence holds every item?)")

    def pad_left(self, seq, lengths):
        """Left-aligned (B, L) -> RecBole's left padding to MAX_ITEM_LIST_LENGTH (items at the end)."""
        width = self.max_seq_length
        source = torch.arange(width, device=seq.device).unsqueeze(0) - (width - lengths).unsqueeze(1)
        if seq.size(1) < width:
            seq = F.pad(seq, (0, width - seq.size(1)))
        return seq.gather(1, source.clamp(min=0)).masked_fill(source < 0, 0)

    def pretrain_sequences(self, item_seq, item_seq_len):
        """RecBole's six pre-training sequences, each (B, MAX_ITEM_LIST_LENGTH) and left-padded:
        masked_item_sequence, pos_items, neg_items, masked_segment_sequence, pos_segment, neg_segment.
        Vectorised; same distributions as RecBole's ``reconstruct_pretrain_data`` (see the module doc)."""
        width, device = item_seq.size(1), item_seq.device
        lengths = item_seq_len.long().clamp(max=width)
        positions = torch.arange(width, device=device).unsqueeze(0)
        real = positions < lengths.unsqueeze(1)
        seq = item_seq.masked_fill(~real, 0)
        mask = torch.full_like(seq, self.mask_token)

        # Masked Item / Attribute Prediction: every real position masked with probability mask_ratio
        masked = real & (torch.rand(seq.shape, device=device) < self.mask_ratio)
        rows = masked.nonzero(as_tuple=True)[0]
        neg_items = seq.clone()
        neg_items[masked] = self.sample_negatives(rows, seq)
        masked_item_sequence = torch.where(masked, mask, seq)

        # Segment Prediction: sample_length = randint(1, len // 2), start = randint(0, len - sample_length)
        has_segment = lengths >= 2
        sample_length = _uniform_below((lengths // 2).clamp(min=1)) + 1
        start = _uniform_below((lengths - sample_length + 1).clamp(min=1))
        long_sequence = seq[real]  # every row's items, row after row (RecBole's long_sequence)
        neg_start = _uniform_below((len(long_sequence) - sample_length + 1).clamp(min=1))
        offset = positions - start.unsqueeze(1)
        in_segment = (offset >= 0) & (offset < sample_length.unsqueeze(1)) & has_segment.unsqueeze(1)
        neg_index = (neg_start.unsqueeze(1) + offset).clamp(0, len(long_sequence) - 1)
        copy = (~has_segment).unsqueeze(1)  # rows shorter than 2: all three are the sequence itself
        masked_segment = torch.where(in_segment, mask, seq)
        pos_segment = torch.where(in_segment | copy, seq, mask).masked_fill(~real, 0)
        neg_segment = torch.where(in_segment, long_sequence[neg_index], torch.where(copy, seq, mask)).masked_fill(~real, 0)

        sequences = (masked_item_sequence, seq, neg_items, masked_segment, pos_segment, neg_segment)
        return tuple(self.pad_left(s, lengths) for s in sequences)

    def attribute_targets(self, items):
        """(N, n_features) float multi-hot attributes of ``items`` (N,), by RecBole's rule: attribute id k
        sets column k-1 (token_seq: ids >= 1 only; token: id 0 sets the last column, as RecBole's
        ``features[-1] = 1``)."""
        ids = self.item_attribute_ids[items]
        targets = torch.zeros(len(items), self.n_features, device=items.device)
        if ids.dim() == 1:  # a single-valued (token) attribute
            return targets.scatter_(1, ((ids - 1) % self.n_features).view(-1, 1), 1.0)
        # padded ids (0) add 0 to column 0; an id listed twice still gives 1
        return targets.scatter_add_(1, (ids - 1).clamp(min=0), (ids > 0).float()).clamp_(max=1.0)

    def reconstruct_pretrain_data(self, item_seq, item_seq_len):
        """RecBole's 7-tuple, same shapes and dtypes: (features (B, L, n_features), the six sequences of
        :meth:`pretrain_sequences`). Kept for RecBole's interface; training skips the dense features."""
        sequences = self.pretrain_sequences(item_seq, item_seq_len)
        pos_items = sequences[1]
        features = self.attribute_targets(pos_items.flatten()).long().view(*pos_items.shape, self.n_features)
        features = features * (pos_items != 0).unsqueeze(-1)  # padding has no attributes
        return (features, *sequences)

    # ---- pre-training loss ----------------------------------------------------------------------------
    def pretrain(
        self,
        features,
        masked_item_sequence,
        pos_items,
        neg_items,
        masked_segment_sequence,
        pos_segment,
        neg_segment,
    ):
        """RecBole's four pre-training losses with its weights, on the positions that count only.

        A rewrite of RecBole's ``pretrain`` rather than a call to it: RecBole computes every loss at all
        B*L positions and zero-weights the padded (and, per loss, masked or unmasked) ones. The sums are the
        same. ``features`` may be RecBole's dense (B, L, n_features) tensor or None (looked up from
        ``pos_items`` at the positions that count).
        """
        sequence_output = self.forward(masked_item_sequence)  # bidirectional, as RecBole's
        feature_embedding = self.feature_embedding.weight
        masked = masked_item_sequence == self.mask_token
        unmasked = (masked_item_sequence != 0) & ~masked

        def targets(where):
            if features is None:
                return self.attribute_targets(pos_items[where])
            return features[where].float()

        # AAP: attributes of the items at the unmasked positions
        aap_score = self.aap_norm(sequence_output[unmasked]) @ feature_embedding.t()
        aap_loss = self.loss_fct(aap_score, targets(unmasked)).sum()

        # MIP: the masked item against its negative
        masked_output = sequence_output[masked]
        pos_score = self._masked_item_prediction(masked_output, self.item_embedding(pos_items[masked]))
        neg_score = self._masked_item_prediction(masked_output, self.item_embedding(neg_items[masked]))
        mip_distance = pos_score - neg_score
        mip_loss = self.loss_fct(mip_distance, torch.ones_like(mip_distance)).sum()

        # MAP: attributes of the items at the masked positions
        map_score = self.map_norm(masked_output) @ feature_embedding.t()
        map_loss = self.loss_fct(map_score, targets(masked)).sum()

        # SP: the last position's state of each of the three segment sequences (all left-padded)
        segment_context = self.forward(masked_segment_sequence)[:, -1, :]
        pos_segment_emb = self.forward(pos_segment)[:, -1, :]
        neg_segment_emb = self.forward(neg_segment)[:, -1, :]
        pos_segment_score = self._segment_prediction(segment_context, pos_segment_emb)
        neg_segment_score = self._segment_prediction(segment_context, neg_segment_emb)
        sp_distance = pos_segment_score - neg_segment_score
        sp_loss = self.loss_fct(sp_distance, torch.ones_like(sp_distance)).sum()

        return (
            self.aap_weight * aap_loss
            + self.mip_weight * mip_loss
            + self.map_weight * map_loss
            + self.sp_weight * sp_loss
        )

    def calculate_loss(self, interaction):
        if self.train_stage != "pretrain":
            return super().calculate_loss(interaction)  # fine-tuning: RecBole's, through the bucketed forward
        item_seq, item_seq_len = self.pretrain_input(interaction)
        return self.pretrain(None, *self.pretrain_sequences(item_seq, item_seq_len))
