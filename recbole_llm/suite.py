"""Benchmark suites: ``python -m recbole_llm.benchmark --suite=FILE.yaml`` (docs/benchmarks.md, benchmarks/suites/).

A suite file declares what to compare; this module runs it, resumably, and writes the tables and plots::

    datasets: [scientific]              # each dataset gets every row and seed
    data_path: ../shared/datasets       # relative to the current folder (null: dataset_atomic/)
    seeds: [2020, 2021, 2022]
    eval_modes: [full, uni100]          # test metrics of the best checkpoint in each mode (training validates in the first)
    budget: {epochs: 50, stopping_step: 10}
    config: {hidden_size: 64}           # keys of every row
    rows:                               # a variant: a model plus its own keys; its own row in the tables
      SASRec: {model: SASRec, train_mode: all_positions, train_batch_size: 128}
      LLMEmbSASRec: {model: LLMEmbSASRec, train_mode: all_positions, train_batch_size: 128}
    models: [GRU4Rec]                   # shorthand: a row named after the model, no keys of its own
    pairs: [[SASRec, LLMEmbSASRec]]     # relative change of the second against the first, paired by seed, 95% interval
    metrics: [ndcg@10, ndcg_head@10, ndcg_tail@10, hit@10]
    workers: 1                          # parallel runs (each a process with cores // workers threads)
    out: benchmarks/out/my_suite

One result store: ``<out>/runs/<dataset>/<row>/<seed>.json`` (a rerun skips finished runs and retries failed ones);
``<out>/results.md`` (per-row table and paired changes), ``results.json`` and one NDCG head/tail plot per dataset
and mode. ``--from_json=a.json,b.json`` builds the tables from raw results of the former
benchmarks/llmemb_vs_sasrec.py instead of running (docs/benchmarks.md's older tables).
"""

import json
import math
import os
import statistics
import time

import yaml

from recbole_llm.errors import ConfigError

SUITE_KEYS = {"datasets", "data_path", "seeds", "eval_modes", "budget", "config", "rows", "models", "pairs", "metrics", "workers", "out"}
DEFAULT_METRICS = ["ndcg@10", "ndcg_head@10", "ndcg_tail@10", "hit@10", "hit_head@10", "hit_tail@10"]


# ---- the suite file -------------------------------------------------------------------------------------------
def load_suite(path):
    """The suite of ``path`` with every default filled in; a bad file is one ConfigError naming the key."""
    try:
        with open(path) as handle:
            suite = yaml.safe_load(handle) or {}
    except OSError as err:
        raise ConfigError(f"suite file '{path}' cannot be read ({err.strerror}): pass --suite=<file.yaml>") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"suite file '{path}' is not valid YAML ({str(err).splitlines()[0]})") from None
    unknown = sorted(set(suite) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"suite file '{path}': unknown key '{unknown[0]}' (known: {', '.join(sorted(SUITE_KEYS))})")
    check_suite_types(path, suite)
    rows = {name: dict(keys or {}) for name, keys in (suite.get("rows") or {}).items()}
    for model in suite.get("models") or []:
        rows.setdefault(model, {"model": model})
    for name, keys in rows.items():
        if "model" not in keys:
            raise ConfigError(f"suite file '{path}': row '{name}' has no 'model' key (write {name}: {{model: <Model>, ...}})")
    if not rows or not suite.get("datasets"):
        raise ConfigError(f"suite file '{path}' needs 'datasets' and 'rows' (or 'models')")
    pairs = [tuple(p) for p in suite.get("pairs") or []]
    for pair in pairs:
        if len(pair) != 2 or any(name not in rows for name in pair):
            raise ConfigError(f"suite file '{path}': pair {list(pair)} must name two rows of {sorted(rows)}")
    modes = list(suite.get("eval_modes") or ["full"])
    if any(m not in ("full", "uni100") for m in modes):
        raise ConfigError(f"suite file '{path}': eval_modes must be full and/or uni100, got {modes}")
    name = os.path.splitext(os.path.basename(path))[0]
    return {
        "name": name, "path": path, "datasets": list(suite["datasets"]), "data_path": suite.get("data_path"),
        "seeds": [int(s) for s in suite.get("seeds") or [2020]], "eval_modes": modes,
        "config": {**(suite.get("config") or {}), **(suite.get("budget") or {})}, "rows": rows, "pairs": pairs,
        "metrics": list(suite.get("metrics") or DEFAULT_METRICS), "workers": int(suite.get("workers") or 1),
        "out": os.path.abspath(suite.get("out") or os.path.join("benchmarks", "out", name)),
    }


