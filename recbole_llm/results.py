"""The results page: ``python -m recbole_llm.results`` builds docs/results.md from the stored run records.

    python -m recbole_llm.results [--sources=benchmarks/results.yaml] [--out=docs/results.md] [--readme=README.md]
                                  [--no_plots] [--check]

``--sources`` lists the record sets (benchmarks/results.yaml says how): raw JSONs of the former
benchmarks/llmemb_vs_sasrec.py (read by :func:`recbole_llm.bench.store.legacy_records`), ``python -m recbole_llm.benchmark``
output folders (``runs/<dataset>/<Model>/<seed>.json``, or the former ``runs/<Model>-<seed>.json``) and suite stores
(read by :func:`recbole_llm.bench.store.load_records`). A record whose spec or inputs no longer match its suite
(recbole_llm.bench.store.record_problem) is left out of the tables and named under its table; an unreadable record
is an error naming the file.
Every set becomes one table, model x protocol (full, uni100, or the cold-start protocol): NDCG@10 overall / tail /
head (overall / warm / cold / tail for the cold protocol) as mean ± half-width of the 95% interval over seeds, the
number of seeds, the change against the row's baseline (SASRec unless the set names another) paired on the seeds
both ran, and the epoch time; with a head/tail (warm/cold) bar plot per protocol under ``<out folder>/results/``.
A "Results at a glance" table picks cells from those tables; ``--readme`` also writes it between the README's
``<!-- results-at-a-glance -->`` and ``<!-- /results-at-a-glance -->`` lines. Everything is written atomically, and
the page holds no build time, so the same records give the same page: ``--check`` writes nothing and exits 1 when
the page (or the README's block) is not what the records give.
"""

import argparse
import os
import re
import statistics
import textwrap

from recbole_llm.bench.report import fmt_change, fmt_ci, relative_change
from recbole_llm.bench.spec import load_suite
from recbole_llm.bench.store import CorruptRecord, legacy_records, load_records, read_record
from recbole_llm.errors import ConfigError, DataFileError, MissingFileError, cli_entry
from recbole_llm.fileio import atomic_write_text, read_yaml

SOURCE_KEYS = {"id", "title", "legacy", "runs", "suite", "out", "dataset", "protocol", "rows", "baseline", "baselines",
               "date", "command", "setting", "details", "note", "archived"}
METRICS = {"full": ["ndcg@10", "ndcg_tail@10", "ndcg_head@10"], "uni100": ["ndcg@10", "ndcg_tail@10", "ndcg_head@10"],
           "cold": ["ndcg@10", "ndcg_warm@10", "ndcg_cold@10", "ndcg_tail@10"]}
LABELS = {"ndcg@10": "NDCG@10", "ndcg_tail@10": "tail", "ndcg_head@10": "head", "ndcg_warm@10": "warm", "ndcg_cold@10": "cold"}
BEGIN, END = "<!-- results-at-a-glance -->", "<!-- /results-at-a-glance -->"


# ---- the sources file and the records it names -----------------------------------------------------------------
def load_sources(path):
    """The sources file with each source checked; a bad one is one ConfigError naming the source and key."""
    spec = read_yaml(path, "results sources", "pass --sources=<file.yaml>", MissingFileError)
    sources = spec.get("sources")
    if not isinstance(sources, list) or not sources:
        raise ConfigError(f"results sources '{path}': needs a list 'sources' (see benchmarks/results.yaml)")
    for index, source in enumerate(sources):
        check_source(path, index, source)
    ids = [s["id"] for s in sources]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"results sources '{path}': source ids must be unique, got {ids}")
    return spec


def check_source(path, index, source):
    where = f"results sources '{path}', source {source.get('id', index) if isinstance(source, dict) else index}"
    if not isinstance(source, dict):
        raise ConfigError(f"{where}: must be a mapping with id, title and legacy / runs / suite")
    unknown = sorted(set(source) - SOURCE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(SOURCE_KEYS))})")
    if "id" not in source or "title" not in source:
        raise ConfigError(f"{where}: needs 'id' and 'title'")
    kinds = [k for k in ("legacy", "runs", "suite") if k in source]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: name its records with exactly one of legacy / runs / suite, got {kinds or 'none'}")
    if "runs" in source and "dataset" not in source:
        raise ConfigError(f"{where}: a 'runs' folder needs 'dataset' (its run JSONs do not name it)")
    protocol = source.get("protocol", ["full"])
    if protocol != "cold" and (not isinstance(protocol, list) or not set(protocol) <= {"full", "uni100"}):
        raise ConfigError(f"{where}: protocol must be cold or a list of full / uni100, got {protocol!r}")


