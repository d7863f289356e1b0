r"""LLMEmbBERT4Rec: RecBole's BERT4Rec with the LLMEmb adapted item table and alignment.

The table has one extra learned row after the items: BERT4Rec's mask token keeps its own vector.
"""

from recbole.model.sequential_recommender.bert4rec import BERT4Rec

from recbole_llm.model.adapters import LLMEmbMixin


class LLMEmbBERT4Rec(LLMEmbMixin, BERT4Rec):
    llm_extra_rows = 1

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.setup_llm_embedding(config, dataset, self.hidden_size)
