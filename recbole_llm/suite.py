"""The suite engine's public face (the engine itself: :mod:`recbole_llm.bench`): load or build a suite, run it,
read its records and write its report."""

from recbole_llm.bench.execute import execute_run, run_suite
from recbole_llm.bench.report import build_tables, write_report
from recbole_llm.bench.spec import DEFAULT_METRICS, load_suite, make_suite, run_config, run_path, run_spec
from recbole_llm.bench.store import legacy_records, load_records, write_record

__all__ = ["DEFAULT_METRICS", "build_tables", "execute_run", "legacy_records", "load_records", "load_suite", "make_suite",
           "run_config", "run_path", "run_spec", "run_suite", "write_record", "write_report"]