_KINDS = {"datasets": (list, str, "a list of dataset names"), "seeds": (list, int, "a list of integers"),
          "eval_modes": (list, str, "a list of full / uni100"), "models": (list, str, "a list of model names"),
          "metrics": (list, str, "a list of metric names such as ndcg@10"), "pairs": (list, list, "a list of [row, row] pairs"),
          "rows": (dict, dict, "a mapping of row name to {model: ..., keys ...}"), "config": (dict, None, "a mapping of config keys"),
          "budget": (dict, None, "a mapping such as {epochs: 50}"), "workers": (int, None, "an integer >= 1")}


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


def run_spec(suite, dataset, row, seed):
    """What a finished record must have been run with to count for this suite: the model, its config, the modes."""
    import hashlib

    model, config = run_config(suite, dataset, row, seed)
    config = {k: v for k, v in config.items() if k not in ("checkpoint_dir", "show_progress", "state")}
    payload = json.dumps([model, config, suite["eval_modes"]], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


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


# ---- running --------------------------------------------------------------------------------------------------
def all_runs(suite):
    """(dataset, row, seed) of every run of the suite, in file order."""
    return [(dataset, row, seed) for dataset in suite["datasets"] for row in suite["rows"] for seed in suite["seeds"]]


def pending_runs(suite):
    """(dataset, row, seed) of every run without a finished record, in file order."""
    pending = []
    for dataset, row, seed in all_runs(suite):
        path = run_path(suite, dataset, row, seed)
        record = json.load(open(path)) if os.path.isfile(path) else {}
        if record.get("status") == "ok" and record.get("spec") == run_spec(suite, dataset, row, seed):
            print(f"{dataset} {row} seed {seed}: done before, skipping", flush=True)
            continue
        if record.get("status") == "ok":
            print(f"{dataset} {row} seed {seed}: its record ran with other keys or modes: running it again", flush=True)
        pending.append((dataset, row, seed))
    return pending


def execute_run(suite, dataset, row, seed, shared=None, threads=None, run_id=None):
    """Train one run (``shared``: the artifact keys :func:`prepare_runs` resolved), test its best checkpoint in every
    mode, write its record; returns the record."""
    import torch

    from recbole_llm.quick_start import evaluate_model_file, run_recbole_llm

    if threads:
        torch.set_num_threads(threads)
    model, config = run_config(suite, dataset, row, seed)
    record = {"dataset": dataset, "row": row, "model": model, "seed": seed, "keys": suite["rows"][row],
              "spec": run_spec(suite, dataset, row, seed), "run_id": run_id}
    start = time.perf_counter()
    try:
        result = run_recbole_llm(model=model, dataset=dataset, config_dict={**config, **(shared or {})})
        modes = {suite["eval_modes"][0]: dict(result["test_result"])}
        for mode in suite["eval_modes"][1:]:
            modes[mode] = dict(evaluate_model_file(result["model_file"], {"eval_args": {"mode": mode}}))
        record.update(status="ok", modes={m: {k: float(v) for k, v in r.items()} for m, r in modes.items()},
                      sec_per_epoch=result["train_seconds"], epochs=result["epochs_run"], params=result["num_params"],
                      model_file=result["model_file"])
    except Exception as err:  # recorded; the other runs go on and the command exits 1
        record.update(status="failed", error=f"{type(err).__name__}: {err}")
    record["wall_seconds"] = time.perf_counter() - start
    write_record(run_path(suite, dataset, row, seed), record)
    print(f"{dataset} {row} seed {seed}: {record['status']}" + (f" ({record['error'][:200]})" if "error" in record else ""), flush=True)
    return record


def write_record(path, record):
    from recbole_llm.fileio import atomic_write_text

    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1))


