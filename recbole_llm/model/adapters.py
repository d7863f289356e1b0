"""LLM item tables for RecBole backbones: the LLMEmb adapter, collaborative alignment, artifacts.

:class:`AdaptedEmbedding` is a drop-in replacement for a backbone's ``item_embedding``: ``.weight`` is the
adapted table ``g(x_i)`` of the frozen LLM features (row 0, the padding id, zeros; optional extra learned
rows such as BERT4Rec's mask token) and calling it looks ids up in that table. RecBole's own SASRec,
GRU4Rec and BERT4Rec code therefore uses ``g(x_i)`` for the input sequence and for scoring unchanged.
In eval mode the table is computed once and reused until the module goes back to training; inside
:meth:`AdaptedEmbedding.cached` (one training step) it is computed once per step.

:class:`LLMEmbMixin` puts it into a backbone and adds ``loss_rec + alpha * loss_align`` against a frozen
teacher item table (see :mod:`recbole_llm.model.teacher`).
"""

import contextlib
import os
from logging import getLogger

import torch
import torch.nn.functional as F
from torch import nn

from recbole_llm.errors import ConfigError
from recbole_llm.model.layers import CachedTableMixin
from recbole_llm.model.frozen import FrozenTablesMixin
from recbole_llm.llm.contrastive import soft_contrastive_loss

