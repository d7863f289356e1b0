"""Side-by-side benchmark of plugin and RecBole models on one dataset, same split and seeds.

    python -m recbole_llm.benchmark --dataset=scientific --data_path=../shared/datasets \
        --models=SASRec,GRU4Rec,BERT4Rec,FDSA,S3Rec,UniSRec,LLM2XSASRec,LLMEmbSASRec,LLMEmbGRU4Rec,LLMEmbBERT4Rec,LEARN \
        [--epochs=N] [--seeds=42,43,44] [--eval_mode=full|uni100] [--out=DIR] [--config_files="a.yaml"] [--key=value ...]

For every model and seed: train (early stopping on valid NDCG@10), test, and measure NDCG@10 by target-item
popularity bucket. One JSON per finished run under ``DIR/runs/`` makes it resumable: a finished (or failed)
model/seed is not run again (``--rerun_failed`` retries failures). A failing model is recorded with its
error and the others go on. Writes ``results.csv`` and ``results.md`` (mean and std over seeds of overall,
head/tail and short/long metrics, train seconds per epoch, eval seconds, parameters) and two PNG plots:
``ndcg_head_tail.png`` (grouped bars per model) and ``ndcg_by_popularity.png`` (NDCG@10 per item-popularity
bucket, the papers' long-tail figure).
"""

import argparse
import ast
import csv
import json
import os
import statistics
import sys
import time
import traceback

from recbole_llm.fileio import atomic_open, atomic_savefig, atomic_write_text

REPORTED = [
    "ndcg@10", "hit@10", "recall@10", "ndcg_head@10", "ndcg_tail@10", "hit_head@10", "hit_tail@10",
    "ndcg_short@10", "ndcg_long@10",
]
POP_EDGES = (0, 2, 5, 10, 20, 50)  # popularity buckets: [0,2), [2,5), ..., [50, inf)


def bucket_labels():
    edges = list(POP_EDGES) + [None]
    return [f"{lo}-{hi - 1}" if hi is not None else f"{lo}+" for lo, hi in zip(edges[:-1], edges[1:])]


def popularity_buckets(model_file, eval_mode):
    """NDCG@10 and row count per popularity bucket of the test target items."""
    import numpy as np
    from recbole.evaluator.metrics import NDCG

    from recbole_llm.evaluator.longtail import ITEM_POP_KEY, TARGET_KEY
    from recbole_llm.quick_start import load_model_file
    from recbole_llm.utils import get_trainer

    config, model, train_data, _, test_data = load_model_file(model_file, {"eval_args": {"mode": eval_mode}})
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train_data)
    captured = {}
    original = trainer.eval_collector.get_data_struct

    def capture():
        struct = original()
        captured["struct"] = struct
        return struct

    trainer.eval_collector.get_data_struct = capture
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


def run_one(model, seed, args, base_config, out_dir):
    from recbole_llm.quick_start import run_recbole_llm

    config = dict(base_config)
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
    result = run_recbole_llm(model=model, dataset=args.dataset, config_file_list=args.config_file_list, config_dict=config)
    row = {
        "status": "ok",
        "test": {k: float(v) for k, v in result["test_result"].items()},
        "valid": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
        "train_seconds_per_epoch": result["train_seconds"],
        "epochs_run": result["epochs_run"],
        "eval_seconds": result["eval_seconds"],
        "num_params": result["num_params"],
        "model_file": result["model_file"],
    }
    try:
        row["popularity_buckets"] = popularity_buckets(result["model_file"], args.eval_mode)
    except Exception as err:  # the table still stands without the plot data
        row["popularity_buckets_error"] = f"{type(err).__name__}: {err}"
    return row


def write_json(path, data):
    atomic_write_text(path, json.dumps(data, indent=1))


