"""The record store of a suite: ``<out>/runs/<dataset>/<row>/<seed>.json``, one record per run, written atomically;
the lock that keeps two drivers out of one store; and the check of a record against today's suite (its spec and the
content of its inputs), which resume, the suite's tables and the results page all use."""

import contextlib
import json
import os

from recbole_llm.bench.spec import all_runs, changed_inputs, run_inputs, run_path, run_spec
from recbole_llm.errors import ConfigError

LOCK_NAME = ".suite.lock"


class CorruptRecord(dict):
    """What :func:`read_record` returns for a record that cannot be read: empty (so its run runs again), with the
    reason in ``error``."""

    def __init__(self, path, error):
        super().__init__()
        self.path, self.error = path, error


def read_record(path, former=False):
    """The record at ``path``: {} when there is none, a :class:`CorruptRecord` (one line printed, naming the file) when
    it is truncated, not JSON or not a record (``former``: a run JSON of the former ``--dataset --models`` layout,
    which names no dataset or row)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError) as err:
        reason = f"not readable JSON ({type(err).__name__}: {str(err).splitlines()[0][:80]})"
    else:
        if not isinstance(record, dict):
            reason = f"a JSON {type(record).__name__}, not a record"
        elif record.get("status") == "ok" and not isinstance(record.get("test" if former else "modes"), dict):
            reason = f"a finished record without its '{'test' if former else 'modes'}'"
        elif not all(k in record for k in (("status",) if former else ("dataset", "row", "seed", "status"))):
            reason = "a record without dataset / row / seed / status"
        else:
            return record
    print(f"record {path} is corrupt ({reason}): its run runs again", flush=True)
    return CorruptRecord(path, reason)


def write_record(path, record):
    from recbole_llm.fileio import atomic_write_text

    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, default=str))


def failed_record(suite, dataset, row, seed, error, **extra):
    return {"dataset": dataset, "row": row, "model": suite["rows"][row]["model"], "seed": seed, "status": "failed",
            "error": error, "spec": run_spec(suite, dataset, row, seed), "inputs": run_inputs(suite, dataset, row, seed), **extra}


def record_problem(suite, dataset, row, seed, record, without_spec=None):
    """Why ``record`` does not count for this run of ``suite`` today, or None when it does: other keys, modes or
    config files (its spec), or inputs whose content changed since it ran. A record from before inputs were recorded
    is judged by its spec alone (``record['inputs']`` absent); one without a spec (written by hand, or older than
    specs) gets ``without_spec`` (resume: rerun it; the tables: keep it)."""
    if "spec" not in record and without_spec is not None:
        return without_spec or None
    if record.get("spec") != run_spec(suite, dataset, row, seed):
        return "it ran with other keys, modes or config files"
    if "inputs" in record:
        changed = changed_inputs(record["inputs"], run_inputs(suite, dataset, row, seed))
        if changed:
            return f"its inputs changed since it ran ({', '.join(changed[:3])})"
    return None


def load_records(suite, stale="mark", corrupt=False):
    """The suite's readable records, in run order. A record whose spec or inputs no longer match the suite is
    ``stale='mark'``: kept with ``stale`` set to the reason (the tables leave it out and name it); ``'keep'``: kept
    as it is. A corrupt record is left out (named on stdout), or returned as its :class:`CorruptRecord` with
    ``corrupt=True``."""
    records = []
    for dataset, row, seed in all_runs(suite):
        path = run_path(suite, dataset, row, seed)
        record = read_record(path)
        if isinstance(record, CorruptRecord) and corrupt:
            records.append(record)
            continue
        if not record:
            continue
        if stale == "mark":
            problem = record_problem(suite, dataset, row, seed, record, without_spec="")
            if problem:
                record = dict(record, stale=problem)
        records.append(record)
    return records


def check_store(suite):
    """Refuse, in one line, an ``out`` folder that holds records of the former ``--dataset --models`` layout."""
    runs = os.path.join(suite["out"], "runs")
    flat = sorted(f for f in os.listdir(runs) if f.endswith(".json")) if os.path.isdir(runs) else []
    if flat:
        raise ConfigError(f"'{suite['out']}' holds records of the former layout (runs/{flat[0]}, runs/<Model>-<seed>.json), "
                          "which this engine does not resume: pass another --out (python -m recbole_llm.results still reads it)")


@contextlib.contextmanager
def store_lock(suite):
    """Hold ``<out>/.suite.lock`` (POSIX flock) while a driver runs the suite: a second driver on the same folder is
    refused in one line (it would run the same runs again, and the last write would win)."""
    import fcntl

    os.makedirs(suite["out"], exist_ok=True)
    path = os.path.join(suite["out"], LOCK_NAME)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"suite folder '{suite['out']}' is in use by another driver ({holder}, lock {path}): wait for it "
                              "to finish or pass another out folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ---- the former benchmarks/llmemb_vs_sasrec.py results -------------------------------------------------------------
def legacy_records(paths):
    """Records from raw JSONs of benchmarks/llmemb_vs_sasrec.py ({dataset: {model: [runs]}}); an ablation (its
    ``llm_keys``) is its own row 'Model [keys]'. A run found in several files counts once; two different results
    for one dataset, row and seed are an error naming both files."""
    seen, records = {}, []
    for path in paths:
        try:
            with open(path) as handle:
                data = json.load(handle)
        except (OSError, ValueError) as err:
            raise ConfigError(f"--from_json: cannot read '{path}' ({err})") from None
        if not isinstance(data, dict) or not all(isinstance(m, dict) for m in data.values()):
            raise ConfigError(f"--from_json: '{path}' is not a raw result of benchmarks/llmemb_vs_sasrec.py "
                              "({dataset: {model: [runs]}}); pass those files only")
        for dataset, models in data.items():
            for model, runs in models.items():
                if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
                    raise ConfigError(f"--from_json: '{path}': {dataset} {model} must hold a list of runs")
                for run in sorted(runs, key=lambda r: bool(r.get("llm_keys"))):
                    row = f"{model} [{run['llm_keys']}]" if run.get("llm_keys") else model
                    key = (dataset, row, run.get("seed"))
                    if key in seen:
                        if seen[key][1] != run:
                            raise ConfigError(f"--from_json: '{path}' and '{seen[key][0]}' hold different results for "
                                              f"{dataset} {row} seed {key[2]}; keep one of them")
                        continue
                    seen[key] = (path, run)
                    records.append(legacy_record(dataset, row, model, run, path))
    return records


def legacy_record(dataset, row, model, run, path="--from_json"):
    if "error" in run:
        return {"dataset": dataset, "row": row, "model": model, "seed": run.get("seed"), "status": "failed", "error": run["error"]}
    missing = [k for k in ("sec_per_epoch", "epochs", "params") if k not in run]
    if missing:
        raise ConfigError(f"--from_json: '{path}': the {dataset} {row} run of seed {run.get('seed')} has no '{missing[0]}'")
    return {"dataset": dataset, "row": row, "model": model, "seed": run.get("seed"), "status": "ok",
            "modes": {m: run[m] for m in ("full", "uni100") if m in run}, "sec_per_epoch": run["sec_per_epoch"],
            "epochs": run["epochs"], "params": run["params"]}
