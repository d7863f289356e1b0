r"""LEARN: frozen-LLM content embeddings, a causal PAL user tower, an item tower, dense all-action loss.

- CEX: frozen LLM item embeddings from a feature file (LEARN prompt, mean pooling, L2-normalised).
- PAL: ``Linear(d_llm -> d_model) -> causal transformer -> Linear(d_model -> embedding_dim) -> L2 norm``;
  no position embeddings unless ``position_embedding: true`` (order enters through the causal mask).
  The user embedding is PAL's output at the last real position of the history.
- Item tower ``item_tower``: ``a`` PAL (shared weights) over the target sequence with causal attention;
  ``b`` PAL on each target item alone; ``c`` the content embedding itself (a fixed random orthogonal
  projection when d_llm != embedding_dim). At inference every variant embeds single items.
- Training: every user's training sequence (``train_mode: all_positions`` gives one row per user) is cut
  into history and target (``target_len`` items, else ``target_ratio`` of it, at least one each). Dense
  all-action loss: ``n_history_samples`` user states x ``n_target_samples`` target items per user are all
  positives; the targets of the other users in the batch are negatives (items among the user's own targets
  masked), s = cosine / ``learn_tau``. Positions come from two-stage sampling: a uniform subsample, then
  recency weights ``w_i = log(alpha + i (beta - alpha) / (N - 1))`` (``sampler: recency``) or uniform.
  ``learn_loss: next_item`` takes one state (the last) and one target (the next item) for comparison.
  ``learn_loss: catalogue`` is the public code's finetune loss: per user and step one target position drawn
  uniformly from 1..n-1 of its training sequence, the state just before it, a softmax over every item of the
  catalogue embedded by the inference item tower (s = cosine / ``learn_tau``; history items stay negatives; under
  the cold-start protocol the cold items are no negatives: its CE is ``loss_fct``, masked by item id).
  ``learn_random_negatives: M`` adds M items drawn uniformly from the catalogue per batch as negatives shared by
  every user (PinnerFormer mixes in-batch and random negatives; the LEARN paper names only in-batch ones).
- Evaluation: RecBole's evaluator, scores = cosine(user, item) with the item table computed once per
  evaluation.
"""

import random

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType
from torch import nn

from recbole_llm.errors import ConfigError
from recbole_llm.model.adapters import prepare_llm_features
from recbole_llm.model.frozen import FrozenTablesMixin
from recbole_llm.model.layers import bucketed_encode
from recbole_llm.model.losses import NegativeSampler
from recbole_llm.model.pretrained import Pretrainable, feature_space, transfer_weights

TARGET_LIST_SUFFIX = "_target_list"
LOSSES = ("dense", "next_item", "catalogue", "pretrain")


def recency_weights(n, alpha=10.0, beta=10000.0):
    """w_i = log(alpha + i (beta - alpha) / (N - 1)) / max(w), i = 0..N-1 (later = larger)."""
    if n <= 1:
        return torch.ones(max(n, 0))
    i = torch.arange(n, dtype=torch.float64)
    w = torch.log(alpha + i * (beta - alpha) / (n - 1))
    return (w / w.max()).float()


def two_stage_sample(n, k, sampler="recency", alpha=10.0, beta=10000.0, rng=None, generator=None):
    """Sorted indices of ``min(n, k)`` positions of a length-``n`` sequence.

    Stage 1: a uniform random subsample of at most ``2k`` positions (order kept). Stage 2: ``k`` of them
    drawn without replacement, with recency weights over the subsample (or uniformly).
    """
    rng = rng or random
    if n <= k:
        return list(range(n))
    pool = sorted(rng.sample(range(n), min(n, 2 * k)))
    if sampler == "uniform":
        picked = rng.sample(range(len(pool)), k)
    else:
        weights = recency_weights(len(pool), alpha, beta)
        picked = torch.multinomial(weights, k, replacement=False, generator=generator).tolist()
    return sorted(pool[i] for i in picked)


