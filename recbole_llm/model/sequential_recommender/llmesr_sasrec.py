r"""LLMESRSASRec: LLM-ESR on the plugin's SASRec (semantic + collaborative views, shared encoder, distillation).

Both views go through SASRec's own encoder in one stacked batch; train modes, length bucketing and the loss types
of the plugin's SASRec all apply, scoring against the concatenated item table. See
:mod:`recbole_llm.model.llmesr` and docs/llmesr.md.
"""

from recbole_llm.model.llmesr import LLMESRMixin
from recbole_llm.model.sequential_recommender.sasrec import SASRec


class LLMESRSASRec(LLMESRMixin, SASRec):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.setup_dual_view(config, dataset, self.hidden_size)
