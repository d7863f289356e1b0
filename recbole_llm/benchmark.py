"""Side-by-side benchmark of plugin and RecBole models on one dataset, same split and seeds.

    python -m recbole_llm.benchmark --dataset=scientific --data_path=../shared/datasets \
        --models=SASRec,GRU4Rec,BERT4Rec,FDSA,S3Rec,UniSRec,LLM2XSASRec,LLMEmbSASRec,LLMEmbGRU4Rec,LLMEmbBERT4Rec,LEARN \
        [--epochs=N] [--seeds=42,43,44] [--eval_mode=full|uni100] [--workers=2] [--out=DIR] [--config_files="a.yaml"] [--key=value ...]

For every model and seed: train (early stopping on valid NDCG@10), test, and measure NDCG@10 by target-item
popularity bucket. One JSON per finished run under ``DIR/runs/`` makes it resumable: a finished (or failed)
model/seed is not run again (``--rerun_failed`` retries failures). A failing model is recorded with its
error and the others go on; the command then exits with code 1 and names the failed runs. Writes ``results.csv`` and ``results.md`` (mean and std over seeds of overall,
head/tail and short/long metrics, the 95% confidence interval of the mean (Student t) of NDCG@10 and tail
NDCG@10, train seconds per epoch, eval seconds, parameters) and two PNG plots: ``ndcg_head_tail.png``
(grouped bars per model) and ``ndcg_by_popularity.png`` (NDCG@10 per item-popularity bucket, the papers'
long-tail figure). With ``--cold_item_ratio=0.1`` (the cold-start protocol, recbole_llm/data/cold.py) the table
adds warm / cold NDCG@10 and Recall@10 and the number of cold test targets, and ``ndcg_warm_cold.png`` plots
warm vs cold NDCG@10 per model.

Shared artifacts (LLM feature files, SCFT, the alignment teacher) are built in this process before any run
starts, with the config of each seed (cached ones are found again), and every run gets the resulting config keys
(``llm_features``, ``llm_feature``, ``feature_dir``, ``teacher_checkpoint``): models that need the same
artifact reuse one cached file. ``--workers=N`` runs the model/seed jobs in N worker processes (FIFO, one
fresh process per job, ``torch.set_num_threads(cores // N)``); each worker writes its run JSON itself and
its output to ``DIR/logs/<model>-<seed>.log``. ``--workers=1`` (default) runs them one after another here.

    python -m recbole_llm.benchmark --suite=benchmarks/suites/llmemb_vs_sasrec.yaml [--from_json=a.json,...]

runs a suite file instead: several datasets, rows (a model plus its own keys), pairs with paired changes and
their 95% intervals, full and uni100 tests of one checkpoint (recbole_llm/suite.py).
"""

import argparse
import csv
import json
import os
import statistics
import sys
import time
import traceback
import uuid

from recbole_llm.errors import cli_entry
from recbole_llm.fileio import atomic_open, atomic_savefig, atomic_write_text
from recbole_llm.reporting import grouped_bars, mean_ci
from recbole_llm.workers import available_cores, run_workers, thread_env

REPORTED = [
    "ndcg@10", "hit@10", "recall@10", "ndcg_head@10", "ndcg_tail@10", "hit_head@10", "hit_tail@10",
    "ndcg_short@10", "ndcg_long@10",
    "ndcg_warm@10", "ndcg_cold@10", "recall_warm@10", "recall_cold@10", "targets_warm", "targets_cold",
]
COLD_SHOWN = ["ndcg_warm@10", "ndcg_cold@10", "recall_warm@10", "recall_cold@10"]  # columns when --cold_item_ratio > 0
POP_EDGES = (0, 2, 5, 10, 20, 50)  # popularity buckets: [0,2), [2,5), ..., [50, inf)
CI_METRICS = ["ndcg@10", "ndcg_tail@10"]  # 95% CI bounds in results.md and .csv (.csv: half-width of every metric)

