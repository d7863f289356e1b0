"""LLM2X: PCA-reduced LLM text embeddings initialise a trainable item table (a baseline of LLMEmb)."""

import torch

from recbole_llm.errors import ConfigError
from recbole_llm.model.adapters import prepare_llm_features
from recbole_llm.model.cold_id import ColdIdMixin


def resolve_scale(scale, config):
    """``auto`` -> the backbone's ``initializer_range`` (0.02); None keeps the raw scale."""
    if scale == "auto":
        return float(config["initializer_range"] or 0.02)
    return None if scale is None else float(scale)


@torch.no_grad()
def copy_rows(weight, features, scale):
    """Write ``features`` rows 1.. (row 0 = padding) into ``weight``, rescaled to standard deviation ``scale``."""
    rows = features[1:].clone().float()
    if scale is not None:
        rows = rows / rows.std().clamp(min=1e-12) * float(scale)
    weight[1 : features.size(0)] = rows.to(weight.dtype)


class LLM2XMixin(ColdIdMixin):
    def init_item_table_from_llm(self, config, dataset):
        features = dataset.llm_feature(config["llm_feature"])
        width = self.item_embedding.weight.size(1)
        if features.size(1) != width:
            raise ConfigError(
                f"LLM2X needs features as wide as the item table ({width}); '{config['llm_feature']}' has "
                f"{features.size(1)}: set pca_dim: {width} (prepare_artifacts builds it)"
            )
        scale = config["llm2x_scale"] if "llm2x_scale" in config else "auto"
        copy_rows(self.item_embedding.weight, features, resolve_scale(scale, config))
        # cold_id: the rows of items training never saw generated from the same features (recbole_llm/model/cold_id.py)
        if (config["cold_id"] or "none") != "none":
            self.register_buffer("cold_id_features", features.float(), persistent=False)
        self.item_embedding = self.setup_cold_id(config, dataset, self.item_embedding, self.cold_id_content, width)

    def cold_id_content(self, ids):
        return self.cold_id_features[ids]

    @classmethod
    def prepare_artifacts(cls, config):
        prepare_llm_features(config, pca_dim=int(config["hidden_size"]))
