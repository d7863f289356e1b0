r"""LLM2XBERT4Rec: the LLM2X baseline on the plugin's BERT4Rec: PCA LLM features initialise the trainable item table."""

from recbole_llm.model.sequential_recommender.bert4rec import BERT4Rec

from recbole_llm.model.llm2x import LLM2XMixin


class LLM2XBERT4Rec(LLM2XMixin, BERT4Rec):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.init_item_table_from_llm(config, dataset)
