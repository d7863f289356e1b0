"""The benchmark engine: every ``python -m recbole_llm.benchmark`` run is a suite (docs/benchmarks.md, benchmarks/suites/).

A suite file declares what to compare (``--dataset --models ...`` builds the same dict from its arguments,
recbole_llm/benchmark.py); this module runs it, resumably, and writes the tables and plots::

    datasets: [scientific]              # each dataset gets every row and seed
    data_path: ../shared/datasets       # relative to the current folder (null: dataset_atomic/)
    seeds: [2020, 2021, 2022]
    eval_modes: [full, uni100]          # test metrics of the best checkpoint in each mode (training validates in the first)
    budget: {epochs: 50, stopping_step: 10}
    config: {hidden_size: 64}           # keys of every row
    config_files: [my.yaml]             # YAML files every run reads (as --config_files), relative to the current folder
    rows:                               # a variant: a model plus its own keys; its own row in the tables
      SASRec: {model: SASRec, train_mode: all_positions, train_batch_size: 128}
      LLMEmbSASRec: {model: LLMEmbSASRec, train_mode: all_positions, train_batch_size: 128}
    models: [GRU4Rec]                   # shorthand: a row named after the model, no keys of its own
    pairs: [[SASRec, LLMEmbSASRec]]     # relative change of the second against the first, paired by seed, 95% interval
    metrics: [ndcg@10, ndcg_head@10, ndcg_tail@10, hit@10]
    workers: 1                          # parallel runs (each a process with cores // workers threads)
    rerun_failed: true                  # a rerun retries failed runs (false: keeps them, as --dataset --models does)
    popularity_buckets: true            # NDCG@10 per target-popularity bucket of every run (one more test pass per mode)
    out: benchmarks/out/my_suite

One result store: ``<out>/runs/<dataset>/<row>/<seed>.json``, each record with the hash of what it ran with
(:func:`run_spec`): a rerun skips a record with the same hash that finished (or failed, without ``rerun_failed``) and
runs the others again, so changed keys, modes or config files rerun. ``<out>/results.md`` (per-row table, cold
columns under the cold-start protocol, paired changes), ``results.csv`` (mean, std and 95% interval of every metric),
``results.json`` (the records) and per dataset and mode the plots ``ndcg_head_tail_<dataset>_<mode>.png``,
``ndcg_by_popularity_<dataset>_<mode>.png`` and (cold-start protocol) ``ndcg_warm_cold_<dataset>_<mode>.png``. An
``--out`` folder of the former ``--dataset --models`` layout (``runs/<Model>-<seed>.json``) is refused in one line
(recbole_llm.results still reads it). ``--from_json=a.json,b.json`` builds the tables from raw results of the former
benchmarks/llmemb_vs_sasrec.py instead of running (docs/benchmarks.md's older tables).
"""

import csv
import json
import math
import os
import statistics
import sys
import time
import traceback

from recbole_llm.errors import ConfigError
from recbole_llm.fileio import read_yaml

SUITE_KEYS = {"datasets", "data_path", "seeds", "eval_modes", "budget", "config", "config_files", "rows", "models", "pairs",
              "metrics", "workers", "rerun_failed", "popularity_buckets", "out"}
DEFAULT_METRICS = ["ndcg@10", "ndcg_head@10", "ndcg_tail@10", "hit@10", "hit_head@10", "hit_tail@10"]
COLD_SHOWN = ["ndcg_warm@10", "ndcg_cold@10", "recall_warm@10", "recall_cold@10", "targets_cold"]  # under the cold protocol
CSV_METRICS = ["ndcg@10", "hit@10", "recall@10", "ndcg_head@10", "ndcg_tail@10", "hit_head@10", "hit_tail@10",
               "ndcg_short@10", "ndcg_long@10", "ndcg_warm@10", "ndcg_cold@10", "recall_warm@10", "recall_cold@10",
               "targets_warm", "targets_cold"]
CI_METRICS = ["ndcg@10", "ndcg_tail@10"]  # results.csv: the interval's bounds too (every metric: its half-width)
POP_EDGES = (0, 2, 5, 10, 20, 50)  # popularity buckets: [0,2), [2,5), ..., [50, inf)


# ---- the suite file -------------------------------------------------------------------------------------------
def load_suite(path):
    """The suite of ``path`` with every default filled in; a bad file is one ConfigError naming the key."""
    suite = read_yaml(path, "suite file", "pass --suite=<file.yaml>")
    if not isinstance(suite, dict):
        raise ConfigError(f"suite file '{path}' must be a mapping of suite keys (known: {', '.join(sorted(SUITE_KEYS))})")
    return make_suite(suite, path)


