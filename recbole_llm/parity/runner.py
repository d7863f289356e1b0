"""``python -m recbole_llm.parity --method=llmesr|llmemb|learn --official=PATH --dataset=NAME [--data_path=...]
[--seeds=42,43,44] [--epochs=N] [--patience=N] [--sides=official,ours] [--out=DIR] [--key=value ...]``

``--key=value``: a config key of our side (e.g. ``--feature_dir=...``); the export reads the same artifacts.

Records are suite records (:mod:`recbole_llm.suite`): ``<out>/runs/<dataset>/{official,ours}/<seed>.json``, one per
finished run, skipped on a rerun while their spec is unchanged: the official side's flags, and on both sides the
``--key=value`` keys, ``--data_path``, the content of the dataset's atomic files and of everything exported
(:func:`parity_inputs`), so a changed input reruns. Our runs go through the suite engine (``bench.execute.execute_run``) with
the artifact keys built once; ``<out>/results.md`` and ``results.json`` are written atomically by the suite's table
code, with the pair official -> ours (paired per seed, 95% interval). The official side runs in a fresh private copy
of the checkout, removed at the end (:func:`recbole_llm.parity.official.scratch_copy`). Exit code 2 for bad input
(checked before any artifact is built), 1 when a run of a side failed (named), else 0.
"""

import argparse
import hashlib
import json
import os
import statistics
import sys
import time

import yaml

from recbole_llm.bench import store
from recbole_llm.bench.execute import execute_run
from recbole_llm.bench.report import build_tables
from recbole_llm.bench.spec import run_config, run_path, run_spec
from recbole_llm.errors import UserError
from recbole_llm.parity import official, protocol
from recbole_llm.parity.export import ParityError, check_negatives, tail_thresholds, write_handled, write_learn

METHODS_FILE = os.path.join(os.path.dirname(__file__), "methods.yaml")
SEQREC_METRICS = ["ndcg@10", "ndcg_tail@10", "ndcg_head@10", "hit@10", "hit_tail@10", "hit_head@10",
                  "ndcg_short@10", "ndcg_long@10"]
LEARN_METRICS = ["ndcg@10", "recall@10"]


def load_methods():
    with open(METHODS_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m recbole_llm.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, choices=["llmesr", "llmemb", "learn"])
    p.add_argument("--official", required=True, help="a checkout of the official repository (read only)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data_path", default=None)
    p.add_argument("--seeds", default="42,43,44")
    p.add_argument("--epochs", type=int, default=None, help="epoch cap of both sides (official: 200; LEARN 200)")
    p.add_argument("--patience", type=int, default=20, help="early-stopping patience of both sides (official 20)")
    p.add_argument("--max_len", type=int, default=None, help="sequence cap of both sides (official: 200; LEARN 40)")
    p.add_argument("--sides", default="official,ours")
    p.add_argument("--out", default=None, help="default benchmarks/parity/<method>_<dataset>")
    p.add_argument("--scratch", default=None, help="the folder in which each run makes its private copy of the official "
                   "checkout with our inputs (default: the system temp folder; the copy holds the data and is removed at the end)")
    args, extra = p.parse_known_args(argv)
    args.keys = {}
    for item in extra:  # --key=value: a config key of our side (and of the export: the same artifacts)
        if not item.startswith("--") or "=" not in item:
            p.error(f"unrecognised argument {item!r}: config keys are given as --key=value")
        key, value = item[2:].split("=", 1)
        args.keys[key] = yaml.safe_load(value)
    for name in ("epochs", "patience", "max_len"):  # 0 used to mean "the default" (200 epochs) without a word
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be an integer >= 1, got {value}")
    try:
        args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be integers joined by commas, e.g. 42,43,44, got {args.seeds!r}")
    if not args.seeds:
        p.error("--seeds is empty: give at least one seed, e.g. --seeds=42")
    repeated = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if repeated:  # one run would count as two seeds, with an interval of zero width
        p.error(f"--seeds gives {', '.join(map(str, repeated))} more than once: each seed is one run, give each once")
    args.sides = [s for s in args.sides.split(",") if s]
    unknown = [s for s in args.sides if s not in ("official", "ours")]
    if unknown or not args.sides:
        p.error(f"--sides must be official, ours or official,ours, got {','.join(args.sides) or 'nothing'}")
    args.out = os.path.abspath(args.out or os.path.join("benchmarks", "parity", f"{args.method}_{args.dataset}"))
    args.scratch = os.path.abspath(args.scratch) if args.scratch else None
    return args


