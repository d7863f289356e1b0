"""cold_id_norm after the fact: the saved checkpoints of a cold_id suite evaluated with each norm rule of the
generated ID rows (an evaluation-side choice for cold_id: generate, whose training never reads generated rows).

    python benchmarks/cold_id_norm.py --suite_out=docs/benchmarks/cold_id --norms=none,row,mean --splits=valid,test \
        --json=docs/benchmarks/cold_id/norm.json

For every checkpoint under ``<suite_out>/saved/<dataset>/<row>/`` of a row with cold_id (its seed read from the
checkpoint's config): NDCG@10 overall, warm and cold, Recall@10 cold, per split and norm. Writes the JSON (atomic)
and prints a table of means over seeds. ``dropout`` rows trained with the rule of their run (recorded as
``trained_norm``); the other rules change only their evaluation.
"""

import argparse
import glob
import json
import os
import statistics

METRICS = ("ndcg@10", "ndcg_warm@10", "ndcg_cold@10", "recall_cold@10")


def evaluate(model_file, norm, split):
    from recbole_llm.quick_start import load_model_file
    from recbole_llm.utils import get_trainer

    config, model, train, valid, test = load_model_file(model_file, {"state": "ERROR", "show_progress": False, "cold_id_norm": norm})
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train)
    result = trainer.evaluate(valid if split == "valid" else test, load_best_model=False)
    return config, {k: float(result[k]) for k in METRICS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite_out", required=True)
    parser.add_argument("--norms", default="none,row,mean")
    parser.add_argument("--splits", default="valid,test")
    parser.add_argument("--json", required=True)
    parser.add_argument("--plot", default=None, help="PNG of warm and cold NDCG@10 (test) per row and rule, with the rows "
                        "without cold_id from the suite's records")
    args = parser.parse_args(argv)
    from recbole_llm.fileio import atomic_write_text

    records = json.load(open(args.json)) if os.path.isfile(args.json) else []
    done = {(r["file"], r["norm"], r["split"]) for r in records}
    for folder in sorted(glob.glob(os.path.join(glob.escape(args.suite_out), "saved", "*", "*cold_id=*"))):
        for model_file in sorted(glob.glob(os.path.join(glob.escape(folder), "*.pth"))):
            for norm in args.norms.split(","):
                for split in args.splits.split(","):
                    name = os.path.relpath(model_file, args.suite_out)
                    if (name, norm, split) in done:
                        continue
                    config, metrics = evaluate(model_file, norm, split)
                    records.append({"file": name, "row": os.path.basename(folder), "seed": int(config["seed"]), "norm": norm,
                                    "split": split, "trained_norm": config["cold_id_norm"] or "none", **metrics})
                    atomic_write_text(args.json, json.dumps(records, indent=1))
                    print(name, norm, split, {k: round(v, 4) for k, v in metrics.items()}, flush=True)
    table = {}
    for r in records:
        table.setdefault((r["row"], r["split"], r["norm"]), []).append(r)
    print("| row | split | norm | seeds | " + " | ".join(METRICS) + " |")
    for (row, split, norm), rs in sorted(table.items()):
        print(f"| {row} | {split} | {norm} | {len(rs)} | " + " | ".join(f"{statistics.mean(r[k] for r in rs):.4f}" for k in METRICS) + " |")
    if args.plot:
        plot(records, args.suite_out, args.plot)
    return 0


def plot(records, suite_out, path):
    from recbole_llm.reporting import grouped_bars

    groups = {}
    for r in records:
        if r["split"] == "test":
            groups.setdefault(f"{r['row']} {r['norm']}", []).append(r)
    for run in glob.glob(os.path.join(glob.escape(suite_out), "runs", "*", "*", "*.json")):
        record = json.load(open(run))
        if "cold_id=" not in record["row"] and record.get("status") == "ok":
            groups.setdefault(record["row"], []).append(record["modes"]["full"])
    rows = []
    for name, rs in sorted(groups.items()):
        row = {"model": name}
        for metric in ("ndcg_warm@10", "ndcg_cold@10"):
            values = [r[metric] for r in rs]
            row[f"{metric}_mean"] = statistics.mean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    grouped_bars(rows, [("ndcg_warm@10", "warm NDCG@10"), ("ndcg_cold@10", "cold NDCG@10")],
                 "cold_id: warm and cold items (test, mean and std over seeds)", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