def make_suite(suite, path, name=None):
    """The suite dict of ``suite`` (a suite file's mapping) with every default filled in; ``path`` names it in errors."""
    unknown = sorted(set(suite) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"suite file '{path}': unknown key '{unknown[0]}' (known: {', '.join(sorted(SUITE_KEYS))})")
    check_suite_types(path, suite)
    rows = {name: dict(keys or {}) for name, keys in (suite.get("rows") or {}).items()}
    for model in suite.get("models") or []:
        rows.setdefault(model, {"model": model})
    for row, keys in rows.items():
        if "model" not in keys:
            raise ConfigError(f"suite file '{path}': row '{row}' has no 'model' key (write {row}: {{model: <Model>, ...}})")
    if not rows or not suite.get("datasets"):
        raise ConfigError(f"suite file '{path}' needs 'datasets' and 'rows' (or 'models')")
    pairs = [tuple(p) for p in suite.get("pairs") or []]
    for pair in pairs:
        if len(pair) != 2 or any(row not in rows for row in pair):
            raise ConfigError(f"suite file '{path}': pair {list(pair)} must name two rows of {sorted(rows)}")
    modes = list(suite.get("eval_modes") or ["full"])
    if any(m not in ("full", "uni100") for m in modes):
        raise ConfigError(f"suite file '{path}': eval_modes must be full and/or uni100, got {modes}")
    name = name or os.path.splitext(os.path.basename(path))[0]
    return {
        "name": name, "path": path, "datasets": list(suite["datasets"]), "data_path": suite.get("data_path"),
        "seeds": [int(s) for s in suite.get("seeds") or [2020]], "eval_modes": modes,
        "config": {**(suite.get("config") or {}), **(suite.get("budget") or {})}, "rows": rows, "pairs": pairs,
        "config_files": [os.path.abspath(f) for f in suite.get("config_files") or []],
        "metrics": list(suite.get("metrics") or DEFAULT_METRICS), "workers": int(suite.get("workers") or 1),
        "rerun_failed": suite.get("rerun_failed", True) is not False,
        "popularity_buckets": suite.get("popularity_buckets", True) is not False,
        "out": os.path.abspath(suite.get("out") or os.path.join("benchmarks", "out", name)), "header": None,
    }


_KINDS = {"datasets": (list, str, "a list of dataset names"), "seeds": (list, int, "a list of integers"),
          "eval_modes": (list, str, "a list of full / uni100"), "models": (list, str, "a list of model names"),
          "metrics": (list, str, "a list of metric names such as ndcg@10"), "pairs": (list, list, "a list of [row, row] pairs"),
          "rows": (dict, dict, "a mapping of row name to {model: ..., keys ...}"), "config": (dict, None, "a mapping of config keys"),
          "budget": (dict, None, "a mapping such as {epochs: 50}"), "workers": (int, None, "an integer >= 1"),
          "config_files": (list, str, "a list of YAML file paths")}


def check_suite_types(path, suite):
    """One ConfigError naming the key whose value has the wrong kind (``datasets: scientific`` instead of a list)."""
    for key, (container, item, what) in _KINDS.items():
        value = suite.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, container) or (
                item is not None and not all(isinstance(v, item) and not isinstance(v, bool) for v in (value.values() if container is dict else value))):
            raise ConfigError(f"suite file '{path}': key '{key}' must be {what}, got {value!r}")
    if suite.get("workers") is not None and suite["workers"] < 1:
        raise ConfigError(f"suite file '{path}': key 'workers' must be an integer >= 1, got {suite['workers']!r}")
    for key in ("rerun_failed", "popularity_buckets"):
        if suite.get(key) is not None and not isinstance(suite[key], bool):
            raise ConfigError(f"suite file '{path}': key '{key}' must be true or false, got {suite[key]!r}")