def our_suite(args, spec, thresholds):
    """The in-memory suite of our side: one row 'ours', the method's keys, the shared budget and thresholds."""
    mode = "full" if args.method == "learn" else "uni100"
    config = {**spec["ours"], **args.keys}
    config.update(epochs=args.epochs or 200, stopping_step=args.patience, valid_metric="NDCG@10")
    if args.max_len:
        config["MAX_ITEM_LIST_LENGTH"] = args.max_len
    if thresholds:
        config.update(tail_threshold=thresholds[0], short_history_threshold=thresholds[1])
    return {"path": "parity", "datasets": [args.dataset], "data_path": args.data_path, "seeds": args.seeds,
            "eval_modes": [mode], "config": config, "rows": {"ours": {"model": spec["model"], **config}},
            "pairs": [["official", "ours"]], "workers": 1, "out": args.out,
            "metrics": LEARN_METRICS if args.method == "learn" else SEQREC_METRICS}


def export(args, spec, shared, data, scratch):
    """The official inputs for ``data`` in the scratch copy; returns the dataset name the official side uses."""
    if args.method == "learn":
        name = args.dataset.capitalize()
        write_learn(data, scratch, name, "llm")
        return name
    folder = os.path.join(scratch, "data", args.dataset, "handled")
    if args.method == "llmesr":
        write_handled(data, folder, {"itm_emb_np": "llm", "pca64_itm_emb_np": "pca"})
    else:
        write_handled(data, folder, {spec["official_args"]["llm_emb_file"]: "llm", "itm_emb_sasrec": "teacher"})
    return args.dataset


def official_flags(args, spec, name, seed, thresholds):
    flags = dict(spec["official_args"])
    if args.method == "learn":
        base = os.path.join(".", "amazon_2018", "finetune_data")
        flags.update({"train-data": f"{base}/{name}/", "emb-path": f"{base}/{name}_lmdb", "ft-data": name,
                      "test-user-data": f"{base}/{name}/", "test-item-data": f"{base}/{name}/smap.json",
                      "test-emb-lmdb": f"{base}/{name}_lmdb", "max-epochs": args.epochs or 200, "seed": seed,
                      "log_dir": "./exp/", "name": f"parity_{name}_{seed}"})
        if args.max_len:
            flags["max-one-year-length"] = args.max_len
        return official.as_flags(flags)
    flags.update(dataset=name, model_name=spec["official_model"], seed=seed, num_train_epochs=args.epochs or 200,
                 patience=args.patience, ts_item=thresholds[0],
                 ts_user=protocol.matching_user_threshold(thresholds[1]), max_len=args.max_len or flags["max_len"])
    return official.as_flags(flags)


def spec_hash(payload):
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parity_inputs(args, config, data):
    """What both sides read besides the official flags and our keys' names: the ``--key=value`` keys, ``--data_path``,
    the fingerprint of each atomic file of the dataset and the digest of everything exported (the split, the tables:
    features, PCA, teacher, similar users). Hashed into the official spec and stored in our records."""
    from recbole_llm.fileio import file_fingerprint
    from recbole_llm.parity.export import data_digest

    folder = config["data_path"]
    names = sorted(n for n in os.listdir(folder) if n.startswith(f"{args.dataset}.")) if os.path.isdir(folder) else []
    return {"keys": args.keys, "data_path": os.path.abspath(args.data_path) if args.data_path else None,
            "dataset_files": {n: file_fingerprint(os.path.join(folder, n)) for n in names if os.path.isfile(os.path.join(folder, n))},
            "exported": data_digest(data)}