def prepare_runs(suite, pending):
    """Build every run's artifacts (features, SCFT, teacher) here, before any run starts; returns (dataset, row, seed,
    the config keys naming the artifacts) of the runs that can start: they only read what was built. A run whose
    artifacts cannot be built is recorded as failed."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import shared_artifact_keys

    ready = []
    for dataset, row, seed in pending:
        model, config = run_config(suite, dataset, row, seed)
        try:
            ready.append((dataset, row, seed, shared_artifact_keys(Config(model=model, dataset=dataset, config_dict=config))))
        except Exception as err:
            write_record(run_path(suite, dataset, row, seed), {"dataset": dataset, "row": row, "model": model, "seed": seed,
                                                               "status": "failed", "error": f"{type(err).__name__}: {err}"})
    return ready


def run_suite(suite):
    """Run what is missing, then write the tables and plots; returns the exit code (1 when a run failed). A stop
    (SIGTERM, Ctrl-C) ends the running workers, writes the tables of the finished runs and goes on up."""
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
    failed = [r for r in records if r.get("status") != "ok"]
    if failed:
        first = "; ".join(f"{r['dataset']} {r['row']} seed {r['seed']}: {r.get('error', '')[:120]}" for r in failed[:3])
        print(f"error: {len(failed)} of {len(records)} runs failed ({first}); rerun the suite to retry them")
        return 1
    return 0


def worker_command(job_file):
    """Command line of one suite worker process (tests replace it)."""
    import sys

    return [sys.executable, "-m", "recbole_llm.suite", job_file]


def run_in_workers(suite, pending, workers):
    """The pending runs in ``workers`` fresh processes (recbole_llm/workers.py); a worker that dies without its
    record gets a failed one."""
    import uuid

    from recbole_llm.workers import available_cores, run_workers, thread_env

    threads = max(1, available_cores() // workers)
    jobs = [{"name": f"{dataset}-{row}-{seed}".replace("/", "_"), "suite": suite, "run": [dataset, row, seed], "shared": shared,
             "threads": threads, "run_id": uuid.uuid4().hex[:12]} for dataset, row, seed, shared in pending]
    print(f"{len(jobs)} runs in {workers} worker processes, {threads} thread(s) each", flush=True)

    def on_exit(job, returncode, log_path, seconds):
        dataset, row, seed = job["run"]
        path = run_path(suite, dataset, row, seed)
        record = json.load(open(path)) if os.path.isfile(path) else {}
        if record.get("run_id") != job["run_id"]:  # the worker died (killed, out of memory) before its record
            write_record(path, {"dataset": dataset, "row": row, "model": suite["rows"][row]["model"], "seed": seed, "status": "failed",
                                "error": f"worker died: exit code {returncode} without a record (log: {log_path})"})

    run_workers(jobs, workers, os.path.join(suite["out"], "logs"), lambda job_file: worker_command(job_file), on_exit,
                thread_env(threads))


def worker_main(job_file):
    """Entry point of a suite worker process: run the job of ``job_file`` (its record is written by execute_run)."""
    with open(job_file) as handle:
        job = json.load(handle)
    execute_run(job["suite"], *job["run"], shared=job["shared"], threads=job["threads"], run_id=job["run_id"])
    return 0


def load_records(suite):
    paths = [run_path(suite, *run) for run in all_runs(suite)]
    return [json.load(open(path)) for path in paths if os.path.isfile(path)]


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


def row_table(records, modes, metrics):
    lines = ["| dataset | model | mode | seeds | " + " | ".join(metrics) + " | s/epoch | epochs | params |",
             "|---|---|---|---|" + "---|" * len(metrics) + "---|---|---|"]
    for dataset, rows in grouped(records).items():
        for row, runs in rows.items():
            ok = [r for r in runs if r.get("status") == "ok"]
            if not ok:
                lines.append(f"| {dataset} | {row} | failed: {runs[0].get('error', '')[:80]} |")
                continue
            for mode in modes:
                cells = [fmt_ci([r["modes"][mode][m] for r in ok if m in r["modes"].get(mode, {})]) for m in metrics]
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


def write_report(suite, records, header=None):
    from recbole_llm.fileio import atomic_write_text

    header = header or (f"Suite `{suite['path']}` (`python -m recbole_llm.benchmark --suite={suite['path']}`, "
                        f"{time.strftime('%Y-%m-%d')}); test metrics of each run's best checkpoint.")
    table = build_tables(records, suite["pairs"], suite["eval_modes"], suite["metrics"], header)
    os.makedirs(suite["out"], exist_ok=True)
    atomic_write_text(os.path.join(suite["out"], "results.md"), table + "\n")
    atomic_write_text(os.path.join(suite["out"], "results.json"), json.dumps(records, indent=1))
    plots = write_suite_plots(suite, records)
    print(table)
    print(f"wrote {suite['out']}/results.md, results.json" + "".join(f", {os.path.basename(p)}" for p in plots))


def write_suite_plots(suite, records):
    """One bar plot of NDCG@10 head / tail per dataset and mode (mean over seeds, std as error bar)."""
    from recbole_llm.reporting import grouped_bars

    if not {"ndcg_head@10", "ndcg_tail@10"} <= set(suite["metrics"]):
        return []
    paths = []
    for dataset, rows in grouped(records).items():
        for mode in suite["eval_modes"]:
            bars = []
            for row, runs in rows.items():
                ok = [r["modes"][mode] for r in runs if r.get("status") == "ok"]
                if ok:
                    bar = {"model": row}
                    for metric in ("ndcg_head@10", "ndcg_tail@10"):
                        values = [m[metric] for m in ok]
                        bar[f"{metric}_mean"] = statistics.mean(values)
                        bar[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
                    bars.append(bar)
            if bars:
                path = os.path.join(suite["out"], f"ndcg_head_tail_{dataset}_{mode}.png")
                paths.append(grouped_bars(bars, [("ndcg_head@10", "head"), ("ndcg_tail@10", "tail")], f"{dataset} ({mode})", path))
    return paths


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