def two_stage_sample_batch(lengths, k, sampler="recency", alpha=10.0, beta=10000.0, generator=None):
    """:func:`two_stage_sample` for every row at once: (index (B, k), mask (B, k)), indices sorted per row.

    Row i samples ``min(n_i, k)`` of ``range(n_i)``; the slots past that are masked (index 0). Stage 1 keeps
    the ``min(n_i, 2k)`` positions with the smallest uniform keys (a uniform subsample, order restored);
    stage 2 takes ``k`` of them without replacement by Gumbel-top-k over log recency weights (the same
    distribution as successive weighted draws, ``torch.multinomial(replacement=False)``) or uniformly.
    """
    lengths = lengths.long()
    batch, device = lengths.numel(), lengths.device
    width = int(lengths.max()) if batch else 0
    if batch == 0 or width == 0:
        return torch.zeros(batch, k, dtype=torch.long, device=device), torch.zeros(batch, k, dtype=torch.bool, device=device)
    positions = torch.arange(width, device=device).unsqueeze(0)
    valid = positions < lengths.unsqueeze(1)
    keys = torch.rand(batch, width, generator=generator).to(device).masked_fill(~valid, float("inf"))
    m = min(width, 2 * k)
    pool = keys.topk(m, dim=1, largest=False).indices.sort(dim=1).values  # (B, m) the subsample, in order
    pool_size = torch.clamp(lengths, max=2 * k)  # real entries of each row's pool (the first pool_size)
    slot = torch.arange(m, device=device).unsqueeze(0)
    in_pool = slot < pool_size.unsqueeze(1)
    if sampler == "uniform":
        scores = torch.rand(batch, m, generator=generator).to(device)
    else:
        denom = (pool_size - 1).clamp(min=1).unsqueeze(1).double()
        weights = torch.log(alpha + slot.double() * (beta - alpha) / denom)  # w_j over the pool (max-normalising cancels)
        weights = torch.where(pool_size.unsqueeze(1) > 1, weights, torch.ones_like(weights))
        uniform = torch.rand(batch, m, generator=generator, dtype=torch.float64).to(device).clamp(min=1e-12)
        scores = (torch.log(weights) - torch.log(-torch.log(uniform))).float()  # log w + Gumbel
    scores = scores.masked_fill(~in_pool, float("-inf"))
    take = min(k, m)
    chosen = scores.topk(take, dim=1).indices  # slots of the pool
    index = pool.gather(1, chosen).sort(dim=1).values
    mask = torch.arange(take, device=device).unsqueeze(0) < torch.clamp(lengths, max=k).unsqueeze(1)
    # rows with n <= k keep every position, in order; the masked slots sort last (inf keys): fix them to 0
    index = torch.where(mask, index, torch.zeros_like(index))
    if take < k:
        pad = torch.zeros(batch, k - take, dtype=torch.long, device=device)
        index, mask = torch.cat([index, pad], 1), torch.cat([mask, pad.bool()], 1)
    return index, mask


