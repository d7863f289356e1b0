r"""LLMESRBERT4Rec: LLM-ESR on the plugin's BERT4Rec.

The mask token has a row in both tables; cross-attention between the views is bidirectional (padded keys
masked), like BERT4Rec's own attention. A user's vector for the distillation is the state at the last real
position (the official code's), of the masked training input for the user and of the plain sequence for its
similar users. See :mod:`recbole_llm.model.llmesr` and docs/llmesr.md.
"""

from recbole_llm.model.llmesr import LLMESRMixin
from recbole_llm.model.sequential_recommender.bert4rec import BERT4Rec


class LLMESRBERT4Rec(LLMESRMixin, BERT4Rec):
    llm_extra_rows = 1
    cross_attention_causal = False

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.setup_dual_view(config, dataset, self.hidden_size)

    def sequence_vectors(self, seqs, lens):
        return self.gather_indexes(self.forward(seqs), lens - 1)