def source_records(source, root):
    """The source's records in the suite's form (dataset, row, model, seed, status, modes, sec_per_epoch, ...)."""
    if "legacy" in source:
        paths = [os.path.join(root, p) for p in source["legacy"]]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise MissingFileError(f"results source '{source['id']}': record file '{missing[0]}' is not there")
        return legacy_records(paths)
    if "suite" in source:
        suite = load_suite(os.path.join(root, source["suite"]))
        if source.get("out"):
            suite["out"] = os.path.join(root, source["out"])
        return [readable(record) for record in load_records(suite, corrupt=True)]
    return benchmark_records(source["dataset"], os.path.join(root, source["runs"]))


def benchmark_records(dataset, folder):
    """The run records of a ``python -m recbole_llm.benchmark --dataset --models`` output folder as suite records: the
    engine's store (``runs/<dataset>/<Model>/<seed>.json``, suite records already) or the former layout
    (``runs/<Model>-<seed>.json``, one mode: the one it ran)."""
    runs = os.path.join(folder, "runs")
    if not os.path.isdir(runs):
        raise MissingFileError(f"results: '{runs}' is not there (a benchmark --out folder holds runs/<dataset>/<Model>/<seed>.json)")
    if os.path.isdir(os.path.join(runs, dataset)):
        return store_records(os.path.join(runs, dataset))
    records = []
    for name in sorted(os.listdir(runs)):
        if not name.endswith(".json"):
            continue
        run = readable(read_record(os.path.join(runs, name), former=True))
        config = run.get("config") or {}
        model, _, seed = name[:-5].rpartition("-")
        record = {"dataset": dataset, "row": model, "model": model, "seed": config.get("seed", int(seed) if seed.isdigit() else None),
                  "status": run.get("status")}
        if run.get("status") == "ok":
            mode = (config.get("eval_args") or {}).get("mode", "full")
            record.update(modes={mode: run["test"]}, sec_per_epoch=run.get("train_seconds_per_epoch"),
                          epochs=run.get("epochs_run"), params=run.get("num_params"))
        else:
            record["error"] = run.get("error", "")
        records.append(record)
    return records


def store_records(folder):
    """The records under ``folder`` (``<row>/<seed>.json``), rows and seeds in name order."""
    records = []
    for row in sorted(os.listdir(folder)):
        names = os.listdir(os.path.join(folder, row)) if os.path.isdir(os.path.join(folder, row)) else []
        for name in sorted((n for n in names if n.endswith(".json")), key=lambda n: (len(n), n)):
            records.append(readable(read_record(os.path.join(folder, row, name))))
    return records


def readable(record):
    """``record``, or one DataFileError naming the file when it is corrupt (a results page never leaves a run out
    without saying so)."""
    if isinstance(record, CorruptRecord):
        raise DataFileError(f"results: record '{record.path}' is {record.error}: rerun its run (or delete the file)")
    return record


# ---- statistics of one source -----------------------------------------------------------------------------------
def rows_of(source, records):
    """{row: [finished records]} in the source's ``rows`` order (default: first seen), of its dataset."""
    ok = [r for r in records if r.get("status") == "ok" and not r.get("stale")
          and (not source.get("dataset") or r["dataset"] == source["dataset"])]
    order = source.get("rows") or list(dict.fromkeys(r["row"] for r in ok))
    return {row: [r for r in ok if r["row"] == row] for row in order if any(r["row"] == row for r in ok)}


def baseline_of(source, row, runs):
    """The row a row's changes are against: ``baselines`` by row or model name, else ``baseline`` (SASRec)."""
    model = runs[0]["model"] if runs else row
    named = source.get("baselines") or {}
    return named.get(row) or named.get(model) or source.get("baseline", "SASRec")


def value_of(mode, metric):
    if metric == "sec_per_epoch":
        return lambda r: r.get("sec_per_epoch")
    return lambda r: r["modes"].get(mode, {}).get(metric)