def dense_all_action_loss(user_states, user_mask, target_embs, target_items, target_mask, tau, extra_embs=None, extra_items=None):
    """PinnerFormer-style dense all-action loss.

    user_states (B, Nh, D) and target_embs (B, Nt, D) are L2-normalised; masks say which slots are real.
    Every (state j of user u, target k of u) is a positive; the targets of the other users are negatives,
    except items that are among u's own targets. ``extra_embs`` (M, D) / ``extra_items`` (M,) are further
    negatives shared by every user (PinnerFormer's random negatives), again except u's own targets. Returns the
    mean over positive pairs of ``-log(e^s_pos / (e^s_pos + sum_neg e^s_neg))``.
    """
    batch, n_targets, dim = target_embs.shape
    flat = target_embs.reshape(-1, dim)
    flat_items = target_items.reshape(-1)
    flat_valid = target_mask.reshape(-1)
    owner = torch.arange(batch, device=flat.device).repeat_interleave(n_targets)
    user_states = user_states / tau  # scaled before the product: one pass over (B, Nh, D), not over the scores
    scores = torch.einsum("bhd,nd->bhn", user_states, flat)  # (B, Nh, B*Nt), already divided by tau
    own_items = torch.where(target_mask, target_items, torch.full_like(target_items, -1))
    same_item = (flat_items.view(1, 1, -1) == own_items.unsqueeze(-1)).any(1)  # (B, B*Nt)
    negative = (owner.view(1, -1) != torch.arange(batch, device=flat.device).view(-1, 1)) & flat_valid.view(1, -1) & ~same_item
    neg_scores = scores.masked_fill(~negative.unsqueeze(1), float("-inf"))  # the mask broadcasts over Nh
    neg_lse = torch.logsumexp(neg_scores, dim=-1)  # (B, Nh)
    if extra_embs is not None and extra_embs.size(0):
        extra = torch.einsum("bhd,md->bhm", user_states, extra_embs)  # (B, Nh, M), divided by tau
        own_extra = (extra_items.view(1, 1, -1) == own_items.unsqueeze(-1)).any(1)  # (B, M)
        extra = extra.masked_fill(own_extra.unsqueeze(1), float("-inf"))
        neg_lse = torch.logaddexp(neg_lse, torch.logsumexp(extra, dim=-1))
    own = torch.arange(batch, device=flat.device).view(-1, 1) * n_targets + torch.arange(n_targets, device=flat.device).view(1, -1)
    pos_scores = torch.gather(scores, 2, own.unsqueeze(1).expand(-1, scores.size(1), -1))  # (B, Nh, Nt)
    loss = torch.logaddexp(pos_scores, neg_lse.unsqueeze(-1)) - pos_scores
    valid = user_mask.unsqueeze(-1) & target_mask.unsqueeze(1)
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def catalogue_loss(users, table, targets, tau, loss_fct=F.cross_entropy):
    """Cross-entropy of L2-normalised ``users`` (B, D) over every item: ``table`` (N - 1, D) holds items 1..N-1.

    The logits get the padding item's column 0 at the dtype's minimum (no probability, no gradient), so column i is
    item i and ``loss_fct`` sees the whole item table: the cold-start protocol's CE masks the cold columns by id.
    """
    logits = users @ table.t() / tau
    return loss_fct(F.pad(logits, (1, 0), value=torch.finfo(logits.dtype).min), targets)


def redraw_layers(encoder):
    """RecBole's TransformerEncoder deep-copies one layer n_layers times, and only its models' _init_weights makes
    them differ: each layer drawn on its own, with PyTorch's default initialisation (the public LEARN's BertEncoder,
    built without from_pretrained, starts the same way)."""
    for module in encoder.modules():
        if module is not encoder and hasattr(module, "reset_parameters"):
            module.reset_parameters()