def bucket_labels():
    edges = list(POP_EDGES) + [None]
    return [f"{lo}-{hi - 1}" if hi is not None else f"{lo}+" for lo, hi in zip(edges[:-1], edges[1:])]


def popularity_buckets(model_file, eval_mode):
    """NDCG@10 and row count per popularity bucket of the test target items."""
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


def job_config(model, seed, args, base_config, out_dir, shared=None):
    """Config dict of one model/seed run: the extra ``--key=value`` pairs, the shared artifact keys, then
    the benchmark's own keys (seed, own checkpoint folder, quiet, eval mode, epochs, data path)."""
    config = dict(base_config)
    config.update(shared or {})
    config.update(
        {
            "seed": seed,
            "checkpoint_dir": os.path.join(out_dir, "checkpoints", f"{model}-{seed}"),
            "state": "WARNING",
            "show_progress": False,
            "eval_args": {"mode": args.eval_mode},
        }
    )
    if args.epochs:
        config["epochs"] = args.epochs
    if args.data_path:
        config["data_path"] = os.path.abspath(args.data_path)
    return config


def run_job(model, dataset, config, config_file_list, eval_mode):
    """Train and test one run; returns its row (without wall time)."""
    import torch

    from recbole_llm.quick_start import run_recbole_llm

    result = run_recbole_llm(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=dict(config))
    row = {
        "status": "ok",
        "test": {k: float(v) for k, v in result["test_result"].items()},
        "valid": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
        "train_seconds_per_epoch": result["train_seconds"],
        "epochs_run": result["epochs_run"],
        "eval_seconds": result["eval_seconds"],
        "num_params": result["num_params"],
        "model_file": result["model_file"],
        "torch_threads": torch.get_num_threads(),
    }
    try:
        row["popularity_buckets"] = popularity_buckets(result["model_file"], eval_mode)
    except Exception as err:  # the table still stands without the plot data
        row["popularity_buckets_error"] = f"{type(err).__name__}: {err}"
    return row


def run_one(model, seed, args, base_config, out_dir, shared=None):
    """One run in this process (``--workers=1``)."""
    config = job_config(model, seed, args, base_config, out_dir, shared)
    return run_job(model, args.dataset, config, args.config_file_list, args.eval_mode)


def prepare_model(model, seed, args, base_config, out_dir):
    """Build what ``model`` reads (feature files, SCFT, teacher) now, with the config of ``seed``.

    Returns the config keys every run of the model gets (as tune.py hands them to Ray trials), so runs in
    parallel workers never build the same artifact twice. Raises what the model's config or its
    ``prepare_artifacts`` raises (an unknown model, a missing LLM, ...).
    """
    from recbole_llm.tune import prepare_shared_artifacts

    config = job_config(model, seed, args, base_config, out_dir)
    shared, _ = prepare_shared_artifacts(model, args.dataset, args.config_file_list, config)
    return {k: v for k, v in shared.items() if not k.startswith("_built_")}


