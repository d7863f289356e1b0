"""LLMEmb backbones against their ID-embedding baselines, same split, seed, size and budget.

    python benchmarks/llmemb_vs_sasrec.py --data_path=../shared/datasets --datasets=scientific,beauty \
        --pairs=SASRec:LLMEmbSASRec,GRU4Rec:LLMEmbGRU4Rec,BERT4Rec:LLMEmbBERT4Rec --epochs=50 --seeds=2024 --scft

Every model trains once (early stopping on valid NDCG@10, full ranking) and its best checkpoint is tested
with full ranking and with 100 sampled negatives (uni100). The table reports overall / head / tail NDCG@10
and HR@10 in both modes, seconds per training epoch, and the relative change of each LLMEmb model against
its baseline. SASRec-family models use train_mode all_positions on both sides. ``--scft`` uses SCFT-tuned
features (built once, cached); otherwise the un-tuned LLM features.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METRICS = ["ndcg@10", "ndcg_head@10", "ndcg_tail@10", "hit@10", "hit_head@10", "hit_tail@10"]


def run_one(model, dataset, seed, args, workdir):
    from recbole_llm.quick_start import evaluate_model_file, run_recbole_llm

    config = {
        "data_path": os.path.abspath(args.data_path),
        "checkpoint_dir": os.path.join(workdir, f"{dataset}-{model}-{seed}"),
        "epochs": args.epochs,
        "stopping_step": args.stopping_step,
        "seed": seed,
        "hidden_size": args.hidden_size,
        "embedding_size": args.hidden_size,
        "inner_size": 4 * args.hidden_size,
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "show_progress": False,
        "state": "WARNING",
        "eval_args": {"mode": "full"},
        "valid_metric": "NDCG@10",
    }
    if "SASRec" in model:
        config.update(train_mode="all_positions", train_batch_size=128)
    if model.startswith("LLMEmb"):
        config.update(scft=args.scft, scft_steps=args.scft_steps, teacher_epochs=args.epochs, align_alpha=args.alpha)
    result = run_recbole_llm(model=model, dataset=dataset, config_dict=config)
    uni = evaluate_model_file(result["model_file"], {"eval_args": {"mode": "uni100"}})
    return {
        "full": {m: result["test_result"][m] for m in METRICS},
        "uni100": {m: uni[m] for m in METRICS},
        "sec_per_epoch": result["train_seconds"],
        "epochs": result["epochs_run"],
        "params": result["num_params"],
    }


def mean(values):
    return statistics.mean(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=os.path.join(ROOT, "..", "shared", "datasets"))
    parser.add_argument("--datasets", default="scientific,beauty")
    parser.add_argument("--pairs", default="SASRec:LLMEmbSASRec,GRU4Rec:LLMEmbGRU4Rec,BERT4Rec:LLMEmbBERT4Rec")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--stopping_step", type=int, default=10)
    parser.add_argument("--seeds", default="2024")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--max_len", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--scft", action="store_true", help="SCFT-tuned features (else un-tuned)")
    parser.add_argument("--scft_steps", type=int, default=300)
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    parser.add_argument("--json", default=None, help="write the raw results here")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]

    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for dataset in args.datasets.split(","):
            for pair in args.pairs.split(","):
                for model in pair.split(":"):
                    for seed in seeds:
                        start = time.perf_counter()
                        try:
                            row = run_one(model, dataset, seed, args, workdir)
                        except Exception as err:  # record and go on
                            row = {"error": f"{type(err).__name__}: {err}"}
                        row["wall_seconds"] = time.perf_counter() - start
                        results.setdefault(dataset, {}).setdefault(model, []).append(row)
                        print(dataset, model, seed, json.dumps(row), flush=True)
                        if args.json:
                            from recbole_llm.fileio import atomic_write_text

                            atomic_write_text(args.json, json.dumps(results, indent=1))

    lines = [
        f"Command: `python benchmarks/llmemb_vs_sasrec.py --datasets={args.datasets} --pairs={args.pairs} --epochs={args.epochs} "
        f"--seeds={args.seeds}{' --scft' if args.scft else ''}` ({platform.machine()}, {os.cpu_count()} cores, no GPU, "
        f"{time.strftime('%Y-%m-%d')}); features: MiniLM {'SCFT-tuned' if args.scft else 'un-tuned'}, hidden {args.hidden_size}.",
        "",
        "| dataset | model | mode | NDCG@10 | head | tail | HR@10 | head | tail | s/epoch | epochs | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, models in results.items():
        for model, rows in models.items():
            ok = [r for r in rows if "error" not in r]
            if not ok:
                lines.append(f"| {dataset} | {model} | failed: {rows[0]['error'][:80]} |")
                continue
            for mode in ("full", "uni100"):
                vals = [mean([r[mode][m] for r in ok]) for m in METRICS]
                lines.append(
                    f"| {dataset} | {model} | {mode} | " + " | ".join(f"{v:.4f}" for v in vals)
                    + f" | {mean([r['sec_per_epoch'] for r in ok]):.2f} | {mean([r['epochs'] for r in ok]):.0f} | {ok[0]['params']} |"
                )
    lines += ["", "Relative change of each LLMEmb model against its baseline (mean over seeds):", ""]
    lines += ["| dataset | pair | mode | NDCG@10 | tail NDCG@10 | head NDCG@10 | epoch time |", "|---|---|---|---|---|---|---|"]
    for dataset, models in results.items():
        for pair in args.pairs.split(","):
            base, llm = pair.split(":")
            b = [r for r in models.get(base, []) if "error" not in r]
            l = [r for r in models.get(llm, []) if "error" not in r]
            if not b or not l:
                continue
            for mode in ("full", "uni100"):
                rel = []
                for metric in ("ndcg@10", "ndcg_tail@10", "ndcg_head@10"):
                    bv, lv = mean([r[mode][metric] for r in b]), mean([r[mode][metric] for r in l])
                    rel.append(f"{(lv / bv - 1) * 100:+.1f}%" if bv else "n/a")
                ratio = mean([r["sec_per_epoch"] for r in l]) / max(mean([r["sec_per_epoch"] for r in b]), 1e-9)
                lines.append(f"| {dataset} | {base} -> {llm} | {mode} | " + " | ".join(rel) + f" | {ratio:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        from recbole_llm.fileio import atomic_write_text

        atomic_write_text(args.out, table + "\n")


if __name__ == "__main__":
    main()