def usable(runs, value):
    return [r for r in runs if value(r) is not None]


def change(base_runs, runs, value):
    """(change, half-width, how) of ``runs`` against ``base_runs`` on the seeds both ran; None when none is common."""
    base_runs, runs = usable(base_runs, value), usable(runs, value)
    common = {r["seed"] for r in base_runs} & {r["seed"] for r in runs}
    if not common:
        return None, None, "no common seed"
    return relative_change([r for r in base_runs if r["seed"] in common], [r for r in runs if r["seed"] in common], value)


def ratio(base_runs, runs, value):
    """mean(runs) / mean(base_runs) on the seeds both ran (epoch time); None without a common seed."""
    base_runs, runs = usable(base_runs, value), usable(runs, value)
    common = {r["seed"] for r in base_runs} & {r["seed"] for r in runs}
    b = [value(r) for r in base_runs if r["seed"] in common]
    o = [value(r) for r in runs if r["seed"] in common]
    return statistics.mean(o) / statistics.mean(b) if b and o and statistics.mean(b) else None


def modes_of(source):
    return ["full"] if source.get("protocol") == "cold" else list(source.get("protocol") or ["full"])


def protocol_label(source, mode):
    return "cold (full ranking)" if source.get("protocol") == "cold" else mode


# ---- the page ---------------------------------------------------------------------------------------------------
def slug(title):
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def source_table(source, rows):
    """The lines of one source's table: a line per row and protocol, values then changes against the baseline."""
    metrics = METRICS["cold" if source.get("protocol") == "cold" else "full"]
    labels = [LABELS[m] for m in metrics]
    lines = ["| model | protocol | seeds | " + " | ".join(labels) + " | vs | " + " | ".join(f"change {l}" for l in labels)
             + " | paired on | s/epoch |", "|---|---|---|" + "---|" * (2 * len(metrics) + 1) + "---|---|"]
    bases = {baseline_of(source, row, runs) for row, runs in rows.items()}
    for row, runs in rows.items():
        base = baseline_of(source, row, runs)
        for mode in modes_of(source):
            cells = [fmt_ci([v for v in map(value_of(mode, m), runs) if v is not None]) for m in metrics]
            if row == base or base not in rows:
                changes, how, against = ["—"] * len(metrics), "", "—" if row in bases else f"({base} not in this set)"
            else:
                found = [change(rows[base], runs, value_of(mode, m)) for m in metrics]
                changes, how, against = [fmt_change(c, h) for c, h, _ in found], found[0][2], base
            times = [r["sec_per_epoch"] for r in runs if r.get("sec_per_epoch") is not None]
            time = f"{statistics.mean(times):.2f}" if times else "n/a"
            lines.append(f"| {row} | {protocol_label(source, mode)} | {len(runs)} | " + " | ".join(cells) + f" | {against} | "
                         + " | ".join(changes) + f" | {how} | {time} |")
    return lines


