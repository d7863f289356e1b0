"""LLM2X: PCA-reduced LLM text embeddings initialise a trainable item table (a baseline of LLMEmb)."""

import torch

from recbole_llm.model.adapters import prepare_llm_features


class LLM2XMixin:
    def init_item_table_from_llm(self, config, dataset):
        features = dataset.llm_feature(config["llm_feature"])
        width = self.item_embedding.weight.size(1)
        if features.size(1) != width:
            raise ValueError(
                f"LLM2X needs features as wide as the item table ({width}); '{config['llm_feature']}' has "
                f"{features.size(1)}: set pca_dim: {width} (prepare_artifacts builds it)"
            )
        scale = config["llm2x_scale"] if "llm2x_scale" in config else "auto"
        if scale == "auto":
            scale = float(config["initializer_range"] or 0.02)
        with torch.no_grad():
            rows = features[1:].clone()
            if scale is not None:
                rows = rows / rows.std().clamp(min=1e-12) * float(scale)
            self.item_embedding.weight[1 : features.size(0)] = rows

    @classmethod
    def prepare_artifacts(cls, config):
        prepare_llm_features(config, pca_dim=int(config["hidden_size"]))
