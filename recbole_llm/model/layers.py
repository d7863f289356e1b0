"""Shared layers: length-bucketed sequence encoding.

RecBole pads every sequence to MAX_ITEM_LIST_LENGTH (50) although most histories are a few items long. For a
left-aligned sequence (items at positions 0..len-1, padding after), the encoder output at any real position
depends only on positions 0..len-1: with causal attention by construction, with bidirectional attention
because padded keys are masked out. So a batch can be encoded in groups of similar length, each group cut to
its own longest sequence, with exactly the same outputs (only dropout draws differ) at a fraction of the cost.

Two entry points: :func:`bucketed_encode` for an encoder that returns states at every position, and
:func:`bucketed_forward` for a model's own ``forward(item_seq, item_seq_len)`` (RecBole's GRU4Rec, FDSA),
called unchanged on each group's cut sub-batch.
"""

import torch
import torch.nn.functional as F

DEFAULT_BOUNDARIES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def length_groups(item_seq_len, max_len, boundaries=DEFAULT_BOUNDARIES):
    """[(row indices, cut length)] grouping rows whose lengths fall between the same boundaries."""
    lengths = item_seq_len.clamp(min=1, max=max_len)
    bounds = torch.tensor([b for b in boundaries if b < max_len] + [max_len], device=lengths.device)
    bucket = torch.bucketize(lengths, bounds)
    groups = []
    for b in torch.unique(bucket).tolist():
        idx = torch.nonzero(bucket == b, as_tuple=False).squeeze(1)
        groups.append((idx, int(lengths[idx].max())))
    return groups


def bucketed_forward(forward, item_seq, item_seq_len, boundaries=DEFAULT_BOUNDARIES):
    """Call ``forward(seq_cut, seq_len) -> (n, ...)`` on the length groups of ``item_seq`` (B, L).

    Each group's rows are cut to the group's longest sequence and passed with their own lengths, so a
    RecBole ``forward(item_seq, item_seq_len)`` that only reads positions < len (causal or masked
    attention, a unidirectional RNN; positions counted from 0) gives the same per-row outputs as on the
    padded batch. Returns the (B, ...) outputs in the rows' original order.
    """
    groups = length_groups(item_seq_len, item_seq.size(1), boundaries)
    if len(groups) == 1 and groups[0][1] == item_seq.size(1):
        return forward(item_seq, item_seq_len)
    outputs = [forward(item_seq[idx, :cut], item_seq_len[idx]) for idx, cut in groups]
    perm = torch.cat([idx for idx, _ in groups])
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm), device=perm.device)
    return torch.cat(outputs, dim=0)[inverse]


def bucketed_encode(encode, item_seq, item_seq_len, gather_last=False, boundaries=DEFAULT_BOUNDARIES):
    """Run ``encode(seq_cut) -> (n, cut, H)`` on length groups of ``item_seq`` (B, L).

    Returns (B, L, H), or (B, H), the state at position len-1, when ``gather_last``. Rows keep their
    order. As with the padded encoder, positions past a row's length carry no meaning (past its group's
    cut they are zeros).
    """
    max_len = item_seq.size(1)

    def encode_group(seq, seq_len):
        hidden = encode(seq)
        cut = seq.size(1)
        if gather_last:
            last = (seq_len.clamp(min=1, max=cut) - 1).view(-1, 1, 1).expand(-1, 1, hidden.size(-1))
            return hidden.gather(1, last).squeeze(1)
        if cut < max_len:
            hidden = F.pad(hidden, (0, 0, 0, max_len - cut))
        return hidden

    return bucketed_forward(encode_group, item_seq, item_seq_len, boundaries)


class CachedTableMixin:
    """For an ``nn.Module`` that caches a computed table in ``self._cache``: the cache goes whenever the module
    changes mode (train/eval) or device/dtype (``_apply``), so a stale table is never read."""

    def train(self, mode=True):
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        return super()._apply(fn, *args, **kwargs)