def run_spec(suite, dataset, row, seed):
    """What a finished record must have been run with to count for this suite: the model, its config, the modes, the
    config files (when there are any: the hash of a suite without them is what it was before the key existed)."""
    import hashlib

    model, config = run_config(suite, dataset, row, seed)
    config = {k: v for k, v in config.items() if k not in ("checkpoint_dir", "show_progress", "state")}
    payload = [model, config, suite["eval_modes"]] + ([suite["config_files"]] if suite.get("config_files") else [])
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_config(suite, dataset, row, seed):
    """(model, config dict) of one run: the suite's keys, the row's, the seed, validation in the first mode."""
    keys = dict(suite["rows"][row])
    model = keys.pop("model")
    config = {**suite["config"], **keys, "seed": seed, "show_progress": False, "state": "WARNING",
              "checkpoint_dir": os.path.join(suite["out"], "saved", dataset, row)}
    config["eval_args"] = {**(config.get("eval_args") or {}), "mode": suite["eval_modes"][0]}
    if suite["data_path"]:
        config["data_path"] = os.path.abspath(suite["data_path"])
    return model, config


def run_path(suite, dataset, row, seed):
    return os.path.join(suite["out"], "runs", dataset, row.replace("/", "_"), f"{seed}.json")


def check_store(suite):
    """Refuse, in one line, an ``out`` folder that holds records of the former ``--dataset --models`` layout."""
    runs = os.path.join(suite["out"], "runs")
    flat = sorted(f for f in os.listdir(runs) if f.endswith(".json")) if os.path.isdir(runs) else []
    if flat:
        raise ConfigError(f"'{suite['out']}' holds records of the former layout (runs/{flat[0]}, runs/<Model>-<seed>.json), "
                          "which this engine does not resume: pass another --out (python -m recbole_llm.results still reads it)")


# ---- running --------------------------------------------------------------------------------------------------
def all_runs(suite):
    """(dataset, row, seed) of every run of the suite, in file order."""
    return [(dataset, row, seed) for dataset in suite["datasets"] for row in suite["rows"] for seed in suite["seeds"]]


def read_record(path):
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def pending_runs(suite):
    """(dataset, row, seed) of every run to run, in file order: the one resume rule. A record with this run's spec is
    kept when it finished, and when it failed unless the suite says ``rerun_failed``; any other record runs again."""
    pending = []
    for dataset, row, seed in all_runs(suite):
        record = read_record(run_path(suite, dataset, row, seed))
        same = record.get("spec") == run_spec(suite, dataset, row, seed)
        if same and (record.get("status") == "ok" or not suite.get("rerun_failed", True)):
            print(f"{dataset} {row} seed {seed}: done before ({record.get('status')}), skipping", flush=True)
            continue
        if record and not same:
            print(f"{dataset} {row} seed {seed}: its record ran with other keys, modes or config files: running it again", flush=True)
        pending.append((dataset, row, seed))
    return pending


def execute_run(suite, dataset, row, seed, shared=None, threads=None, run_id=None):
    """Train one run (``shared``: the artifact keys :func:`prepare_runs` resolved), test its best checkpoint in every
    mode, write its record; returns the record."""
    import torch

    from recbole_llm.quick_start import run_recbole_llm

    if threads:
        torch.set_num_threads(threads)
    model, config = run_config(suite, dataset, row, seed)
    config = {**config, **(shared or {})}
    record = {"dataset": dataset, "row": row, "model": model, "seed": seed, "keys": suite["rows"][row],
              "spec": run_spec(suite, dataset, row, seed), "run_id": run_id, "config": config}
    start = time.perf_counter()
    try:
        result = run_recbole_llm(model=model, dataset=dataset, config_file_list=suite.get("config_files") or None,
                                 config_dict=dict(config))
        record.update(status="ok", modes=test_modes(suite, result), sec_per_epoch=result["train_seconds"],
                      epochs=result["epochs_run"], params=result["num_params"], model_file=result["model_file"],
                      eval_seconds=result.get("eval_seconds"), torch_threads=torch.get_num_threads())
        if suite.get("popularity_buckets"):  # a suite from an older driver has no such key: none
            add_popularity_buckets(record, suite["eval_modes"])
    except Exception as err:  # recorded; the other runs go on and the command exits 1
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    record["wall_seconds"] = time.perf_counter() - start
    write_record(run_path(suite, dataset, row, seed), record)
    print(run_summary(record), flush=True)
    return record


def test_modes(suite, result):
    """{mode: test metrics} of a finished run: the first mode from training, the others from its best checkpoint."""
    from recbole_llm.quick_start import evaluate_model_file

    modes = {suite["eval_modes"][0]: dict(result["test_result"])}
    for mode in suite["eval_modes"][1:]:
        modes[mode] = dict(evaluate_model_file(result["model_file"], {"eval_args": {"mode": mode}}))
    return {m: {k: float(v) for k, v in r.items()} for m, r in modes.items()}


