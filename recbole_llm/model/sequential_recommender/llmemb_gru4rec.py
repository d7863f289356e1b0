r"""LLMEmbGRU4Rec: RecBole's GRU4Rec with the LLMEmb adapted item table (input and scoring) and alignment."""

from recbole.model.sequential_recommender.gru4rec import GRU4Rec

from recbole_llm.model.adapters import LLMEmbMixin


class LLMEmbGRU4Rec(LLMEmbMixin, GRU4Rec):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.setup_llm_embedding(config, dataset, self.embedding_size)

    @classmethod
    def table_dim(cls, config):
        return int(config["embedding_size"])
