"""The suite engine's public face (the engine itself: :mod:`recbole_llm.bench`): load or build a suite, run it,
read its records and write its report."""

from recbole_llm.bench.execute import run_suite
from recbole_llm.bench.report import write_report
from recbole_llm.bench.spec import DEFAULT_METRICS, load_suite, make_suite
from recbole_llm.bench.store import legacy_records, load_records

__all__ = ["DEFAULT_METRICS", "legacy_records", "load_records", "load_suite", "make_suite", "run_suite", "write_report"]