def add_popularity_buckets(record, modes):
    try:
        record["popularity_buckets"] = {mode: popularity_buckets(record["model_file"], mode) for mode in modes}
    except Exception as err:  # the table still stands without the plot data
        record["popularity_buckets_error"] = f"{type(err).__name__}: {err}"


def bucket_labels():
    edges = list(POP_EDGES) + [None]
    return [f"{lo}-{hi - 1}" if hi is not None else f"{lo}+" for lo, hi in zip(edges[:-1], edges[1:])]


def popularity_buckets(model_file, eval_mode):
    """NDCG@10 and row count per popularity bucket of the test target items (a test pass of the checkpoint)."""
    import numpy as np
    from recbole.evaluator.metrics import NDCG

    from recbole_llm.compat import capture_data_struct
    from recbole_llm.evaluator.longtail import ITEM_POP_KEY, TARGET_KEY
    from recbole_llm.quick_start import load_model_file
    from recbole_llm.utils import get_trainer

    config, model, train_data, _, test_data = load_model_file(model_file, {"eval_args": {"mode": eval_mode}})
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train_data)
    captured = capture_data_struct(trainer)
    trainer.evaluate(test_data, load_best_model=False)
    struct = captured["struct"]
    metric = NDCG(config)
    pos_index, pos_len = metric.used_info(struct)
    ndcg = metric.metric_info(pos_index, pos_len)[:, 9 if pos_index.shape[1] >= 10 else -1]
    pop = struct.get(ITEM_POP_KEY)[struct.get(TARGET_KEY).long()].numpy()
    bucket = np.digitize(pop, POP_EDGES[1:])
    result = {}
    for index, label in enumerate(bucket_labels()):
        rows = bucket == index
        result[label] = {"ndcg@10": float(ndcg[rows].mean()) if rows.any() else None, "rows": int(rows.sum())}
    return result


def run_summary(record):
    text = f"{record['dataset']} {record['row']} seed {record['seed']}: {record['status']}"
    if record.get("wall_seconds") is not None:
        text += f" in {record['wall_seconds']:.0f} s"
    if record.get("status") == "ok":
        return text + f", NDCG@10 {record['modes'][next(iter(record['modes']))].get('ndcg@10', float('nan')):.4f}"
    return text + f" ({record.get('error', '').splitlines()[0][:200] if record.get('error') else ''})"


def write_record(path, record):
    from recbole_llm.fileio import atomic_write_text

    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, default=str))


def failed_record(suite, dataset, row, seed, error, **extra):
    return {"dataset": dataset, "row": row, "model": suite["rows"][row]["model"], "seed": seed, "status": "failed",
            "error": error, "spec": run_spec(suite, dataset, row, seed), **extra}


