r"""UniSRec (KDD 2022) as a plugin model over the project's feature files.

Item representation from frozen text embeddings through a MoE adaptor of ``n_exps`` parametric-whitening
experts ``PW(x) = W (dropout(x) - b)`` with a softmax gate (Gaussian noise on the gate logits in training);
``train_stage: inductive_ft`` uses the text only (new items work), ``transductive_ft`` adds an ID
embedding. A SASRec encoder (the plugin's, with positions) reads the adapted embeddings; scores are
cosine / ``temperature`` (0.07) with CE over all items.

Pre-training (``train_stage: pretrain``, the paper's multi-domain stage): the in-batch seq-item contrastive loss
(the sequence against the adapted text of its target, the other targets of the batch as negatives, rows sharing the
target masked) plus ``seq_seq_lambda`` (1e-3) times the seq-seq one (the sequence against an augmented view of
itself: ``item_drop_ratio`` of its items dropped). Scaled down from the public code: the augmentation is always item
drop (theirs picks word drop, a second feature file of the texts with words dropped, one time in ten). Text only, as
``inductive_ft``. ``pretrain_datasets: [beauty, yelp, ml-100k]`` runs this stage on their joined corpus before the
target run (recbole_llm/model/pretrained.py), which then fine-tunes ``inductive_ft`` or ``transductive_ft`` from it;
with ``epochs: 0`` it is evaluated zero-shot.

Transfer: ``pretrained_checkpoint: <plain weights of a UniSRec trained on another dataset>`` (written from your
own checkpoint by ``python -m recbole_llm.export --model_file=... --weights=FILE``; read with ``weights_only=True``,
a full RecBole checkpoint is refused, and so is another model's weights file, e.g. a SASRec's) loads everything but
the item-specific tables; ``freeze_encoder: True`` then fine-tunes only the adaptor (and ID embeddings), the
UniSRec fine-tuning recipe.
"""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_llm.errors import ConfigError
from recbole_llm.model.adapters import prepare_llm_features
from recbole_llm.model.frozen import FrozenTablesMixin
from recbole_llm.model.pretrained import Pretrainable, feature_space, transfer_weights
from recbole_llm.model.sequential_recommender.sasrec import SASRec


class PWLayer(nn.Module):
    """Parametric whitening: W (dropout(x) - b)."""

    def __init__(self, input_size, output_size, dropout=0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(input_size))
        self.lin = nn.Linear(input_size, output_size, bias=False)
        nn.init.normal_(self.lin.weight, mean=0.0, std=0.02)

    def forward(self, x):
        return self.lin(self.dropout(x) - self.bias)


class MoEAdaptor(nn.Module):
    """Mixture of PW experts with a (noisy in training) softmax gate."""

    def __init__(self, n_exps, input_size, output_size, dropout=0.0, noise=True):
        super().__init__()
        self.experts = nn.ModuleList(PWLayer(input_size, output_size, dropout) for _ in range(n_exps))
        self.w_gate = nn.Parameter(torch.zeros(input_size, n_exps))
        self.w_noise = nn.Parameter(torch.zeros(input_size, n_exps))
        self.noise = noise

    def gates(self, x):
        logits = x @ self.w_gate
        if self.noise and self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(x @ self.w_noise) + 1e-2 * torch.randn_like(logits)
        return torch.softmax(logits, dim=-1)

    def forward(self, x):
        expert_out = torch.stack([expert(x) for expert in self.experts], dim=-2)  # (..., n_exps, out)
        return (self.gates(x).unsqueeze(-1) * expert_out).sum(dim=-2)


STAGES = ("inductive_ft", "transductive_ft", "pretrain")


def item_drop(item_seq, item_seq_len, ratio):
    """(item_seq, item_seq_len) with each item dropped with probability ``ratio`` (the first always kept), the kept
    ones moved left in their order: the seq-seq view of UniSRec's pre-training."""
    positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
    real = positions < item_seq_len.unsqueeze(1)
    keep = (torch.rand(item_seq.shape, device=item_seq.device) >= ratio) & real
    keep[:, 0] |= real[:, 0]
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept first, in order
    lengths = keep.sum(1)
    return item_seq.gather(1, order) * (positions < lengths.unsqueeze(1)), lengths.to(item_seq_len.dtype)


