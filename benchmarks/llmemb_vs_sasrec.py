"""LLM models (LLMEmb*, LLMESR*, LLM2X*) against their ID-embedding baselines, same split, seed, size and budget.

    python benchmarks/llmemb_vs_sasrec.py --data_path=../shared/datasets --datasets=scientific,beauty \
        --pairs=SASRec:LLMEmbSASRec,GRU4Rec:LLMEmbGRU4Rec,BERT4Rec:LLMEmbBERT4Rec --epochs=50 --seeds=2024 --scft

Every model trains once (early stopping on valid NDCG@10, full ranking) and its best checkpoint is tested
with full ranking and with 100 sampled negatives (uni100). The table reports overall / head / tail NDCG@10
and HR@10 in both modes (mean ± half-width of the 95% confidence interval of the mean over seeds, Student t),
seconds per training epoch, and the relative change of each LLM model against its baseline with its own
95% interval: from the per-seed paired changes ``llm_s / base_s - 1`` when both models ran on at least two
common seeds, else from the ratio of the means (delta method). Both sides of a pair train the same way
(``--sasrec_mode`` etc. as ``train_mode:batch``; default all_positions:128 for SASRec and BERT4Rec, RecBole's
prefix:2048 for GRU4Rec). ``--json`` is resumable: finished model/seed runs in it are not rerun, and
``--table_only=a.json,b.json`` merges the files of parallel runs into one table (``--only=MODEL,...`` trains
just those models of the pairs, so one pair can run on two cores). ``--llm_keys=KEY=VALUE,...``
sets config keys on the LLM side only (an ablation against the same baseline: resume from a copy of the
baseline's JSON and only the LLMEmb model trains); its runs are recorded with their keys and form their own rows,
``LLMEmbBERT4Rec [output_bias=False]``. Merging files that hold the same run (such a copied baseline) counts it
once. ``--scft`` uses SCFT-tuned features (built once, cached); otherwise the un-tuned LLM features
(``--llm_keys=scft=False`` turns it off again for one model's runs). The backbone of ``LLMESRSASRec`` etc. is
the name without its prefix, so both sides of ``SASRec:LLMESRSASRec`` train with ``--sasrec_mode``.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from recbole_llm.benchmark import mean_ci, t_quantile_975  # noqa: E402

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
    backbone = backbone_of(model)
    mode = {"SASRec": args.sasrec_mode, "GRU4Rec": args.gru4rec_mode, "BERT4Rec": args.bert4rec_mode}.get(backbone)
    if mode:  # both sides of a pair train the same way: "<train_mode>:<batch size>"
        train_mode, _, batch = mode.partition(":")
        config.update(train_mode=train_mode, train_batch_size=int(batch or 128))
    if is_llm_model(model):
        config.update(scft=args.scft, scft_steps=args.scft_steps, teacher_epochs=args.epochs, align_alpha=args.alpha)
        config.update(parse_keys(args.llm_keys))
    result = run_recbole_llm(model=model, dataset=dataset, config_dict=config)
    uni = evaluate_model_file(result["model_file"], {"eval_args": {"mode": "uni100"}})
    return {
        "full": {m: result["test_result"][m] for m in METRICS},
        "uni100": {m: uni[m] for m in METRICS},
        "sec_per_epoch": result["train_seconds"],
        "epochs": result["epochs_run"],
        "params": result["num_params"],
    }


LLM_PREFIXES = ("LLMEmb", "LLMESR", "LLM2X")


def is_llm_model(model):
    """The LLM side of a pair: --scft, --alpha and --llm_keys apply to it."""
    return model.startswith(LLM_PREFIXES)


def backbone_of(model):
    """``LLMESRSASRec`` -> ``SASRec``: the backbone whose ``--*_mode`` both sides of a pair train with."""
    for prefix in LLM_PREFIXES:
        if model.startswith(prefix):
            return model[len(prefix):]
    return model


def parse_keys(text):
    """``"output_bias=False,adapter_layers=1"`` -> {"output_bias": False, "adapter_layers": 1}."""
    from recbole_llm.config import parse_overrides

    items = [item for item in (text or "").split(",") if item]
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--llm_keys: expected KEY=VALUE, got '{item}'")
    return parse_overrides(items)


def mean(values):
    return statistics.mean(values) if values else float("nan")


def fmt_ci(values, digits=4):
    """'mean ± half-width' of the 95% CI over seeds; the mean alone below 2 seeds."""
    m, half = mean_ci(values)
    if m is None:
        return "n/a"
    return f"{m:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else "")


def relative_change(base_rows, llm_rows, value):
    """(change, half-width or None, how) of ``llm / base - 1``, ``value(row)`` giving a run's number.

    Paired when at least two seeds ran for both models: mean and t interval of the per-seed changes.
    Otherwise the ratio of the means, with a delta-method interval (t with min(n) - 1 degrees of freedom)
    when each side has at least two runs.
    """
    by_seed = {r.get("seed"): value(r) for r in base_rows if r.get("seed") is not None}
    paired = [(value(r), by_seed[r["seed"]]) for r in llm_rows if r.get("seed") in by_seed and by_seed[r["seed"]]]
    if len(paired) >= 2:
        change, half = mean_ci([l / b - 1 for l, b in paired])
        return change, half, f"paired, {len(paired)} seeds"
    b = [value(r) for r in base_rows]
    l = [value(r) for r in llm_rows]
    if not b or not l or not statistics.mean(b):
        return None, None, "n/a"
    ratio = statistics.mean(l) / statistics.mean(b)
    if len(b) < 2 or len(l) < 2:
        return ratio - 1, None, "one run" if len(b) == len(l) == 1 else "ratio of means"
    if not statistics.mean(l):
        return ratio - 1, None, "ratio of means"
    rel_var = statistics.variance(l) / (len(l) * statistics.mean(l) ** 2) + statistics.variance(b) / (len(b) * statistics.mean(b) ** 2)
    half = t_quantile_975(min(len(b), len(l)) - 1) * abs(ratio) * math.sqrt(rel_var)
    return ratio - 1, half, "ratio of means"


def fmt_change(change, half):
    if change is None:
        return "n/a"
    text = f"{change * 100:+.1f}%"
    if half is not None:
        text += f" [{(change - half) * 100:+.1f}, {(change + half) * 100:+.1f}]"
    return text


def variant(model, row):
    """The table name of a run: the model, plus its ``--llm_keys`` when it ran with some (an ablation)."""
    return f"{model} [{row['llm_keys']}]" if row.get("llm_keys") else model


def split_variants(models):
    """``{model: rows}`` -> ``{variant: rows}``: runs with other ``--llm_keys`` are other rows of the tables."""
    out = {}
    for model, rows in models.items():
        for row in sorted(rows, key=lambda r: bool(r.get("llm_keys"))):  # stable: the model's default first
            out.setdefault(variant(model, row), []).append(row)
    return out


def merge_files(paths):
    """Merge result JSONs of parallel runs. A run found in several files (the same baseline copied into an
    ablation's file) counts once; two different results for one dataset, model, keys and seed are an error."""
    results, origin = {}, {}
    for path in paths:
        try:
            with open(path) as handle:
                data = json.load(handle)
        except (OSError, ValueError) as err:
            raise SystemExit(f"--table_only: cannot read {path}: {err}")
        for dataset, models in data.items():
            for model, rows in models.items():
                for row in rows:
                    key = (dataset, variant(model, row), row.get("seed"))
                    if key in origin:
                        first_path, first_row = origin[key]
                        if first_row != row:
                            raise SystemExit(
                                f"--table_only: {path} and {first_path} hold different results for {key[0]} {key[1]} "
                                f"seed {key[2]}; keep one of them (or give the ablation --llm_keys)"
                            )
                        continue
                    origin[key] = (path, row)
                    results.setdefault(dataset, {}).setdefault(model, []).append(row)
    return results


def build_tables(results, pairs, header):
    """Markdown of the per-model table and the relative-change table (``results[dataset][model]``: run rows;
    runs with ``llm_keys`` form their own rows, compared with the same baseline)."""
    results = {dataset: split_variants(models) for dataset, models in results.items()}
    lines = [
        header,
        "",
        "Mean ± half-width of the 95% confidence interval of the mean over seeds (Student t, n-1 degrees of freedom; "
        "the mean alone for one seed).",
        "",
        "| dataset | model | mode | seeds | NDCG@10 | head | tail | HR@10 | head | tail | s/epoch | epochs | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, models in results.items():
        for model, rows in models.items():
            ok = [r for r in rows if "error" not in r]
            if not ok:
                lines.append(f"| {dataset} | {model} | failed: {rows[0]['error'][:80]} |")
                continue
            for mode in ("full", "uni100"):
                cells = [fmt_ci([r[mode][m] for r in ok]) for m in METRICS]
                lines.append(
                    f"| {dataset} | {model} | {mode} | {len(ok)} | " + " | ".join(cells)
                    + f" | {mean([r['sec_per_epoch'] for r in ok]):.2f} | {mean([r['epochs'] for r in ok]):.0f} | {ok[0]['params']} |"
                )
    lines += [
        "",
        "Relative change of each LLM model against its baseline, with its 95% interval in brackets (percentage "
        "points): paired per-seed changes when both ran on >= 2 common seeds, else the ratio of the means:",
        "",
        "| dataset | pair | mode | NDCG@10 | tail NDCG@10 | head NDCG@10 | epoch time | interval from |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, models in results.items():
        for pair in pairs:
            base, llm = pair.split(":")
            b = [r for r in models.get(base, []) if "error" not in r]
            if not b:
                continue
            for name, rows in models.items():
                l = [r for r in rows if "error" not in r]
                if not l or name.split(" [")[0] != llm:
                    continue
                for mode in ("full", "uni100"):
                    cells, how = [], "n/a"
                    for metric in ("ndcg@10", "ndcg_tail@10", "ndcg_head@10"):
                        change, half, how = relative_change(b, l, lambda r, mode=mode, metric=metric: r[mode][metric])
                        cells.append(fmt_change(change, half))
                    ratio = mean([r["sec_per_epoch"] for r in l]) / max(mean([r["sec_per_epoch"] for r in b]), 1e-9)
                    lines.append(f"| {dataset} | {base} -> {name} | {mode} | " + " | ".join(cells) + f" | {ratio:.2f}x | {how} |")
    return "\n".join(lines)


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
    parser.add_argument("--sasrec_mode", default="all_positions:128", help="train_mode:batch of the SASRec pair")
    parser.add_argument("--gru4rec_mode", default="prefix:2048", help="train_mode:batch of the GRU4Rec pair")
    parser.add_argument("--bert4rec_mode", default="all_positions:128", help="train_mode:batch of the BERT4Rec pair")
    parser.add_argument(
        "--llm_keys", default="", help="config keys of the LLM side only, KEY=VALUE,... (an ablation against the same baseline)"
    )
    parser.add_argument(
        "--only", default="", help="train only these models of the pairs (split a pair over two cores; merge with --table_only)"
    )
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    parser.add_argument("--json", default=None, help="raw results; an existing file is resumed (finished runs are kept)")
    parser.add_argument("--table_only", default=None, help="comma-separated result JSONs: merge them and print the table")
    args = parser.parse_args()
    parse_keys(args.llm_keys)  # a malformed value fails here, not after the baselines trained
    only = set(filter(None, args.only.split(",")))
    unknown = only - {m for pair in args.pairs.split(",") for m in pair.split(":")}
    if unknown:
        parser.error(f"--only names {sorted(unknown)}, which no pair of --pairs={args.pairs} has")

    if args.table_only:
        results = merge_files(args.table_only.split(","))
        header = f"Merged from {args.table_only} ({time.strftime('%Y-%m-%d')})."
        print(build_tables(results, args.pairs.split(","), header))
        return

    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    if args.json and os.path.isfile(args.json):
        with open(args.json) as handle:
            results = json.load(handle)
        for models in results.values():  # keep finished runs, retry failed ones
            for model in models:
                models[model] = [r for r in models[model] if "error" not in r]
    with tempfile.TemporaryDirectory() as workdir:
        for dataset in args.datasets.split(","):
            for pair in args.pairs.split(","):
                for model in pair.split(":"):
                    if only and model not in only:
                        continue
                    keys = args.llm_keys if is_llm_model(model) else ""
                    for seed in seeds:
                        done = results.get(dataset, {}).get(model, [])
                        if any(r.get("seed") == seed and r.get("llm_keys", "") == keys for r in done):
                            print(dataset, model, seed, "done before, skipping", flush=True)
                            continue
                        start = time.perf_counter()
                        try:
                            row = run_one(model, dataset, seed, args, workdir)
                        except Exception as err:  # record and go on
                            row = {"error": f"{type(err).__name__}: {err}"}
                        row["wall_seconds"] = time.perf_counter() - start
                        row["seed"] = seed
                        if keys:
                            row["llm_keys"] = keys
                        results.setdefault(dataset, {}).setdefault(model, []).append(row)
                        print(dataset, model, seed, json.dumps(row), flush=True)
                        if args.json:
                            from recbole_llm.fileio import atomic_write_text

                            atomic_write_text(args.json, json.dumps(results, indent=1))

    llm_keys_arg = f" --llm_keys={args.llm_keys}" if args.llm_keys else ""
    header = (
        f"Command: `python benchmarks/llmemb_vs_sasrec.py --datasets={args.datasets} --pairs={args.pairs} --epochs={args.epochs} "
        f"--seeds={args.seeds}{' --scft' if args.scft else ''} --sasrec_mode={args.sasrec_mode} --gru4rec_mode={args.gru4rec_mode} "
        f"--bert4rec_mode={args.bert4rec_mode}{llm_keys_arg}` ({platform.machine()}, {os.cpu_count()} cores, no GPU, "
        f"{time.strftime('%Y-%m-%d')}); features: MiniLM {'SCFT-tuned' if args.scft else 'un-tuned'}, hidden {args.hidden_size}."
    )
    table = build_tables(results, args.pairs.split(","), header)
    print(table)
    if args.out:
        from recbole_llm.fileio import atomic_write_text

        atomic_write_text(args.out, table + "\n")


if __name__ == "__main__":
    main()