def failure_row(err):
    return {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


def run_summary(model, seed, row):
    summary = f"NDCG@10 {row['test']['ndcg@10']:.4f}" if row["status"] == "ok" else row["error"].splitlines()[0][:200]
    return f"{model} seed {seed}: {row['status']} in {row.get('wall_seconds', 0):.0f} s, {summary}"


# ---- parallel workers (the pool: recbole_llm/workers.py) ------------------------------------------------------
def worker_command(job_file):
    """Command line of one worker process (tests replace it)."""
    return [sys.executable, "-m", "recbole_llm.benchmark", "--worker", job_file]


def worker_main(job_file):
    """Entry point of a worker process: run the job described by ``job_file``, write its run JSON."""
    with open(job_file) as handle:
        job = json.load(handle)
    threads = int(job["threads"])
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        row = run_job(job["model"], job["dataset"], job["config"], job["config_file_list"], job["eval_mode"])
    except Exception as err:
        row = failure_row(err)
        print(row["traceback"], file=sys.stderr, flush=True)
    row["wall_seconds"] = time.perf_counter() - start
    row["run_id"] = job["run_id"]
    row["config"] = job["config"]
    row["spec"] = job["spec"]
    write_json(job["path"], row)
    print(run_summary(job["model"], job["seed"], row), flush=True)
    return 0


def tail_of(path, lines=20):
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def run_parallel(jobs, workers, out_dir, on_done):
    """Run ``jobs`` (dicts: model, seed, path, config, ...) in ``workers`` processes, first in first out.

    Every job gets a fresh process with ``cores // workers`` threads. A worker that dies without writing its
    run JSON (killed, out of memory) is recorded as failed here with its exit code and the end of its log.
    ``on_done(job, row)`` is called in this process as each job ends; a stop terminates the running workers.
    """
    import recbole_llm

    threads = max(1, available_cores() // workers)
    env = thread_env(threads, os.path.dirname(os.path.dirname(os.path.abspath(recbole_llm.__file__))))
    log_dir = os.path.join(out_dir, "logs")
    print(f"{len(jobs)} runs in {workers} worker processes, {threads} thread(s) each; logs in {log_dir}", flush=True)
    named = [dict(job, threads=threads, name=f"{job['model']}-{job['seed']}") for job in jobs]

    def on_exit(job, returncode, log_path, seconds):
        on_done(job, collect_worker(job, returncode, log_path, seconds))

    run_workers(named, workers, log_dir, lambda job_file: worker_command(job_file), on_exit, env)


def collect_worker(job, returncode, log_path, seconds):
    """The row of a finished worker: its run JSON, or a failed row (exit code, end of its log) written for it."""
    row = None
    if os.path.isfile(job["path"]):
        with open(job["path"]) as handle:
            row = json.load(handle)
        if row.get("run_id") != job["run_id"]:
            row = None  # an older record of this model/seed, not this worker's result
    if row is None:
        row = {
            "status": "failed",
            "error": f"worker exited with code {returncode} without a result (log: {log_path})",
            "traceback": tail_of(log_path),
            "wall_seconds": seconds,
            "run_id": job["run_id"],
            "config": job["config"],
            "spec": job["spec"],
        }
        write_json(job["path"], row)
    return row


def write_json(path, data):
    atomic_write_text(path, json.dumps(data, indent=1))


def summarise(runs, models):
    """Rows of the results table: mean, std and 95% CI half-width over seeds per model."""
    rows = []
    for model in models:
        done = [r for r in runs.get(model, []) if r["status"] == "ok"]
        failed = [r for r in runs.get(model, []) if r["status"] != "ok"]
        row = {"model": model, "seeds": len(done), "failed": len(failed)}
        for metric in REPORTED:
            values = [r["test"].get(metric) for r in done if metric in r["test"]]
            mean, half = mean_ci(values)
            row[f"{metric}_mean"] = mean
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
            row[f"{metric}_ci95"] = half  # half-width: the interval is mean ± ci95 (empty below 2 seeds)
            if metric in CI_METRICS:
                row[f"{metric}_ci95_low"] = None if half is None else mean - half
                row[f"{metric}_ci95_high"] = None if half is None else mean + half
        for key in ("train_seconds_per_epoch", "eval_seconds", "num_params"):
            values = [r[key] for r in done]
            row[key] = statistics.mean(values) if values else None
        row["error"] = failed[0]["error"].splitlines()[0][:200] if failed and not done else ""
        rows.append(row)
    return rows


def write_tables(rows, out_dir, header):
    columns = list(rows[0].keys())
    with atomic_open(os.path.join(out_dir, "results.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def fmt(row, metric):
        mean = row[f"{metric}_mean"]
        if metric.startswith("targets_"):
            return "" if mean is None else f"{mean:.0f}"
        return "" if mean is None else f"{mean:.4f} ± {row[f'{metric}_std']:.4f}"

    def ci(row, metric):
        mean, half = row[f"{metric}_mean"], row[f"{metric}_ci95"]
        return "" if mean is None or half is None else f"[{mean - half:.4f}, {mean + half:.4f}]"

    shown = ["ndcg@10", "ndcg@10 95% CI", "hit@10", "ndcg_head@10", "ndcg_tail@10", "ndcg_tail@10 95% CI", "ndcg_short@10", "ndcg_long@10"]
    if any(row.get("ndcg_cold@10_mean") is not None for row in rows):  # the cold-start protocol was on
        shown += COLD_SHOWN + ["targets_cold"]
    lines = [header, "", "| model | seeds | " + " | ".join(shown) + " | s/epoch | eval s | params | error |", "|" + "---|" * (len(shown) + 6)]
    for row in rows:
        cells = [ci(row, m.split()[0]) if m.endswith(" CI") else fmt(row, m) for m in shown]
        sec = "" if row["train_seconds_per_epoch"] is None else f"{row['train_seconds_per_epoch']:.2f}"
        ev = "" if row["eval_seconds"] is None else f"{row['eval_seconds']:.2f}"
        params = "" if row["num_params"] is None else f"{int(row['num_params'])}"
        lines.append(f"| {row['model']} | {row['seeds']} | " + " | ".join(cells) + f" | {sec} | {ev} | {params} | {row['error']} |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(out_dir, "results.md"), table)
    return table


def write_plots(rows, runs, out_dir, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ok = [r for r in rows if r["ndcg@10_mean"] is not None]
    if not ok:
        return []
    paths = []
    paths.append(grouped_bars(ok, (("ndcg_head@10", "head items"), ("ndcg_tail@10", "tail items")),
                              f"{title}: NDCG@10 by target item group", os.path.join(out_dir, "ndcg_head_tail.png")))
    cold = [r for r in ok if r.get("ndcg_cold@10_mean") is not None]
    if cold:  # the cold-start protocol: warm vs cold target items per model
        paths.append(grouped_bars(cold, (("ndcg_warm@10", "warm items"), ("ndcg_cold@10", "cold items")),
                                  f"{title}: warm and cold (never trained on) items",
                                  os.path.join(out_dir, "ndcg_warm_cold.png")))

    labels = bucket_labels()
    fig, ax = plt.subplots(figsize=(7, 4))
    plotted = False
    markers = "osD^vP*Xh<>p"
    colors = plt.get_cmap("tab20").colors
    for index, row in enumerate(ok):
        per_bucket = []
        for label in labels:
            values = [r["popularity_buckets"][label]["ndcg@10"] for r in runs[row["model"]] if r["status"] == "ok" and "popularity_buckets" in r and r["popularity_buckets"][label]["ndcg@10"] is not None]
            per_bucket.append(statistics.mean(values) if values else np.nan)
        if not all(np.isnan(per_bucket)):
            # more models than a default colour cycle: colour, marker and dash pattern all vary
            style = dict(marker=markers[index % len(markers)], color=colors[(2 * index) % 20 + (index // 10) % 2])
            ax.plot(labels, per_bucket, linestyle="-" if index < 10 else "--", label=row["model"], **style)
            plotted = True
    if plotted:
        ax.set_xlabel("target item popularity (training users)")
        ax.set_ylabel("NDCG@10")
        ax.set_title(f"{title}: NDCG@10 by item popularity")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "ndcg_by_popularity.png"))
        atomic_savefig(fig, paths[-1], dpi=120)
    plt.close(fig)
    return paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--models", default="SASRec,GRU4Rec,BERT4Rec,FDSA,S3Rec,UniSRec,LLM2XSASRec,LLMEmbSASRec,LLMEmbGRU4Rec,LLMEmbBERT4Rec,LEARN")
    parser.add_argument("--epochs", type=int, default=None, help="epoch budget for every model (default: each model's YAML)")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--eval_mode", choices=["full", "uni100"], default="full")
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/out/<dataset>)")
    parser.add_argument("--config_files", default=None)
    parser.add_argument("--rerun_failed", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1: one after another, in this process)")
    args, extra = parser.parse_known_args(argv)
    args.extra = extra
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    args.config_file_list = [os.path.abspath(f) for f in args.config_files.split()] if args.config_files else None
    return args


@cli_entry
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    if any(a.startswith("--suite") for a in argv):
        return suite_main(argv)
    args = parse_args(argv)
    from recbole_llm.config import parse_overrides

    base_config = parse_overrides(args.extra)
    out_dir = os.path.abspath(args.out or os.path.join("benchmarks", "out", args.dataset))
    models = [m for m in args.models.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",")]
    specs = {(m, seed): run_spec(m, job_config(m, seed, args, base_config, out_dir), args.config_file_list) for m in models for seed in seeds}
    runs, pending = finished_and_pending(models, seeds, out_dir, args.rerun_failed, specs)

    def record(model, seed, row):
        runs.setdefault(model, []).append(row)
        print(run_summary(model, seed, row), flush=True)

    shared = prepare_pending(pending, args, base_config, out_dir, record)
    jobs = [
        {"model": model, "seed": seed, "path": path, "dataset": args.dataset,
         "config": job_config(model, seed, args, base_config, out_dir, shared[(model, seed)]),
         "config_file_list": args.config_file_list, "eval_mode": args.eval_mode, "run_id": uuid.uuid4().hex[:12],
         "spec": specs[(model, seed)]}
        for model, seed, path in pending if (model, seed) in shared
    ]
    if args.workers > 1 and jobs:
        run_parallel(jobs, args.workers, out_dir, lambda job, row: record(job["model"], job["seed"], row))
    else:
        for job in jobs:
            record(job["model"], job["seed"], run_in_process(job, args, base_config, out_dir, shared))
    return report(args, runs, models, seeds, out_dir)


def suite_main(argv):
    """``--suite=FILE.yaml [--from_json=a.json,...]``: run a suite file (recbole_llm.suite), or build its tables from
    raw results of the former benchmarks/llmemb_vs_sasrec.py."""
    from recbole_llm.errors import ConfigError
    from recbole_llm.suite import legacy_records, load_suite, run_suite, write_report

    parser = argparse.ArgumentParser(prog="python -m recbole_llm.benchmark --suite=FILE.yaml")
    parser.add_argument("--suite", required=True)
    parser.add_argument("--from_json", default=None, help="comma-separated raw JSONs of benchmarks/llmemb_vs_sasrec.py")
    args, rest = parser.parse_known_args(argv)
    if rest:
        raise ConfigError(f"--suite takes no other arguments (got '{rest[0]}'): put config keys in the suite file's config or rows")
    suite = load_suite(args.suite)
    if args.from_json:
        write_report(suite, legacy_records(args.from_json.split(",")), f"Merged from {args.from_json} ({time.strftime('%Y-%m-%d')}).")
        return 0
    return run_suite(suite)


def run_spec(model, config, config_file_list):
    """What a finished run must have been run with to be reused: the model, its config before the artifact keys were
    added (the extra --key=value pairs, seed, eval mode, epochs, data path), the config files; not its own folders."""
    import hashlib

    keys = {k: v for k, v in config.items() if k not in ("checkpoint_dir", "state", "show_progress")}
    return hashlib.sha1(json.dumps([model, keys, config_file_list or []], sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished_and_pending(models, seeds, out_dir, rerun_failed, specs):
    """({model: [finished rows]}, [(model, seed, run JSON path) still to run]), in --models then --seeds order. A
    record whose spec (``specs[(model, seed)]``, :func:`run_spec`) differs ran another command: it runs again."""
    runs, pending = {}, []
    for model in models:
        for seed in seeds:
            path = os.path.join(out_dir, "runs", f"{model}-{seed}.json")
            if os.path.isfile(path):
                with open(path) as handle:
                    row = json.load(handle)
                if row.get("spec") != specs[(model, seed)]:
                    print(f"{model} seed {seed}: its record ran with other keys, eval mode or epochs"
                          f"{' (or before records had a spec)' if 'spec' not in row else ''}: running it again", flush=True)
                elif row["status"] == "ok" or not rerun_failed:
                    print(f"{model} seed {seed}: done before ({row['status']}), skipping")
                    runs.setdefault(model, []).append(row)
                    continue
            pending.append((model, seed, path))
    return runs, pending


def prepare_pending(pending, args, base_config, out_dir, record):
    """{(model, seed): resolved artifact keys}, built here before any run starts. Cached artifacts (features,
    SCFT, a teacher whose key ignores the student's seed) are built once and found again for the next seeds;
    those that depend on the seed (the teacher under the cold-start protocol) per seed. A model whose artifacts
    fail gets that failure recorded for each of its pending runs."""
    shared, failed_models = {}, {}
    for model, seed, path in pending:
        start = time.perf_counter()
        if model not in failed_models:
            try:
                shared[(model, seed)] = prepare_model(model, seed, args, base_config, out_dir)
                if shared[(model, seed)]:
                    print(f"{model} seed {seed}: artifacts ready ({time.perf_counter() - start:.0f} s): {shared[(model, seed)]}", flush=True)
                continue
            except Exception as err:  # every pending run of the model fails with this error
                failed_models[model] = failure_row(err)
        row = dict(failed_models[model], stage="prepare_artifacts", wall_seconds=time.perf_counter() - start, config={"seed": seed},
                   spec=run_spec(model, job_config(model, seed, args, base_config, out_dir), args.config_file_list))
        write_json(path, row)
        record(model, seed, row)
    return shared


def run_in_process(job, args, base_config, out_dir, shared):
    """The row of one run in this process (workers: 1), written to its run JSON."""
    model, seed = job["model"], job["seed"]
    start = time.perf_counter()
    try:
        row = run_one(model, seed, args, base_config, out_dir, shared[(model, seed)])
    except Exception as err:
        row = failure_row(err)
    row.update(wall_seconds=time.perf_counter() - start, run_id=job["run_id"], config=job["config"], spec=job["spec"])
    write_json(job["path"], row)
    return row


def report(args, runs, models, seeds, out_dir):
    """Tables and plots of every run; exit code 1 (naming the first failures) when a run failed."""
    order = {seed: i for i, seed in enumerate(seeds)}  # runs in --seeds order whatever order they finished in
    for model in runs:
        runs[model].sort(key=lambda r: order.get((r.get("config") or {}).get("seed"), -1))
    rows = summarise(runs, models)
    header = (
        f"Benchmark on {args.dataset}: `python -m recbole_llm.benchmark --dataset={args.dataset} --models={args.models} "
        f"--seeds={args.seeds} --eval_mode={args.eval_mode}" + (f" --epochs={args.epochs}" if args.epochs else "")
        + (f" --workers={args.workers}" if args.workers > 1 else "")
        + (" " + " ".join(args.extra) if args.extra else "") + f"` ({time.strftime('%Y-%m-%d')}); test metrics, mean ± std "
        "over seeds; 95% CI: confidence interval of the mean (Student t, n-1 degrees of freedom)."
    )
    print(write_tables(rows, out_dir, header))
    plots = write_plots(rows, runs, out_dir, args.dataset)
    print(f"wrote {out_dir}/results.csv, results.md" + "".join(f", {os.path.basename(p)}" for p in plots))
    failed = [(model, (r.get("config") or {}).get("seed"), r) for model in models for r in runs.get(model, []) if r["status"] != "ok"]
    if failed:  # the table is written, but the command did not do what was asked
        total = sum(len(runs.get(model, [])) for model in models)
        first = "; ".join(f"{m} seed {seed if seed is not None else '?'}: {r['error'].splitlines()[0][:120]}" for m, seed, r in failed[:3])
        print(f"error: {len(failed)} of {total} runs failed ({first}); rerun them with --rerun_failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
