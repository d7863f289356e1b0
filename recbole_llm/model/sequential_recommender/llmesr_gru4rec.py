r"""LLMESRGRU4Rec: LLM-ESR on the plugin's GRU4Rec (both views through one GRU, scores on the concatenated table).

See :mod:`recbole_llm.model.llmesr` and docs/llmesr.md.
"""

from recbole_llm.model.llmesr import LLMESRMixin
from recbole_llm.model.sequential_recommender.gru4rec import GRU4Rec


class LLMESRGRU4Rec(LLMESRMixin, GRU4Rec):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.setup_dual_view(config, dataset, self.embedding_size)
