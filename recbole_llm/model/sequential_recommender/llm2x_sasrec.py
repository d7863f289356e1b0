r"""LLM2XSASRec: the LLM2X baseline of the LLMEmb paper on the plugin's SASRec.

PCA-reduced LLM features (``pca_dim`` = ``hidden_size``) initialise a trainable item table; after that it
is an ordinary SASRec. ``llm2x_scale`` rescales the features to this standard deviation (default: the
backbone's ``initializer_range``; null keeps the raw PCA scale).
"""

from recbole_llm.model.sequential_recommender.sasrec import SASRec
from recbole_llm.model.llm2x import LLM2XMixin


class LLM2XSASRec(LLM2XMixin, SASRec):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.init_item_table_from_llm(config, dataset)
