"""The suite's tables and plots: per-row means with 95% intervals, paired changes, results.md / .csv / .json and
the head / tail, warm / cold and popularity-bucket plots. Records marked stale (recbole_llm.bench.store) are left
out of every number and named under the table."""

import csv
import json
import math
import os
import statistics
import time

COLD_SHOWN = ["ndcg_warm@10", "ndcg_cold@10", "recall_warm@10", "recall_cold@10", "targets_cold"]  # under the cold protocol
CSV_METRICS = ["ndcg@10", "hit@10", "recall@10", "ndcg_head@10", "ndcg_tail@10", "hit_head@10", "hit_tail@10",
               "ndcg_short@10", "ndcg_long@10", "ndcg_warm@10", "ndcg_cold@10", "recall_warm@10", "recall_cold@10",
               "targets_warm", "targets_cold"]
CI_METRICS = ["ndcg@10", "ndcg_tail@10"]  # results.csv: the interval's bounds too (every metric: its half-width)
POP_EDGES = (0, 2, 5, 10, 20, 50)  # popularity buckets: [0,2), [2,5), ..., [50, inf)


def bucket_labels():
    edges = list(POP_EDGES) + [None]
    return [f"{lo}-{hi - 1}" if hi is not None else f"{lo}+" for lo, hi in zip(edges[:-1], edges[1:])]


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


def of_row(name, row):
    """True when table row ``name`` is ``row`` or one of its ablations ``'row [keys]'`` (a row whose own name holds
    ' [' matches itself)."""
    return name == row or name.startswith(row + " [")


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
                if not b or not o or not of_row(name, other):
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


def stale_lines(records):
    """The lines naming the records left out of the tables because their spec or inputs changed since they ran."""
    stale = [r for r in records if r.get("stale")]
    if not stale:
        return []
    lines = ["", f"Left out: {len(stale)} record(s) whose inputs no longer match the suite (rerun the suite to replace them):", ""]
    return lines + [f"- {r['dataset']} {r['row']} seed {r['seed']}: {r['stale']}" for r in stale]


def build_tables(records, pairs, modes, metrics, header):
    """The text of results.md: the row table, the pair table, and the stale records left out of both."""
    stale = stale_lines(records)
    records = [r for r in records if not r.get("stale")]
    lines = [header, "", "Mean ± half-width of the 95% confidence interval of the mean over seeds (Student t, n-1 degrees "
             "of freedom; the mean alone for one seed).", ""]
    lines += row_table(records, modes, metrics)
    if pairs:
        lines += ["", "Relative change against the pair's first row, with its 95% interval in brackets (percentage points): "
                  "paired per-seed changes when both ran on >= 2 common seeds, else the ratio of the means:", ""]
        lines += pair_table(records, pairs, modes, metrics)
    failed_buckets = [r for r in records if r.get("popularity_buckets_error")]
    if failed_buckets:
        lines += ["", "Popularity buckets could not be computed for: " + "; ".join(
            f"{r['dataset']} {r['row']} seed {r['seed']} ({r['popularity_buckets_error'][:100]})" for r in failed_buckets)]
    return "\n".join(lines + stale)


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
    for dataset, rows in grouped([r for r in records if not r.get("stale")]).items():
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
    for dataset, rows in grouped([r for r in records if not r.get("stale")]).items():
        for mode in suite["eval_modes"]:
            for name, groups, title in plots:
                bars = bar_rows(rows, mode, [metric for metric, _ in groups])
                if bars:
                    path = os.path.join(suite["out"], f"{name}_{dataset}_{mode}.png")
                    paths.append(grouped_bars(bars, groups, f"{dataset} ({mode}): {title}", path))
            path = popularity_plot(rows, mode, f"{dataset} ({mode})", os.path.join(suite["out"], f"ndcg_by_popularity_{dataset}_{mode}.png"))
            paths += [path] if path else []
    return paths


def bucket_ndcg(bucket):
    """A bucket's NDCG at its cut-off (``ndcg@<k>``: 10, or the largest topk below 10 the run had)."""
    return next((v for k, v in bucket.items() if k.startswith("ndcg@")), None)


def bucket_k(buckets):
    return next((k.split("@")[1] for b in buckets for bucket in b.values() for k in bucket if k.startswith("ndcg@")), "10")


def popularity_plot(rows, mode, title, path):
    """NDCG@10 per target-item popularity bucket, a line per row (mean over seeds); None when no run has buckets."""
    import matplotlib.pyplot as plt
    import numpy as np

    from recbole_llm.fileio import atomic_savefig

    labels, markers, colors = bucket_labels(), "osD^vP*Xh<>p", plt.get_cmap("tab20").colors
    fig, ax = plt.subplots(figsize=(7, 4))
    plotted, k = False, "10"
    for index, (row, runs) in enumerate(rows.items()):
        buckets = [r["popularity_buckets"][mode] for r in runs if r.get("status") == "ok" and mode in (r.get("popularity_buckets") or {})]
        k = bucket_k(buckets) if buckets else k
        means = []
        for label in labels:
            values = [bucket_ndcg(b[label]) for b in buckets if label in b and bucket_ndcg(b[label]) is not None]
            means.append(statistics.mean(values) if values else np.nan)
        if not all(np.isnan(means)):
            # more rows than a default colour cycle: colour, marker and dash pattern all vary
            style = dict(marker=markers[index % len(markers)], color=colors[(2 * index) % 20 + (index // 10) % 2])
            ax.plot(labels, means, linestyle="-" if index < 10 else "--", label=row, **style)
            plotted = True
    if plotted:
        ax.set_xlabel("target item popularity (training users)")
        ax.set_ylabel(f"NDCG@{k}")
        ax.set_title(f"{title}: NDCG@{k} by item popularity")
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path if plotted else None
