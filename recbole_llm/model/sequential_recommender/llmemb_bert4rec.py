r"""LLMEmbBERT4Rec: the plugin's BERT4Rec with the LLMEmb adapted item table and alignment.

Built on :class:`recbole_llm.model.sequential_recommender.bert4rec.BERT4Rec` (RecBole's BERT4Rec plus
``length_bucketing`` and ``train_mode``), so it trains as fast as its baseline. The table has one extra
learned row after the items: BERT4Rec's mask token keeps its own vector.
"""

from recbole_llm.model.adapters import LLMEmbMixin
from recbole_llm.model.sequential_recommender.bert4rec import BERT4Rec


class LLMEmbBERT4Rec(LLMEmbMixin, BERT4Rec):
    llm_extra_rows = 1

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.setup_llm_embedding(config, dataset, self.hidden_size)