def summarise(runs, models):
    """Rows of the results table: mean/std over seeds per model."""
    rows = []
    for model in models:
        done = [r for r in runs.get(model, []) if r["status"] == "ok"]
        failed = [r for r in runs.get(model, []) if r["status"] != "ok"]
        row = {"model": model, "seeds": len(done), "failed": len(failed)}
        for metric in REPORTED:
            values = [r["test"].get(metric) for r in done if metric in r["test"]]
            row[f"{metric}_mean"] = statistics.mean(values) if values else None
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
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
        return "" if mean is None else f"{mean:.4f} ± {row[f'{metric}_std']:.4f}"

    shown = ["ndcg@10", "hit@10", "ndcg_head@10", "ndcg_tail@10", "ndcg_short@10", "ndcg_long@10"]
    lines = [header, "", "| model | seeds | " + " | ".join(shown) + " | s/epoch | eval s | params | error |", "|" + "---|" * (len(shown) + 6)]
    for row in rows:
        cells = [fmt(row, m) for m in shown]
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
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(ok)), 4))
    x = np.arange(len(ok))
    for offset, (metric, label) in zip((-0.2, 0.2), (("ndcg_head@10", "head items"), ("ndcg_tail@10", "tail items"))):
        means = [r[f"{metric}_mean"] or 0 for r in ok]
        stds = [r[f"{metric}_std"] or 0 for r in ok]
        ax.bar(x + offset, means, 0.4, yerr=stds, label=label, capsize=3)
    ax.set_xticks(x)
    ax.set_xticklabels([r["model"] for r in ok], rotation=30, ha="right")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"{title}: NDCG@10 by target item group")
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "ndcg_head_tail.png"))
    atomic_savefig(fig, paths[-1], dpi=120)
    plt.close(fig)

    labels = bucket_labels()
    fig, ax = plt.subplots(figsize=(7, 4))
    plotted = False
    for row in ok:
        per_bucket = []
        for label in labels:
            values = [r["popularity_buckets"][label]["ndcg@10"] for r in runs[row["model"]] if r["status"] == "ok" and "popularity_buckets" in r and r["popularity_buckets"][label]["ndcg@10"] is not None]
            per_bucket.append(statistics.mean(values) if values else np.nan)
        if not all(np.isnan(per_bucket)):
            ax.plot(labels, per_bucket, marker="o", label=row["model"])
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
    args, extra = parser.parse_known_args(argv)
    args.extra = extra
    args.config_file_list = [os.path.abspath(f) for f in args.config_files.split()] if args.config_files else None
    return args


def main(argv=None):
    args = parse_args(argv)
    sys.argv = sys.argv[:1]
    base_config = {}
    for item in args.extra:
        key, _, value = item.lstrip("-").partition("=")
        try:
            base_config[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            base_config[key] = value
    out_dir = os.path.abspath(args.out or os.path.join("benchmarks", "out", args.dataset))
    models = [m for m in args.models.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {}
    for model in models:
        for seed in seeds:
            path = os.path.join(out_dir, "runs", f"{model}-{seed}.json")
            if os.path.isfile(path):
                with open(path) as handle:
                    row = json.load(handle)
                if row["status"] == "ok" or not args.rerun_failed:
                    print(f"{model} seed {seed}: done before ({row['status']}), skipping")
                    runs.setdefault(model, []).append(row)
                    continue
            start = time.perf_counter()
            try:
                row = run_one(model, seed, args, base_config, out_dir)
            except Exception as err:
                row = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            row["wall_seconds"] = time.perf_counter() - start
            write_json(path, row)
            runs.setdefault(model, []).append(row)
            summary = f"NDCG@10 {row['test']['ndcg@10']:.4f}" if row["status"] == "ok" else row["error"].splitlines()[0][:200]
            print(f"{model} seed {seed}: {row['status']} in {row['wall_seconds']:.0f} s, {summary}", flush=True)
    rows = summarise(runs, models)
    header = (
        f"Benchmark on {args.dataset}: `python -m recbole_llm.benchmark --dataset={args.dataset} --models={args.models} "
        f"--seeds={args.seeds} --eval_mode={args.eval_mode}" + (f" --epochs={args.epochs}" if args.epochs else "")
        + (" " + " ".join(args.extra) if args.extra else "") + f"` ({time.strftime('%Y-%m-%d')}); test metrics, mean ± std over seeds."
    )
    print(write_tables(rows, out_dir, header))
    plots = write_plots(rows, runs, out_dir, args.dataset)
    print(f"wrote {out_dir}/results.csv, results.md" + "".join(f", {os.path.basename(p)}" for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
