"""recbole-llm: LLM-powered item embeddings (LLMEmb, LEARN, UniSRec) as a RecBole plugin."""

# RecBole itself is checked by recbole_llm.compat at its import: without RecBole (installed without the README's
# --no-deps step) an ImportError in one line, with another version than its patches target one warning line
from recbole_llm.compat import import_recbole_models

import_recbole_models()  # once, and switch off the anomaly detection that RecBole's sine.py enables

from recbole_llm import evaluator  # noqa: E402,F401  (registers the long-tail metrics)
from recbole_llm.config import Config  # noqa: E402
from recbole_llm.quick_start import run_recbole_llm  # noqa: E402
from recbole_llm.utils import UnknownNameError, create_dataset, get_model, get_trainer  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Config", "run_recbole_llm", "get_model", "get_trainer", "create_dataset", "UnknownNameError"]
