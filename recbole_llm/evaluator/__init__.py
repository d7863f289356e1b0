from recbole_llm.evaluator.longtail import GROUPED_METRICS, register_metrics, training_statistics
from recbole_llm.evaluator.collector import LongTailCollector

__all__ = ["GROUPED_METRICS", "register_metrics", "training_statistics", "LongTailCollector"]