def in_batch_nce(queries, keys, same_target):
    """Mean InfoNCE of row i of ``queries`` against row i of ``keys``, the other rows negatives but those whose target
    is the same (``same_target``, diagonal off)."""
    logits = (queries @ keys.t()).masked_fill(same_target, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


class UniSRec(Pretrainable, FrozenTablesMixin, SASRec):
    PRETRAIN_INHERITED = ("hidden_size", "inner_size", "n_layers", "n_heads", "hidden_dropout_prob", "attn_dropout_prob",
                          "hidden_act", "layer_norm_eps", "n_exps", "adaptor_dropout_prob", "temperature", "initializer_range")
    ITEM_SPECIFIC = ("item_embedding", "plm_embedding")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.train_stage = config["train_stage"] or "inductive_ft"
        if self.train_stage not in STAGES:
            raise ConfigError(f"config key 'train_stage' must be one of {', '.join(STAGES)}, got '{self.train_stage}'")
        self.item_drop_ratio = float(config["item_drop_ratio"] if config["item_drop_ratio"] is not None else 0.2)
        self.seq_seq_lambda = float(config["seq_seq_lambda"] if config["seq_seq_lambda"] is not None else 1e-3)
        if not 0.0 <= self.item_drop_ratio < 1.0:
            raise ConfigError(f"config key 'item_drop_ratio' must be in [0, 1), got {self.item_drop_ratio}")
        self.temperature = float(config["temperature"] or 0.07)
        features = dataset.llm_feature(config["llm_feature"])
        self.register_frozen("plm_embedding", features.float(), dataset.llm_feature_key(config["llm_feature"]))
        self.moe_adaptor = MoEAdaptor(int(config["n_exps"] or 8), features.size(1), self.hidden_size, float(config["adaptor_dropout_prob"] or 0.0))
        if self.train_stage in ("inductive_ft", "pretrain"):
            del self.item_embedding  # text only
        if config["pretrained_checkpoint"]:  # the adaptor and the encoder; the item tables are this dataset's
            transfer_weights(self, config["pretrained_checkpoint"], feature_space(config))
        if config["freeze_encoder"]:
            for module in (self.trm_encoder, self.position_embedding, self.LayerNorm):
                for param in module.parameters():
                    param.requires_grad = False

    @classmethod
    def prepare_artifacts(cls, config):
        prepare_llm_features(config)

    @classmethod
    def pretrain_overrides(cls, config):
        """The pre-training run: ``train_stage: pretrain`` with this run's augmentation keys (one pre-training serves
        ``inductive_ft`` and ``transductive_ft`` targets: the stage of the target is not in it)."""
        return {"train_stage": "pretrain", "item_drop_ratio": config["item_drop_ratio"], "seq_seq_lambda": config["seq_seq_lambda"],
                "freeze_encoder": False, "loss_type": "CE"}

    def calculate_loss(self, interaction):
        if self.train_stage != "pretrain":
            return super().calculate_loss(interaction)
        return self.pretrain_loss(interaction)

    def pretrain_loss(self, interaction):
        """seq-item + ``seq_seq_lambda`` * seq-seq in-batch contrastive loss (module docstring)."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.train_mode == "all_positions":
            raise ConfigError("train_stage: pretrain trains on one target per row: set train_mode: prefix")
        pos = interaction[self.POS_ITEM_ID]
        # the rows this step reads (a corpus of many catalogues: never the whole adapted table), renumbered; 0 stays 0
        zero = torch.zeros(1, dtype=item_seq.dtype, device=item_seq.device)
        needed = torch.unique(torch.cat([zero, item_seq.flatten(), pos]))
        table = self.moe_adaptor(self.plm_embedding[needed])
        item_seq, pos = torch.searchsorted(needed, item_seq), torch.searchsorted(needed, pos)
        states = self.forward(item_seq, item_seq_len, table)  # normalised / temperature
        same = (pos.unsqueeze(1) == pos.unsqueeze(0)) & ~torch.eye(len(pos), dtype=torch.bool, device=pos.device)
        loss = in_batch_nce(states, self.output_table(table[pos]), same)
        if self.seq_seq_lambda:
            aug_seq, aug_len = item_drop(item_seq, item_seq_len, self.item_drop_ratio)
            view = F.normalize(self.forward(aug_seq, aug_len, table), dim=-1)
            loss = loss + self.seq_seq_lambda * in_batch_nce(states, view, same)
        return loss

    def item_table(self):
        table = self.moe_adaptor(self.plm_embedding)
        if self.train_stage == "transductive_ft":
            table = table + self.item_embedding.weight
        return table

    def output_states(self, states):
        return F.normalize(states, dim=-1) / self.temperature

    def output_table(self, table):
        return F.normalize(table, dim=-1)