def prepare_runs(suite, pending):
    """Build every run's artifacts (features, SCFT, teacher: quick_start.shared_artifact_keys, the path tune.py and the
    parity harness use too) here, before any run starts; returns (dataset, row, seed, the config keys naming the
    artifacts) of the runs that can start: they only read what was built. Cached artifacts are found again for the
    next seeds; those that depend on the seed (the teacher under the cold-start protocol) are built per seed. A run
    whose artifacts cannot be built is recorded as failed."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import shared_artifact_keys

    ready = []
    for dataset, row, seed in pending:
        model, config = run_config(suite, dataset, row, seed)
        start = time.perf_counter()
        try:
            shared = shared_artifact_keys(Config(model=model, dataset=dataset, config_file_list=suite.get("config_files") or None,
                                                 config_dict=config))
        except Exception as err:
            record = failed_record(suite, dataset, row, seed, f"{type(err).__name__}: {err}", stage="prepare_artifacts",
                                   traceback=traceback.format_exc(), wall_seconds=time.perf_counter() - start)
            write_record(run_path(suite, dataset, row, seed), record)
            print(run_summary(record), flush=True)
            continue
        if shared:
            print(f"{dataset} {row} seed {seed}: artifacts ready ({time.perf_counter() - start:.0f} s): {shared}", flush=True)
        ready.append((dataset, row, seed, shared))
    return ready


def run_suite(suite):
    """Run what is missing, then write the tables and plots; returns the exit code (1 when a run failed). A stop
    (SIGTERM, Ctrl-C) ends the running workers, writes the tables of the finished runs and goes on up."""
    check_store(suite)
    pending = prepare_runs(suite, pending_runs(suite))
    workers = max(1, min(suite["workers"], len(pending)))
    try:
        if workers == 1:
            for run in pending:
                execute_run(suite, *run)
        else:
            run_in_workers(suite, pending, workers)
    except BaseException:
        records = load_records(suite)
        try:
            write_report(suite, records, f"Stopped with {sum(r.get('status') == 'ok' for r in records)} of {len(all_runs(suite))} "
                                         f"runs finished ({time.strftime('%Y-%m-%d')}); rerun the suite to finish it.")
        except Exception as err:  # the stop (or the error) is what the user needs to see, not a report failure
            print(f"(the tables of the finished runs could not be written: {type(err).__name__}: {err})", flush=True)
        raise
    records = load_records(suite)
    write_report(suite, records)
    return failure_code(suite, records)


def failure_code(suite, records):
    """1, naming the first failed runs on stderr, when a run failed (the tables are written either way); else 0."""
    failed = [r for r in records if r.get("status") != "ok"]
    if not failed:
        return 0
    first = "; ".join(f"{r['dataset']} {r['row']} seed {r['seed']}: {(r.get('error') or '').splitlines()[0][:120] if r.get('error') else ''}"
                      for r in failed[:3])
    retry = ("run the same command again to retry them" if suite.get("rerun_failed", True)
             else "rerun them with --rerun_failed (a suite file: rerun_failed: true)")
    print(f"error: {len(failed)} of {len(records)} runs failed ({first}); {retry}", file=sys.stderr, flush=True)
    return 1


def worker_command(job_file):
    """Command line of one suite worker process (tests replace it)."""
    return [sys.executable, "-m", "recbole_llm.suite", job_file]


def tail_of(path, lines=20):
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def run_in_workers(suite, pending, workers):
    """The pending runs in ``workers`` fresh processes (recbole_llm/workers.py), first in first out, each with
    ``cores // workers`` threads and its output in ``<out>/logs/<dataset>-<row>-<seed>.log``; a worker that dies
    without its record (killed, out of memory) gets a failed one with its exit code and the end of its log."""
    import uuid

    import recbole_llm
    from recbole_llm.workers import available_cores, run_workers, thread_env

    threads = max(1, available_cores() // workers)
    jobs = [{"name": f"{dataset}-{row}-{seed}".replace("/", "_"), "suite": suite, "run": [dataset, row, seed], "shared": shared,
             "threads": threads, "run_id": uuid.uuid4().hex[:12]} for dataset, row, seed, shared in pending]
    log_dir = os.path.join(suite["out"], "logs")
    print(f"{len(jobs)} runs in {workers} worker processes, {threads} thread(s) each; logs in {log_dir}", flush=True)

    def on_exit(job, returncode, log_path, seconds):
        dataset, row, seed = job["run"]
        path = run_path(suite, dataset, row, seed)
        record = read_record(path)
        if record.get("run_id") != job["run_id"]:  # an older record, not this worker's result
            record = failed_record(suite, dataset, row, seed, f"worker exited with code {returncode} without a result (log: {log_path})",
                                   traceback=tail_of(log_path), run_id=job["run_id"], wall_seconds=seconds)
            write_record(path, record)
        print(run_summary(record), flush=True)

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(recbole_llm.__file__)))
    run_workers(jobs, workers, log_dir, lambda job_file: worker_command(job_file), on_exit, thread_env(threads, package_root))


def worker_main(job_file):
    """Entry point of a suite worker process: run the job of ``job_file`` (its record is written by execute_run)."""
    with open(job_file) as handle:
        job = json.load(handle)
    record = execute_run(job["suite"], *job["run"], shared=job["shared"], threads=job["threads"], run_id=job["run_id"])
    if record.get("traceback"):
        print(record["traceback"], file=sys.stderr, flush=True)  # into the worker's log
    return 0


def load_records(suite):
    paths = [run_path(suite, *run) for run in all_runs(suite)]
    return [read_record(path) for path in paths if os.path.isfile(path)]


# ---- statistics and tables --------------------------------------------------------------------------------------
def relative_change(base_rows, other_rows, value):
    """(change, half-width or None, how) of ``other / base - 1``, ``value(record)`` giving a run's number.

    Paired when at least two seeds ran for both: mean and t interval of the per-seed changes. Otherwise the
    ratio of the means, with a delta-method interval (t with min(n) - 1 degrees of freedom) when each side has
    at least two runs.
    """
    from recbole_llm.reporting import mean_ci, t_quantile_975

    by_seed = {r.get("seed"): value(r) for r in base_rows if r.get("seed") is not None}
    paired = [(value(r), by_seed[r["seed"]]) for r in other_rows if r.get("seed") in by_seed and by_seed[r["seed"]]]
    if len(paired) >= 2:
        change, half = mean_ci([o / b - 1 for o, b in paired])
        return change, half, f"paired, {len(paired)} seeds"
    b, o = [value(r) for r in base_rows], [value(r) for r in other_rows]
    if not b or not o or not statistics.mean(b):
        return None, None, "n/a"
    ratio = statistics.mean(o) / statistics.mean(b)
    if len(b) < 2 or len(o) < 2:
        return ratio - 1, None, "one run" if len(b) == len(o) == 1 else "ratio of means"
    if not statistics.mean(o):
        return ratio - 1, None, "ratio of means"
    rel_var = statistics.variance(o) / (len(o) * statistics.mean(o) ** 2) + statistics.variance(b) / (len(b) * statistics.mean(b) ** 2)
    return ratio - 1, t_quantile_975(min(len(b), len(o)) - 1) * abs(ratio) * math.sqrt(rel_var), "ratio of means"


def fmt_ci(values, digits=4):
    """'mean ± half-width' of the 95% CI over seeds; the mean alone below 2 seeds."""
    from recbole_llm.reporting import mean_ci

    m, half = mean_ci(values)
    if m is None:
        return "n/a"
    return f"{m:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else "")


def fmt_change(change, half):
    if change is None:
        return "n/a"
    text = f"{change * 100:+.1f}%"
    if half is not None:
        text += f" [{(change - half) * 100:+.1f}, {(change + half) * 100:+.1f}]"
    return text


def grouped(records):
    """{dataset: {row: [finished records]}} in first-seen order (failed runs kept, marked)."""
    out = {}
    for record in records:
        out.setdefault(record["dataset"], {}).setdefault(record["row"], []).append(record)
    return out


def shown_metrics(records, metrics):
    """The table's metrics: the suite's, and the warm / cold ones when a run had the cold-start protocol on."""
    cold = any("ndcg_cold@10" in mode for r in records if r.get("status") == "ok" for mode in r["modes"].values())
    return list(metrics) + ([m for m in COLD_SHOWN if m not in metrics] if cold else [])


def fmt_cell(values, metric):
    if metric.startswith("targets_"):  # a count (cold test targets): its mean
        return f"{statistics.mean(values):.0f}" if values else "n/a"
    return fmt_ci(values)


def row_table(records, modes, metrics):
    metrics = shown_metrics(records, metrics)
    lines = ["| dataset | model | mode | seeds | " + " | ".join(metrics) + " | s/epoch | epochs | params |",
             "|---|---|---|---|" + "---|" * len(metrics) + "---|---|---|"]
    for dataset, rows in grouped(records).items():
        for row, runs in rows.items():
            ok = [r for r in runs if r.get("status") == "ok"]
            if not ok:
                lines.append(f"| {dataset} | {row} | failed: {(runs[0].get('error') or '').splitlines()[0][:80] if runs[0].get('error') else ''} |")
                continue
            for mode in modes:
                cells = [fmt_cell([r["modes"][mode][m] for r in ok if m in r["modes"].get(mode, {})], m) for m in metrics]
                lines.append(f"| {dataset} | {row} | {mode} | {len(ok)} | " + " | ".join(cells)
                             + f" | {statistics.mean(r['sec_per_epoch'] for r in ok):.2f} | "
                             f"{statistics.mean(r['epochs'] for r in ok):.0f} | {ok[0]['params']} |")
    return lines


def pair_table(records, pairs, modes, metrics):
    """Relative changes of every pair (a pair's second row also covers its ablations, 'row [keys]')."""
    shown = [m for m in ("ndcg@10", "ndcg_tail@10", "ndcg_head@10") if m in metrics] or metrics[:1]
    lines = ["| dataset | pair | mode | " + " | ".join(shown) + " | epoch time | interval from |",
             "|---|---|---|" + "---|" * len(shown) + "---|---|"]
    for dataset, rows in grouped(records).items():
        for base, other in pairs:
            b = [r for r in rows.get(base, []) if r.get("status") == "ok"]
            for name, runs in rows.items():
                o = [r for r in runs if r.get("status") == "ok"]
                if not b or not o or name.split(" [")[0] != other:
                    continue
                for mode in modes:
                    cells, how = [], "n/a"
                    for metric in shown:
                        if not all(metric in r["modes"].get(mode, {}) for r in b + o):
                            cells.append("n/a")
                            continue
                        change, half, how = relative_change(b, o, lambda r, mode=mode, metric=metric: r["modes"][mode][metric])
                        cells.append(fmt_change(change, half))
                    ratio = statistics.mean(r["sec_per_epoch"] for r in o) / max(statistics.mean(r["sec_per_epoch"] for r in b), 1e-9)
                    lines.append(f"| {dataset} | {base} -> {name} | {mode} | " + " | ".join(cells) + f" | {ratio:.2f}x | {how} |")
    return lines


def build_tables(records, pairs, modes, metrics, header):
    lines = [header, "", "Mean ± half-width of the 95% confidence interval of the mean over seeds (Student t, n-1 degrees "
             "of freedom; the mean alone for one seed).", ""]
    lines += row_table(records, modes, metrics)
    if pairs:
        lines += ["", "Relative change against the pair's first row, with its 95% interval in brackets (percentage points): "
                  "paired per-seed changes when both ran on >= 2 common seeds, else the ratio of the means:", ""]
        lines += pair_table(records, pairs, modes, metrics)
    return "\n".join(lines)


def default_header(suite):
    return suite.get("header") or (f"Suite `{suite['path']}` (`python -m recbole_llm.benchmark --suite={suite['path']}`, "
                                   f"{time.strftime('%Y-%m-%d')}); test metrics of each run's best checkpoint.")


def write_report(suite, records, header=None):
    """results.md, results.csv, results.json and the plots of ``records`` (the one report writer of every benchmark)."""
    from recbole_llm.fileio import atomic_write_text

    table = build_tables(records, suite["pairs"], suite["eval_modes"], suite["metrics"], header or default_header(suite))
    os.makedirs(suite["out"], exist_ok=True)
    atomic_write_text(os.path.join(suite["out"], "results.md"), table + "\n")
    atomic_write_text(os.path.join(suite["out"], "results.json"), json.dumps(records, indent=1, default=str))
    write_csv(os.path.join(suite["out"], "results.csv"), summary_rows(records, suite["eval_modes"], suite["metrics"]))
    plots = write_suite_plots(suite, records)
    print(table)
    print(f"wrote {suite['out']}/results.md, results.csv, results.json" + "".join(f", {os.path.basename(p)}" for p in plots))


def summary_rows(records, modes, metrics):
    """Rows of results.csv, one per dataset, row and mode: seeds, failures, mean, std and 95% CI half-width over seeds of
    every metric (the bounds too for CI_METRICS), epoch and eval seconds, parameters, the error of a row that never ran."""
    from recbole_llm.reporting import mean_ci

    names = CSV_METRICS + [m for m in metrics if m not in CSV_METRICS]
    out = []
    for dataset, rows in grouped(records).items():
        for row, runs in rows.items():
            ok, failed = [r for r in runs if r.get("status") == "ok"], [r for r in runs if r.get("status") != "ok"]
            for mode in modes:
                line = {"dataset": dataset, "model": row, "mode": mode, "seeds": len(ok), "failed": len(failed)}
                for metric in names:
                    values = [r["modes"][mode][metric] for r in ok if metric in r["modes"].get(mode, {})]
                    mean, half = mean_ci(values)
                    line[f"{metric}_mean"] = mean
                    line[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
                    line[f"{metric}_ci95"] = half  # the interval is mean ± ci95 (empty below 2 seeds)
                    if metric in CI_METRICS:
                        line[f"{metric}_ci95_low"] = None if half is None else mean - half
                        line[f"{metric}_ci95_high"] = None if half is None else mean + half
                for key, field in (("train_seconds_per_epoch", "sec_per_epoch"), ("eval_seconds", "eval_seconds"), ("num_params", "params")):
                    values = [r[field] for r in ok if r.get(field) is not None]
                    line[key] = statistics.mean(values) if values else None
                error = (failed[0].get("error") or "") if failed and not ok else ""
                line["error"] = error.splitlines()[0][:200] if error else ""
                out.append(line)
    return out


def write_csv(path, rows):
    from recbole_llm.fileio import atomic_open

    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["dataset", "model", "mode", "seeds", "failed"])
        writer.writeheader()
        writer.writerows(rows)


def bar_rows(rows, mode, metrics):
    """Bars of the rows whose finished runs all have ``metrics`` in ``mode``: mean over seeds, std as error bar."""
    bars = []
    for row, runs in rows.items():
        ok = [r["modes"].get(mode, {}) for r in runs if r.get("status") == "ok"]
        if ok and all(metric in m for m in ok for metric in metrics):
            bar = {"model": row}
            for metric in metrics:
                values = [m[metric] for m in ok]
                bar[f"{metric}_mean"] = statistics.mean(values)
                bar[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            bars.append(bar)
    return bars


def write_suite_plots(suite, records):
    """Per dataset and mode: NDCG@10 head / tail bars, warm / cold bars (the cold-start protocol) and NDCG@10 per
    target-popularity bucket (runs with popularity buckets); their paths."""
    import matplotlib

    matplotlib.use("Agg")
    from recbole_llm.reporting import grouped_bars

    plots = (("ndcg_head_tail", (("ndcg_head@10", "head items"), ("ndcg_tail@10", "tail items")), "NDCG@10 by target item group"),
             ("ndcg_warm_cold", (("ndcg_warm@10", "warm items"), ("ndcg_cold@10", "cold items")), "warm and cold (never trained on) items"))
    paths = []
    for dataset, rows in grouped(records).items():
        for mode in suite["eval_modes"]:
            for name, groups, title in plots:
                bars = bar_rows(rows, mode, [metric for metric, _ in groups])
                if bars:
                    path = os.path.join(suite["out"], f"{name}_{dataset}_{mode}.png")
                    paths.append(grouped_bars(bars, groups, f"{dataset} ({mode}): {title}", path))
            path = popularity_plot(rows, mode, f"{dataset} ({mode})", os.path.join(suite["out"], f"ndcg_by_popularity_{dataset}_{mode}.png"))
            paths += [path] if path else []
    return paths


def popularity_plot(rows, mode, title, path):
    """NDCG@10 per target-item popularity bucket, a line per row (mean over seeds); None when no run has buckets."""
    import matplotlib.pyplot as plt
    import numpy as np

    from recbole_llm.fileio import atomic_savefig

    labels, markers, colors = bucket_labels(), "osD^vP*Xh<>p", plt.get_cmap("tab20").colors
    fig, ax = plt.subplots(figsize=(7, 4))
    plotted = False
    for index, (row, runs) in enumerate(rows.items()):
        buckets = [r["popularity_buckets"][mode] for r in runs if r.get("status") == "ok" and mode in (r.get("popularity_buckets") or {})]
        means = []
        for label in labels:
            values = [b[label]["ndcg@10"] for b in buckets if label in b and b[label]["ndcg@10"] is not None]
            means.append(statistics.mean(values) if values else np.nan)
        if not all(np.isnan(means)):
            # more rows than a default colour cycle: colour, marker and dash pattern all vary
            style = dict(marker=markers[index % len(markers)], color=colors[(2 * index) % 20 + (index // 10) % 2])
            ax.plot(labels, means, linestyle="-" if index < 10 else "--", label=row, **style)
            plotted = True
    if plotted:
        ax.set_xlabel("target item popularity (training users)")
        ax.set_ylabel("NDCG@10")
        ax.set_title(f"{title}: NDCG@10 by item popularity")
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path if plotted else None


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
        for dataset, models in data.items():
            for model, runs in models.items():
                for run in sorted(runs, key=lambda r: bool(r.get("llm_keys"))):
                    row = f"{model} [{run['llm_keys']}]" if run.get("llm_keys") else model
                    key = (dataset, row, run.get("seed"))
                    if key in seen:
                        if seen[key][1] != run:
                            raise ConfigError(f"--from_json: '{path}' and '{seen[key][0]}' hold different results for "
                                              f"{dataset} {row} seed {key[2]}; keep one of them")
                        continue
                    seen[key] = (path, run)
                    records.append(legacy_record(dataset, row, model, run))
    return records


def legacy_record(dataset, row, model, run):
    if "error" in run:
        return {"dataset": dataset, "row": row, "model": model, "seed": run.get("seed"), "status": "failed", "error": run["error"]}
    return {"dataset": dataset, "row": row, "model": model, "seed": run.get("seed"), "status": "ok",
            "modes": {m: run[m] for m in ("full", "uni100") if m in run}, "sec_per_epoch": run["sec_per_epoch"],
            "epochs": run["epochs"], "params": run["params"]}


if __name__ == "__main__":  # a worker process of run_in_workers
    import sys

    from recbole_llm.errors import cli_entry

    sys.exit(cli_entry(lambda argv: worker_main(argv[0]))())