def done(path, spec, inputs=None):
    """Whether ``path`` holds a finished record of this spec (and, for our side, of these inputs)."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False  # unreadable: run again
    if not isinstance(record, dict):
        return False
    return (record.get("status") == "ok" and record.get("spec") == spec
            and (inputs is None or record.get("parity_inputs") == spec_hash(inputs)))


def run_official_seed(args, spec, scratch, name, seed, thresholds, mode, inputs=None):
    """One official run; its record (suite layout) written to runs/<dataset>/official/<seed>.json. Its spec: the
    method, the flags and the inputs (:func:`parity_inputs`), never the scratch folder (each run makes its own)."""
    flags = official_flags(args, spec, name, seed, thresholds)
    path = os.path.join(args.out, "runs", args.dataset, "official", f"{seed}.json")
    record = {"dataset": args.dataset, "row": "official", "model": spec.get("official_model", "LEARN"), "seed": seed,
              "keys": {"flags": flags}, "spec": spec_hash([args.method, flags, inputs])}
    if inputs is not None:
        record["parity_inputs"] = spec_hash(inputs)
    if done(path, record["spec"]):
        print(f"official seed {seed}: done before, skipping", flush=True)
        return
    log, times_path = os.path.join(args.out, "logs", f"official_{seed}.log"), os.path.join(args.out, "logs", f"official_{seed}.times.json")
    start = time.perf_counter()
    # written under .running names and moved once the child has ended: a rerun stopped midway (SIGTERM) leaves the
    # finished run's log and times next to its record, not a truncated new log
    running_log, running_times = (os.path.join(args.out, "logs", f"official_{seed}.running.{ext}") for ext in ("log", "times.json"))
    code = official.run_official(args.method, scratch, flags, running_log, running_times)
    os.replace(running_log, log)
    if os.path.exists(running_times):
        os.replace(running_times, times_path)
    elif os.path.exists(times_path):
        os.remove(times_path)  # an earlier run's times must not pass for this one's
    times = official.read_times(times_path)
    try:
        if code != 0:
            raise ParityError(f"exit code {code} (see {log})")
        if args.method == "learn":
            metrics, best, params = official.learn_result(times), None, None
        else:
            with open(log, encoding="utf-8") as f:
                metrics, best, params = official.parse_seqrec_log(f.read())
        record.update(status="ok", modes={mode: metrics}, best_epoch=best, params=params or 0)
    except ParityError as err:
        record.update(status="failed", error=str(err))
    seconds = times["epoch_seconds"]
    record.update(sec_per_epoch=statistics.mean(seconds) if seconds else 0.0, epochs=len(seconds),
                  wall_seconds=time.perf_counter() - start)
    store.write_record(path, record)
    print(f"official seed {seed}: {record['status']}", flush=True)


def run_ours(suite, args, shared, inputs=None):
    """Our runs through the suite engine; each record also carries the hash of the inputs (:func:`parity_inputs`)."""
    for seed in args.seeds:
        path = run_path(suite, args.dataset, "ours", seed)
        if done(path, run_spec(suite, args.dataset, "ours", seed), inputs):
            print(f"ours seed {seed}: done before, skipping", flush=True)
            continue
        record = execute_run(suite, args.dataset, "ours", seed, shared=shared, threads=1)
        if inputs is not None and isinstance(record, dict):
            record["parity_inputs"] = spec_hash(inputs)
            store.write_record(path, record)


def failed_runs(args, suite):
    """'<side> seed <seed> (<error>)' of every run of the sides run now whose record is missing or not finished."""
    failed = []
    for side in args.sides:
        for seed in args.seeds:
            path = run_path(suite, args.dataset, side, seed)
            try:
                with open(path, encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                record = {"error": f"no readable record {path}"}
            if not isinstance(record, dict) or record.get("status") != "ok":
                error = str(record.get("error", "failed") if isinstance(record, dict) else "not a record")
                failed.append(f"{side} seed {seed} ({error.splitlines()[0][:160] if error else 'failed'})")
    return failed


def report(args, suite, thresholds, shift=None):
    paths = [run_path(suite, args.dataset, row, seed) for row in ("official", "ours") for seed in args.seeds]
    records = []
    for path in paths:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                records.append(json.load(f))
    header = (f"Parity `{args.method}` on {args.dataset} (`python -m recbole_llm.parity --method={args.method} "
              f"--dataset={args.dataset} --seeds={','.join(map(str, args.seeds))} --epochs={args.epochs} "
              f"--patience={args.patience} --max_len={args.max_len}`, {time.strftime('%Y-%m-%d')}); tail/short thresholds {thresholds}.")
    if shift:
        header += (f" Test targets that are tail by training popularity (ours): {shift['tail_ours']} of {shift['rows']};"
                   f" by popularity with the test item (official): {shift['tail_official']}; rows in one group only: {shift['moved']}.")
    table = build_tables(records, suite["pairs"], suite["eval_modes"], suite["metrics"], header)
    from recbole_llm.fileio import atomic_write_text

    atomic_write_text(os.path.join(args.out, "results.md"), table + "\n")
    atomic_write_text(os.path.join(args.out, "results.json"), json.dumps(records, indent=1))
    print(table)


def run(args):
    """Both sides and the table; returns the runs that failed (:func:`failed_runs`)."""
    from recbole_llm.parity.source import gather

    if "official" in args.sides:  # before any feature file or teacher is built
        args.official = official.check_checkout(args.official, args.method)
    spec = load_methods()[args.method]
    probe = our_suite(args, spec, None)
    model, config = run_config(probe, args.dataset, "ours", args.seeds[0])
    ours_config, shared, data = gather(args.method, model, args.dataset, config)
    thresholds = None if args.method == "learn" else given_thresholds(ours_config, data)
    if thresholds:
        check_negatives(data.sequences, data.n_items)
    suite = our_suite(args, spec, thresholds)
    inputs = parity_inputs(args, ours_config, data)
    if "official" in args.sides:
        scratch = official.scratch_copy(args.official, args.scratch, args.method, f"{args.method}_{args.dataset}")
        try:
            name = export(args, spec, shared, data, scratch)
            for seed in args.seeds:
                run_official_seed(args, spec, scratch, name, seed, thresholds, suite["eval_modes"][0], inputs)
        finally:
            official.remove_scratch(scratch)
    if "ours" in args.sides:
        run_ours(suite, args, shared, inputs)
    shift = protocol.group_shift(data.sequences, data.n_items, thresholds[0]) if thresholds else None
    report(args, suite, thresholds, shift)
    return failed_runs(args, suite)


def given_thresholds(config, data):
    """The dataset's own thresholds (beauty 4 / 9), else the 80%-tail and median computed from the split."""
    computed = tail_thresholds(data.sequences, data.n_items, float(config["tail_ratio"] or 0.8))
    item = config["tail_threshold"] or computed[0]
    user = config["short_history_threshold"] or computed[1]
    return int(item), int(user)


def main(argv=None):
    """Exit code 2: bad input (one line); 1: a run of a side failed (one line naming them); 0: every run finished."""
    from recbole_llm.errors import print_error

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        failed = run(args)
    except UserError as err:
        print_error(err)
        raise SystemExit(2) from None
    if failed:
        print(f"error: {len(failed)} parity run(s) failed: {'; '.join(failed)} (logs: {os.path.join(args.out, 'logs')})", file=sys.stderr)
        raise SystemExit(1)
    return 0