def plot_source(source, rows, out_dir, draw=True):
    """One bar plot per protocol (head / tail; warm / cold for the cold protocol); their paths (``draw=False``: the
    paths only, nothing written)."""
    import matplotlib

    matplotlib.use("Agg")
    from recbole_llm.reporting import grouped_bars

    groups = ([("ndcg_warm@10", "warm items"), ("ndcg_cold@10", "cold items")] if source.get("protocol") == "cold"
              else [("ndcg_head@10", "head items"), ("ndcg_tail@10", "tail items")])
    paths = []
    for mode in modes_of(source):
        bars = []
        for row, runs in rows.items():
            bar = {"model": row}
            for metric, _ in groups:
                values = [v for v in map(value_of(mode, metric), runs) if v is not None]
                bar[f"{metric}_mean"] = statistics.mean(values) if values else None
                bar[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            bars.append(bar)
        if bars:
            path = os.path.join(out_dir, f"{source['id']}-{mode}.png")
            paths.append(grouped_bars(bars, groups, f"{source['title']} ({protocol_label(source, mode)})", path) if draw else path)
    return paths


def link(path, page_dir, root):
    """``path`` (relative to the checkout, maybe with #anchor) as a link relative to the page's folder."""
    target, _, anchor = path.partition("#")
    rel = os.path.relpath(os.path.join(root, target), page_dir).replace(os.sep, "/")
    return rel + (f"#{anchor}" if anchor else "")


def records_links(source, page_dir, root):
    paths = source.get("legacy") or [source.get("runs") or source.get("suite")]
    return ", ".join(f"[{p}]({link(p, page_dir, root)})" for p in paths)


def source_section(source, rows, page_dir, root, plots):
    """The page section of one source: where its records are, what was run, its table and plots."""
    lines = [f"## {source['title']}", "",
             f"Records: {records_links(source, page_dir, root)}; run {source.get('date', 'on a date not recorded')}."
             + (f" Details: [docs/benchmarks.md]({link(source['details'], page_dir, root)})." if source.get("details") else ""), ""]
    if source.get("command"):
        lines += [f"Command: `{source['command']}`", ""]
    if source.get("setting"):
        lines += [f"Setting: {source['setting']}.", ""]
    lines += source_table(source, rows)
    if source.get("left_out"):
        lines += ["", f"Left out of this table: {len(source['left_out'])} record(s) whose inputs no longer match the suite "
                  "(rerun it to replace them): " + "; ".join(f"{r['row']} seed {r['seed']} ({r['stale']})" for r in source["left_out"]) + "."]
    if source.get("note"):
        lines += ["", source["note"]]
    for path in plots:
        lines += ["", f"![{os.path.basename(path)}]({link(os.path.relpath(path, root), page_dir, root)})"]
    return lines + [""]


def glance_cell(column, row, tables):
    """One cell of the glance table: the change against the baseline (its value on the baseline's own row), a value,
    or a ratio (epoch time)."""
    source, rows = tables[column["source"]]
    if row not in rows:
        return "not run"
    runs, value = rows[row], value_of(column.get("mode", "full"), column["metric"])
    base = baseline_of(source, row, runs)
    show = column.get("show", "change")
    if show == "value" or (show == "change" and row == base):
        return fmt_ci([v for v in map(value, runs) if v is not None])
    if base not in rows:
        return "n/a"
    if show == "ratio":
        found = ratio(rows[base], runs, value)
        return "n/a" if found is None else f"{found:.2f}x"
    c, h, _ = change(rows[base], runs, value)
    return fmt_change(c, h)


def glance_table(spec, tables, prefix):
    """The glance table; its column headers link to the sections (``prefix``: the page's path from the reader)."""
    glance = spec.get("glance") or {}
    columns = glance.get("columns") or []
    for column in columns:
        if column.get("source") not in tables:
            raise ConfigError(f"results glance column '{column.get('title')}': source '{column.get('source')}' is not a "
                              f"tabulated source ({', '.join(tables)})")
    heads = [f"[{c['title']}]({prefix}#{slug(tables[c['source']][0]['title'])})" for c in columns]
    lines = ["| model | " + " | ".join(heads) + " |", "|---|" + "---|" * len(columns)]
    for row in glance.get("rows") or []:
        lines.append(f"| {row} | " + " | ".join(glance_cell(c, row, tables) for c in columns) + " |")
    note = ("Against SASRec: the change paired on the seeds both ran, with its 95% interval in brackets. SASRec's own row "
            "and the `cold items` column: NDCG@10, mean ± half-width of the 95% interval over seeds. `epoch time`: per "
            "epoch, against SASRec's, in the same runs. `not run`: no record of that model in that set.")
    return lines + [""] + textwrap.wrap(note, 118, break_on_hyphens=False)


def build_page(spec, tables, archived, page_dir, root, plots):
    lines = ["# Results", "",
             "Generated by `python -m recbole_llm.results` from the stored run records that `benchmarks/results.yaml` "
             "names; do not edit by hand. Each section links its records, their date and the command that made them. "
             "Values: mean ± half-width of the 95% confidence interval of the mean over seeds (Student t; the mean "
             "alone for one seed). Changes: relative to the row named under `vs` (SASRec unless stated), paired per "
             "seed on the seeds both ran, with the 95% interval in brackets; `one run` when they share one seed; `n/a` against a "
             "baseline of 0 (SASRec on cold items). "
             "Head / tail: the target item's training popularity (tail: the least popular 80% of items on scientific, "
             "below 4 users on beauty). Full ranking scores every item, uni100 the target against 100 sampled "
             "negatives. Epoch times are of the machine below, as recorded; compare them within a set only. Plots: mean "
             "over seeds, the standard deviation as error bar.", "",
             f"Machine: {spec.get('machine', 'not recorded')}.", "", "## Results at a glance", ""]
    lines += glance_table(spec, tables, "") + [""]
    for source, rows in tables.values():
        lines += source_section(source, rows, page_dir, root, plots.get(source["id"], []))
    if archived:
        lines += ["## Archived record sets", "", "Superseded by later runs; kept for the record, not tabulated here.", ""]
        lines += [f"- {s['title']} ({s.get('date', '')}): {records_links(s, page_dir, root)}; {s['archived']}"
                  + (f"; [details]({link(s['details'], page_dir, root)})" if s.get("details") else "") for s in archived] + [""]
    more = spec.get("more") or []
    if more:
        lines += ["## Also measured", ""] + [f"- [{m['title']}]({link(m['link'], page_dir, root)})" for m in more] + [""]
    return "\n".join(lines)


def readme_with(path, fragment):
    """(the README's text, the text with ``fragment`` between its glance markers)."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as err:
        raise MissingFileError(f"--readme: '{path}' cannot be read ({err.strerror})") from None
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ConfigError(f"--readme: '{path}' has no '{BEGIN}' ... '{END}' block: add the two lines where the table goes")
    return text, text[:start + len(BEGIN)] + "\n" + fragment.strip("\n") + "\n" + text[end:]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m recbole_llm.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", default=os.path.join("benchmarks", "results.yaml"), help="the record sets (YAML)")
    parser.add_argument("--out", default=os.path.join("docs", "results.md"), help="the page to write")
    parser.add_argument("--root", default=".", help="the folder the sources' paths are relative to (the checkout)")
    parser.add_argument("--readme", default=None, help="also write the glance table into this README's marked block")
    parser.add_argument("--no_plots", action="store_true", help="leave the plots out")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the page (and --readme's block) differ from what the records give")
    return parser.parse_args(argv)


def build_tables(spec, root, plot_dir, draw):
    """({source id: (source, rows)}, [archived sources], {source id: [plot paths]})."""
    tables, archived, plots = {}, [], {}
    for source in spec["sources"]:
        if source.get("archived"):
            archived.append(source)
            continue
        records = source_records(source, root)
        source = dict(source, left_out=[r for r in records if r.get("stale")])
        rows = rows_of(source, records)
        if not rows:
            raise ConfigError(f"results source '{source['id']}': no finished run of {source.get('rows') or 'any row'} in its records")
        tables[source["id"]] = (source, rows)
        if plot_dir:
            plots[source["id"]] = plot_source(source, rows, plot_dir, draw)
    return tables, archived, plots


def current(path, text):
    """Whether ``path`` holds ``text`` already."""
    try:
        with open(path) as handle:
            return handle.read() == text
    except OSError:
        return False


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    spec = load_sources(args.sources)
    root, out = os.path.abspath(args.root), os.path.abspath(args.out)
    plot_dir = None if args.no_plots else os.path.join(os.path.dirname(out), "results")
    tables, archived, plots = build_tables(spec, root, plot_dir, draw=not args.check)
    outputs = {out: build_page(spec, tables, archived, os.path.dirname(out), root, plots)}
    if args.readme:
        prefix = os.path.relpath(out, os.path.dirname(os.path.abspath(args.readme))).replace(os.sep, "/")
        outputs[os.path.abspath(args.readme)] = readme_with(args.readme, "\n".join(glance_table(spec, tables, prefix)))[1]
    if args.check:
        stale = [path for path, text in outputs.items() if not current(path, text)]
        for path in stale:
            print(f"{os.path.relpath(path)} is not what its records give: run python -m recbole_llm.results"
                  + (f" --readme={args.readme}" if args.readme else ""))
        return 1 if stale else 0
    for path, text in outputs.items():
        atomic_write_text(path, text)
        print(f"wrote {os.path.relpath(path)}")
    if plots:
        print(f"wrote {sum(len(p) for p in plots.values())} plots in {os.path.relpath(plot_dir)}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
