r"""UniSRec (KDD 2022) as a plugin model over the project's feature files.

Item representation from frozen text embeddings through a MoE adaptor of ``n_exps`` parametric-whitening
experts ``PW(x) = W (dropout(x) - b)`` with a softmax gate (Gaussian noise on the gate logits in training);
``train_stage: inductive_ft`` uses the text only (new items work), ``transductive_ft`` adds an ID
embedding. A SASRec encoder (the plugin's, with positions) reads the adapted embeddings; scores are
cosine / ``temperature`` (0.07) with CE over all items.

Transfer: ``pretrained_checkpoint: <plain weights of a UniSRec trained on another dataset>`` (written from your
own checkpoint by ``python -m recbole_llm.export --model_file=... --weights=FILE``; read with ``weights_only=True``,
a full RecBole checkpoint is refused, and so is another model's weights file, e.g. a SASRec's) loads everything but
the item-specific tables; ``freeze_encoder: True`` then fine-tunes only the adaptor (and ID embeddings), the
UniSRec fine-tuning recipe. Pretraining is a UniSRec run on the source dataset (seq-item loss only: the
paper's extra seq-seq contrastive term is not implemented).
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


class UniSRec(Pretrainable, FrozenTablesMixin, SASRec):
    PRETRAIN_INHERITED = ("hidden_size", "inner_size", "n_layers", "n_heads", "hidden_dropout_prob", "attn_dropout_prob",
                          "hidden_act", "layer_norm_eps", "n_exps", "adaptor_dropout_prob", "temperature", "initializer_range")
    ITEM_SPECIFIC = ("item_embedding", "plm_embedding")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.train_stage = config["train_stage"] or "inductive_ft"
        if self.train_stage not in ("inductive_ft", "transductive_ft"):
            raise ConfigError(f"config key 'train_stage' must be inductive_ft or transductive_ft, got '{self.train_stage}'")
        self.temperature = float(config["temperature"] or 0.07)
        features = dataset.llm_feature(config["llm_feature"])
        self.register_frozen("plm_embedding", features.float(), dataset.llm_feature_key(config["llm_feature"]))
        self.moe_adaptor = MoEAdaptor(int(config["n_exps"] or 8), features.size(1), self.hidden_size, float(config["adaptor_dropout_prob"] or 0.0))
        if self.train_stage == "inductive_ft":
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

    def item_table(self):
        table = self.moe_adaptor(self.plm_embedding)
        if self.train_stage == "transductive_ft":
            table = table + self.item_embedding.weight
        return table

    def output_states(self, states):
        return F.normalize(states, dim=-1) / self.temperature

    def output_table(self, table):
        return F.normalize(table, dim=-1)
