r"""LLMEmbSASRec: SASRec whose item table is the LLMEmb adapter over frozen LLM features (RAT stage).

The adapted table ``g(x_i)`` replaces SASRec's item embedding for the input sequence and for scoring
(tied); positions stay learned. ``loss = loss_rec + align_alpha * loss_align`` against a frozen SASRec
teacher. Built on the plugin's SASRec: length bucketing, ``train_mode``, ``loss_type`` CE/BPR/BCE and
``bidirectional_attention`` (the official model has no causal mask) all apply. See docs/llmemb.md.
"""

from recbole_llm.model.adapters import LLMEmbMixin
from recbole_llm.model.sequential_recommender.sasrec import SASRec


class LLMEmbSASRec(LLMEmbMixin, SASRec):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.setup_llm_embedding(config, dataset, self.hidden_size)
