"""Running a suite: which runs are pending (the one resume rule), building their artifacts once, training each run
(in this process or in worker processes), writing its record with what it was made from, and the exit code."""

import json
import os
import sys
import time
import traceback

from recbole_llm.bench.report import POP_EDGES, bucket_labels, write_report
from recbole_llm.bench.spec import all_runs, provenance, run_config, run_inputs, run_path, run_spec
from recbole_llm.bench.store import check_store, failed_record, load_records, read_record, record_problem, store_lock, write_record


def pending_runs(suite):
    """(dataset, row, seed) of every run to run, in file order: the one resume rule. A record with this run's spec and
    inputs (recbole_llm.bench.store.record_problem) is kept when it finished, and when it failed unless the suite says
    ``rerun_failed``; any other record (other keys, changed inputs, corrupt) runs again, with a line saying why."""
    pending = []
    for dataset, row, seed in all_runs(suite):
        record = read_record(run_path(suite, dataset, row, seed))
        problem = record_problem(suite, dataset, row, seed, record) if record else "no record"
        if problem is None and (record.get("status") == "ok" or not suite.get("rerun_failed", True)):
            print(f"{dataset} {row} seed {seed}: done before ({record.get('status')}), skipping", flush=True)
            continue
        if record and problem:
            print(f"{dataset} {row} seed {seed}: {problem}: running it again", flush=True)
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
              "spec": run_spec(suite, dataset, row, seed), "inputs": dict(run_inputs(suite, dataset, row, seed), artifacts=shared or {}),
              **provenance(), "run_id": run_id, "config": config}
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
    """The record's popularity buckets; a failure is recorded, printed and named under the suite's tables (the run's
    metrics still stand without the plot data)."""
    try:
        record["popularity_buckets"] = {mode: popularity_buckets(record["model_file"], mode) for mode in modes}
    except Exception as err:  # noqa: BLE001 - any failure of the extra test pass: recorded and shown, not raised
        record["popularity_buckets_error"] = f"{type(err).__name__}: {err}"
        print(f"{record['dataset']} {record['row']} seed {record['seed']}: popularity buckets failed "
              f"({record['popularity_buckets_error'][:200]})", flush=True)


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
    k = min(10, pos_index.shape[1])  # NDCG@10, or at the largest cut-off the run's topk reaches
    ndcg = metric.metric_info(pos_index, pos_len)[:, k - 1]
    pop = struct.get(ITEM_POP_KEY)[struct.get(TARGET_KEY).long()].numpy()
    bucket = np.digitize(pop, POP_EDGES[1:])
    result = {}
    for index, label in enumerate(bucket_labels()):
        rows = bucket == index
        result[label] = {f"ndcg@{k}": float(ndcg[rows].mean()) if rows.any() else None, "rows": int(rows.sum())}
    return result


def run_summary(record):
    text = f"{record['dataset']} {record['row']} seed {record['seed']}: {record['status']}"
    if record.get("wall_seconds") is not None:
        text += f" in {record['wall_seconds']:.0f} s"
    if record.get("status") == "ok":
        return text + f", NDCG@10 {record['modes'][next(iter(record['modes']))].get('ndcg@10', float('nan')):.4f}"
    return text + f" ({record.get('error', '').splitlines()[0][:200] if record.get('error') else ''})"


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
    (SIGTERM, Ctrl-C) ends the running workers, writes the tables of the finished runs and goes on up. The store is
    locked meanwhile (a second driver on the same out folder is refused)."""
    check_store(suite)
    with store_lock(suite):
        return _run_locked(suite)


def _run_locked(suite):
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
    return [sys.executable, "-m", "recbole_llm.bench.execute", job_file]


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


if __name__ == "__main__":  # a worker process of run_in_workers
    from recbole_llm.errors import cli_entry

    sys.exit(cli_entry(lambda argv: worker_main(argv[0]))())