ACTIVATIONS = {None: None, "none": None, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def build_adapter(in_dim, out_dim, layers=2, activation=None, dropout=0.0):
    """LLMEmb adapter: ``Linear(d, d/2) -> Linear(d/2, out)`` (paper: no activation, no dropout).

    ``layers=1`` is a single Linear (the paper's "no adapter" ablation); more layers halve the width each
    time. ``activation`` (relu|gelu|tanh) and ``dropout`` go between layers.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(f"adapter_activation must be one of {list(ACTIVATIONS)[1:]}, got '{activation}'")
    if int(layers) < 1:
        raise ConfigError(f"adapter_layers must be >= 1, got {layers}")
    dims = [in_dim] + [max(in_dim // (2**i), out_dim) for i in range(1, int(layers))] + [out_dim]
    modules = []
    for i in range(len(dims) - 1):
        if i > 0:
            if ACTIVATIONS[activation] is not None:
                modules.append(ACTIVATIONS[activation]())
            if dropout:
                modules.append(nn.Dropout(dropout))
        modules.append(nn.Linear(dims[i], dims[i + 1]))
    return nn.Sequential(*modules)


class AdaptedEmbedding(CachedTableMixin, FrozenTablesMixin, nn.Module):
    """``item_embedding`` whose table is ``adapter(LLM features)``; see the module docstring. Frozen features are not
    saved in checkpoints (recbole_llm.model.frozen): ``features_key``, the feature file's cache key, is."""

    def __init__(self, features, out_dim, layers=2, activation=None, dropout=0.0, freeze=True, extra_rows=0, init_std=0.02,
                 source_key=None):
        super().__init__()
        features = torch.as_tensor(features)
        if freeze:  # kept in its feature_dtype (float16/bfloat16 halve it), shared with the dataset's table, not copied
            self.register_frozen("features", features if features.is_floating_point() else features.float(), source_key)
        else:
            self.features = nn.Parameter(features.float().clone())
        self.adapter = build_adapter(features.size(1), out_dim, layers, activation, dropout)
        self.extra = nn.Parameter(torch.randn(extra_rows, out_dim) * init_std) if extra_rows else None
        self.embedding_dim = out_dim
        self.num_embeddings = features.size(0) + extra_rows
        self._cache = None
        self._hold = 0

    def linear_chain(self):
        """The adapter's Linear layers when it is a pure chain of them (paper default), else None."""
        layers = [m for m in self.adapter if not (isinstance(m, nn.Dropout) and (not self.training or m.p == 0))]
        return layers if all(isinstance(m, nn.Linear) for m in layers) else None

    def adapt(self, features):
        """``adapter(features)``; a chain of Linear layers is folded into one matrix first.

        ``x W1^T W2^T = x (W2 W1)^T``: multiplying the small weights first costs (d/2 * d * hidden) once
        instead of (n_items * d * d/2) per step, so the table costs about 3.5x fewer FLOPs forward and backward
        with the same value and gradients (up to float rounding).
        """
        chain = self.linear_chain()
        if chain is None or len(chain) < 2:
            return self.adapter(features)
        weight, bias = chain[0].weight, chain[0].bias
        for layer in chain[1:]:
            if bias is not None:
                bias = layer.weight @ bias if layer.bias is None else torch.addmv(layer.bias, layer.weight, bias)
            else:
                bias = layer.bias
            weight = layer.weight @ weight
        return F.linear(features, weight, bias)

    def adapt_rows(self, features):
        """``adapt`` in float32: a float16/bfloat16 table is converted 65,536 rows at a time (never whole)."""
        if features.dtype == torch.float32:
            return self.adapt(features)
        return torch.cat([self.adapt(features[start : start + 65536].float()) for start in range(0, features.size(0), 65536)])

    def compute_table(self):
        table = self.adapt_rows(self.features)
        table = torch.cat([table.new_zeros(1, table.size(1)), table[1:]])  # padding id 0 stays zero
        if self.extra is not None:
            table = torch.cat([table, self.extra])
        return table

    @property
    def weight(self):
        if self._cache is not None:
            return self._cache
        table = self.compute_table()
        if self._hold or not self.training:
            self._cache = table
        return table

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def rows(self, ids):
        """``weight[ids]`` computed for those rows only (the adapter is row-wise): sampled softmax needs the
        batch's items and its negatives, not the whole table."""
        if self._cache is not None:
            return self._cache[ids]
        n_features = self.features.size(0)
        out = self.adapt(self.features[ids.clamp(max=n_features - 1)].float())
        out = out.masked_fill((ids == 0).unsqueeze(-1), 0.0)  # padding id 0 stays zero
        if self.extra is not None:
            extra = ids >= n_features
            if extra.any():
                out = out.clone()
                out[extra] = self.extra[ids[extra] - n_features]
        return out

    @contextlib.contextmanager
    def cached(self):
        """Compute the table at most once inside the block (one training step)."""
        self._hold += 1
        try:
            yield
        finally:
            self._hold -= 1
            if not self._hold:
                self._cache = None


class LLMEmbMixin(FrozenTablesMixin):
    """Turn a RecBole sequential backbone into its LLMEmb version.

    Config keys: ``llm_feature`` (feature name; default the first of ``llm_features``), ``adapter_layers``
    (2), ``adapter_activation`` (null), ``adapter_dropout`` (0), ``freeze_llm`` (True), ``align_alpha``
    (0.01; 0 disables the alignment), ``align_tau`` (2), ``align_max_items`` (1024 target items per step),
    ``teacher_checkpoint`` (auto | path).
    """

    llm_extra_rows = 0  # BERT4Rec: 1 (its mask token keeps its own learned vector)
    # what it needs from the backbone (recbole_llm/model/hooks.py): its loss, reading the table from item_embedding;
    # it overrides item_rows (ItemTableBackbone) with rows computed on demand
    backbone_hooks = ("calculate_loss",)

    def setup_llm_embedding(self, config, dataset, out_dim):
        features = dataset.llm_feature(config["llm_feature"], keep_dtype=True)
        self.item_embedding = AdaptedEmbedding(
            features,
            out_dim,
            layers=config["adapter_layers"],
            activation=config["adapter_activation"],
            dropout=config["adapter_dropout"],
            freeze=config["freeze_llm"] is not False,
            extra_rows=self.llm_extra_rows,
            source_key=dataset.llm_feature_key(config["llm_feature"]),
        )
        self.align_alpha = float(config["align_alpha"])
        self.align_tau = float(config["align_tau"])
        self.align_max_items = int(config["align_max_items"])
        if self.align_alpha > 0:
            from recbole_llm.model.teacher import load_teacher_table

            table = load_teacher_table(config["teacher_checkpoint"], dataset, out_dim)
            self.register_frozen("teacher_table", table, os.path.basename(str(config["teacher_checkpoint"])))
        getLogger().info(
            f"{type(self).__name__}: item table = adapter({tuple(features.shape)} LLM features) -> {out_dim}, "
            f"alignment alpha {self.align_alpha}"
        )

    def alignment_items(self, interaction):
        """Unique target items of the batch (next items, target lists, BERT4Rec's masked items)."""
        from recbole_llm.model.train_modes import batch_items

        fields = (self.ITEM_ID, self.ITEM_ID + "_target_list", getattr(self, "POS_ITEMS", None))
        return batch_items(interaction, fields, self.align_max_items)

    def alignment_loss(self, interaction):
        items = self.alignment_items(interaction)
        student = self.item_embedding.rows(items)
        teacher = self.teacher_table[items]
        return soft_contrastive_loss(teacher, student, self.align_tau)

    def item_rows(self, ids):
        return self.item_embedding.rows(ids)

    def calculate_loss(self, interaction):
        with self.item_embedding.cached():
            loss = super().calculate_loss(interaction)
            if self.align_alpha > 0:
                loss = loss + self.align_alpha * self.alignment_loss(interaction)
        return loss

    @classmethod
    def prepare_artifacts(cls, config):
        """Features (SCFT-tuned when ``scft: True``); sets the config. The teacher: :meth:`teacher_width`."""
        prepare_llm_features(config)

    @classmethod
    def teacher_width(cls, config):
        """Width of the teacher that recbole_llm.quick_start.prepare_artifacts trains (or finds) for this run, or
        None when none is needed (alignment off, or a teacher_checkpoint path given)."""
        if float(config["align_alpha"]) > 0 and config["teacher_checkpoint"] in (None, "auto"):
            return cls.table_dim(config)
        return None

    @classmethod
    def table_dim(cls, config):
        """Width of the backbone's item table (and so of the teacher)."""
        return int(config["hidden_size"])


def prepare_llm_features(config, pca_dim=None, force=False):
    """Make sure the model's feature file exists; sets ``llm_features``/``llm_feature`` in the config.
    ``force`` rebuilds the extracted file (not SCFT) even when it is up to date.

    ``pca_dim`` (default: the config's) PCA-reduces the features first, SCFT ones included; ``feature_whitening``
    (none | pca | zca) then whitens them (:func:`recbole_llm.llm.extract.ensure_whitened`). With whitening on,
    ``llm_feature_base`` names the un-whitened file (attached too: LLMESR initialises its ID table from its PCA).
    With ``artifact_keys`` (handed by recbole_llm.quick_start.shared_artifact_keys) every named file must record its
    handed key: a file rebuilt since with other settings is one error naming it, never trained on.
    """
    from recbole_llm.llm.extract import WHITENINGS, ensure_whitened

    pca_dim = pca_dim if pca_dim is not None else config["pca_dim"]
    whitening = config["feature_whitening"]
    if whitening not in WHITENINGS:
        raise ConfigError(f"config key 'feature_whitening' must be one of {list(WHITENINGS)}, got '{whitening}'")
    name = config["llm_feature"]
    if name is not None and config["llm_feature_base"] is not None:
        name = config["llm_feature_base"]  # resolved by an earlier call (e.g. before the trials of a search)
    if name is None:
        if config["scft"]:
            try:
                from recbole_llm.llm.scft import ensure_scft_features, settings_from_config
            except ImportError as err:  # name the real cause: a missing extra, or files changed under a running process
                raise RuntimeError(
                    f"scft: True needs recbole_llm.llm.scft, which could not be imported ({err}); reinstall the package "
                    "(pip install -e .) and restart the run"
                ) from err
            settings = settings_from_config(config)
            settings.pca_dim = int(pca_dim or 0)  # LLM2X asks for pca_dim = hidden_size
            name = ensure_scft_features(config, settings)
        else:
            from recbole_llm.llm.extract import ensure_features

            name = ensure_features(config, pca_dim=pca_dim, force=force)
    names = list(config["llm_features"] or [])
    base = name
    if whitening != "none":
        name = ensure_whitened(config, base, whitening, float(config["feature_whitening_eps"]))
        if base not in names:
            names.append(base)
    if name not in names:
        names.append(name)
    config["llm_features"] = names
    config["llm_feature"] = name
    config["llm_feature_base"] = base
    if config["artifact_keys"]:  # handed by the process that built them (a suite, a search, DDP): still those files?
        from recbole_llm.llm.features import check_handed_features

        check_handed_features(config, names)
    return name