class LEARN(Pretrainable, FrozenTablesMixin, SequentialRecommender):
    input_type = InputType.POINTWISE
    # what a pre-training run on other datasets takes from this one (recbole_llm/model/pretrained.py): the towers' shape
    # and the sampling of the dense loss; the content table is this dataset's own
    PRETRAIN_INHERITED = (
        "d_model", "n_layers", "n_heads", "inner_size", "hidden_dropout_prob", "attn_dropout_prob", "hidden_act",
        "layer_norm_eps", "embedding_dim", "position_embedding", "item_tower", "length_bucketing", "learn_tau",
        "sampler", "sample_alpha", "sample_beta", "target_ratio", "target_len", "n_history_samples", "n_target_samples",
    )
    ITEM_SPECIFIC = ("content",)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        features = F.normalize(dataset.llm_feature(config["llm_feature"]).float(), dim=-1)
        self.register_frozen("content", features, dataset.llm_feature_key(config["llm_feature"]))
        self.d_model = int(config["d_model"])
        self.embedding_dim = int(config["embedding_dim"])
        self.item_tower = str(config["item_tower"])
        if self.item_tower not in ("a", "b", "c"):
            raise ConfigError(f"config key 'item_tower' must be a, b or c, got '{self.item_tower}'")
        self.use_position = bool(config["position_embedding"])
        self.tau = float(config["learn_tau"])
        self.n_history = int(config["n_history_samples"])
        self.n_target = int(config["n_target_samples"])
        self.sampler = config["sampler"]
        if self.sampler not in ("recency", "uniform"):
            raise ConfigError(f"config key 'sampler' must be recency or uniform, got '{self.sampler}'")
        self.sample_alpha, self.sample_beta = float(config["sample_alpha"]), float(config["sample_beta"])
        self.target_ratio = float(config["target_ratio"])
        self.target_len = config["target_len"]
        self.learn_loss = config["learn_loss"] or "dense"
        if self.learn_loss not in LOSSES:
            raise ConfigError(f"config key 'learn_loss' must be {', '.join(LOSSES[:-1])} or {LOSSES[-1]}, got '{self.learn_loss}'")
        if self.learn_loss == "catalogue" and config["learn_random_negatives"]:
            raise ConfigError("config key 'learn_random_negatives' has no effect with learn_loss: catalogue (every item is a negative): set it to 0")
        self.length_bucketing = config["length_bucketing"] is not False
        self.random_negatives = int(config["learn_random_negatives"] or 0)
        if self.random_negatives < 0:
            raise ConfigError(f"config key 'learn_random_negatives' must be >= 0, got {self.random_negatives}")
        # its random negatives (the others are the batch's training targets) and the catalogue loss's CE: the cold-start
        # protocol takes the cold items out of both (recbole_llm.data.cold.exclude_cold_items_from_loss)
        self.negative_sampler = NegativeSampler(self.n_items)
        self.loss_fct = nn.CrossEntropyLoss()

        self.in_proj = nn.Linear(features.size(1), self.d_model)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.d_model) if self.use_position else None
        self.trm_encoder = TransformerEncoder(
            n_layers=config["n_layers"],
            n_heads=config["n_heads"],
            hidden_size=self.d_model,
            inner_size=config["inner_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"],
        )
        redraw_layers(self.trm_encoder)
        self.LayerNorm = nn.LayerNorm(self.d_model, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.out_proj = nn.Linear(self.d_model, self.embedding_dim)
        if self.item_tower == "c" and features.size(1) != self.embedding_dim:
            projection = torch.empty(features.size(1), self.embedding_dim)
            nn.init.orthogonal_(projection, generator=torch.Generator().manual_seed(int(config["seed"] or 0)))
            self.register_buffer("content_projection", projection)
        else:
            self.content_projection = None
        self.TARGET_SEQ = self.ITEM_ID + TARGET_LIST_SUFFIX
        self._item_cache = None
        self._generator = torch.Generator().manual_seed(int(config["seed"] or 0))
        if config["pretrained_checkpoint"]:  # every tower weight from a run on other datasets; the content table is ours
            transfer_weights(self, config["pretrained_checkpoint"], feature_space(config))

    @classmethod
    def prepare_artifacts(cls, config):
        prepare_llm_features(config)

    @classmethod
    def pretrain_overrides(cls, config):
        """The pre-training run's loss (``pretrain_loss``; the in-batch losses take no random negatives)."""
        from recbole_llm.schema import setting

        loss = setting(config, "pretrain_loss")
        if loss not in LOSSES:
            raise ConfigError(f"config key 'pretrain_loss' must be {', '.join(LOSSES[:-1])} or {LOSSES[-1]}, got '{loss}'")
        keys = {"learn_loss": loss, "learn_random_negatives": 0 if loss in ("catalogue", "pretrain") else config["learn_random_negatives"]}
        if loss != "dense":  # one target per user: towers a and b train the same (PAL on that item), and the weights
            # serve both (one pre-training for the fine-tuning rows of either)
            keys["item_tower"] = "b" if config["item_tower"] in ("a", "b") else config["item_tower"]
        if loss in ("pretrain", "catalogue"):  # the sampling and split keys are not read (a random cut per step)
            keys.update({k: None for k in ("sampler", "sample_alpha", "sample_beta", "target_ratio", "target_len",
                                           "n_history_samples", "n_target_samples")})
        return keys

    # ---- towers ------------------------------------------------------------------------------------------
    def pal_states(self, item_seq):
        """(B, L, embedding_dim) L2-normalised PAL outputs of left-aligned ``item_seq`` (causal)."""
        x = self.in_proj(self.content[item_seq])
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(item_seq.size(1), device=item_seq.device)).unsqueeze(0)
        x = self.dropout(self.LayerNorm(x))
        mask = self.get_attention_mask(item_seq, bidirectional=False)
        hidden = self.trm_encoder(x, mask, output_all_encoded_layers=False)[-1]
        return F.normalize(self.out_proj(hidden), dim=-1)

    def user_states(self, item_seq, item_seq_len, gather_last=False):
        if self.length_bucketing:
            return bucketed_encode(self.pal_states, item_seq, item_seq_len, gather_last=gather_last)
        states = self.pal_states(item_seq)
        return self.gather_indexes(states, item_seq_len - 1) if gather_last else states

    def forward(self, item_seq, item_seq_len):
        """(B, embedding_dim) user embeddings from the whole history."""
        return self.user_states(item_seq, item_seq_len, gather_last=True)

    def single_item_embeddings(self, items):
        """(..., embedding_dim) item tower on single items (every variant at inference; b and c in training)."""
        if self.item_tower == "c":
            content = self.content[items]
            if self.content_projection is not None:
                content = content @ self.content_projection
            return F.normalize(content, dim=-1)
        return self.pal_states(items.reshape(-1, 1)).squeeze(1).view(*items.shape, self.embedding_dim)

    def item_table(self):
        if self._item_cache is not None:
            return self._item_cache
        table = self.single_item_embeddings(torch.arange(self.n_items, device=self.content.device))
        if not self.training:
            self._item_cache = table
        return table

    def train(self, mode=True):
        self._item_cache = None
        return super().train(mode)

    # ---- training ----------------------------------------------------------------------------------------
    def split_point(self, n):
        """Number of history items of a length-``n`` training sequence (>= 1, leaving >= 1 target)."""
        n_target = int(self.target_len) if self.target_len else max(1, int(round(self.target_ratio * n)))
        return min(max(n - n_target, 1), n - 1)

    def split_points(self, n):
        """:meth:`split_point` of a tensor of sequence lengths."""
        if self.target_len:
            n_target = torch.full_like(n, int(self.target_len))
        else:
            n_target = torch.round(self.target_ratio * n.double()).long().clamp(min=1)
        return torch.minimum((n - n_target).clamp(min=1), n - 1)

    def build_batch(self, interaction):
        """Per user: full sequence -> history / target, sampled positions, in tensor operations (no per-row loop)."""
        item_seq, seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.TARGET_SEQ not in interaction:
            raise KeyError(f"LEARN trains on whole user sequences: set train_mode: all_positions (missing '{self.TARGET_SEQ}')")
        targets = interaction[self.TARGET_SEQ]
        device, batch = item_seq.device, item_seq.size(0)
        full = torch.cat([item_seq[:, :1], targets], dim=1)  # the whole sequence: first input, then every target
        length = seq_len.long() + 1
        if self.learn_loss == "catalogue":  # the public finetune: target position uniform in 1..n-1, per step
            draw = torch.rand(batch, generator=self._generator, dtype=torch.float64).to(device)
            cut = torch.minimum(1 + (draw * (length - 1)).long(), length - 1)
        elif self.learn_loss == "pretrain":  # the public pre-training: target position uniform in n//2..n-1 (>= 1)
            draw = torch.rand(batch, generator=self._generator, dtype=torch.float64).to(device)
            low = torch.clamp(length // 2, min=1)
            cut = torch.minimum(low + (draw * (length - low)).long(), length - 1)
        else:
            cut = self.split_points(length)
        cols = torch.arange(full.size(1), device=device).unsqueeze(0)
        max_hist = int(cut.max())
        hist_tensor = full[:, :max_hist].masked_fill(cols[:, :max_hist] >= cut.unsqueeze(1), 0)
        n_target = length - cut
        max_t = int(n_target.max())
        t_cols = torch.arange(max_t, device=device).unsqueeze(0)
        target_seq = full.gather(1, (cut.unsqueeze(1) + t_cols).clamp(max=full.size(1) - 1))
        target_seq = target_seq.masked_fill(t_cols >= n_target.unsqueeze(1), 0)  # each row's targets, left-aligned
        if self.learn_loss in ("next_item", "catalogue", "pretrain"):
            pos_tensor, pos_mask = (cut - 1).unsqueeze(1), torch.ones(batch, 1, dtype=torch.bool, device=device)
            tgt_index, tgt_mask = torch.zeros(batch, 1, dtype=torch.long, device=device), torch.ones(batch, 1, dtype=torch.bool, device=device)
        else:
            args = (self.sampler, self.sample_alpha, self.sample_beta, self._generator)
            pos_tensor, pos_mask = two_stage_sample_batch(cut, self.n_history, *args)
            tgt_index, tgt_mask = two_stage_sample_batch(n_target, self.n_target, *args)
        tgt_tensor = target_seq.gather(1, tgt_index).masked_fill(~tgt_mask, 0)
        full_targets = target_seq if self.item_tower == "a" else None
        return hist_tensor, cut, pos_tensor, pos_mask, tgt_tensor, tgt_index, tgt_mask, full_targets

    def target_embeddings(self, tgt_items, tgt_index, full_targets):
        if self.item_tower == "a":  # PAL over each user's target sequence, causal
            lengths = (full_targets > 0).sum(1)
            states = self.user_states(full_targets, lengths)
            return torch.gather(states, 1, tgt_index.unsqueeze(-1).expand(-1, -1, states.size(-1)))
        return self.single_item_embeddings(tgt_items)

    def calculate_loss(self, interaction):
        hist, hist_len, pos, pos_mask, tgt_items, tgt_index, tgt_mask, full_targets = self.build_batch(interaction)
        states = self.user_states(hist, hist_len)
        user = torch.gather(states, 1, pos.unsqueeze(-1).expand(-1, -1, states.size(-1)))
        if self.learn_loss == "catalogue":
            table = self.single_item_embeddings(torch.arange(1, self.n_items, device=hist.device))
            return catalogue_loss(user[:, 0], table, tgt_items[:, 0], self.tau, self.loss_fct)
        items = self.target_embeddings(tgt_items, tgt_index, full_targets)
        extra_items = extra_embs = None
        if self.random_negatives:  # uniform over the catalogue, embedded by the inference item tower
            extra_items, _ = self.negative_sampler.sample(self.random_negatives, hist.device)
            extra_embs = self.single_item_embeddings(extra_items)
        return dense_all_action_loss(user, pos_mask, items, tgt_items, tgt_mask, self.tau, extra_embs, extra_items)

    # ---- prediction ----------------------------------------------------------------------------------------
    def predict(self, interaction):
        user = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (user * self.item_table()[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_factors(self, interaction):
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]), self.item_table()

    def full_sort_predict(self, interaction):
        users, items = self.full_sort_factors(interaction)
        return users @ items.t()
