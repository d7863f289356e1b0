r"""LLMEmbGRU4Rec: the plugin's GRU4Rec with the LLMEmb adapted item table (input and scoring) and alignment.

Built on :class:`recbole_llm.model.sequential_recommender.gru4rec.GRU4Rec` (RecBole's GRU4Rec plus
``length_bucketing`` and ``train_mode``), so it trains as fast as its baseline.
"""

from recbole_llm.model.adapters import LLMEmbMixin
from recbole_llm.model.sequential_recommender.gru4rec import GRU4Rec


class LLMEmbGRU4Rec(LLMEmbMixin, GRU4Rec):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.setup_llm_embedding(config, dataset, self.embedding_size)

    @classmethod
    def table_dim(cls, config):
        return int(config["embedding_size"])
