"""Side-by-side benchmark of plugin and RecBole models, same split and seeds: the front end of the one engine.

    python -m recbole_llm.benchmark --dataset=scientific --data_path=../shared/datasets \
        --models=SASRec,GRU4Rec,BERT4Rec,FDSA,S3Rec,UniSRec,LLM2XSASRec,LLMEmbSASRec,LLMEmbGRU4Rec,LLMEmbBERT4Rec,LEARN \
        [--epochs=N] [--seeds=42,43,44] [--eval_mode=full|uni100] [--workers=2] [--out=DIR] [--config_files="a.yaml"] \
        [--rerun_failed] [--key=value ...]

builds a suite from its arguments (one dataset, a row per model, the extra ``--key=value`` pairs and ``--epochs`` as
the config of every row, ``--config_files`` as its config files) and runs it with recbole_llm/suite.py, the engine
every benchmark runs on: for every model and seed, build the shared artifacts (LLM feature files, SCFT, the
alignment teacher) here first, then train (early stopping on valid NDCG@10), test, and measure NDCG@10 by
target-item popularity bucket. One record per run, ``DIR/runs/<dataset>/<model>/<seed>.json``, with the hash of
what it ran with: rerunning the command skips finished (and failed: ``--rerun_failed`` retries them) runs whose
keys are the same and runs again those whose keys, eval mode, epochs or config files changed. A failing model is
recorded with its error and the others go on; the command then exits with code 1 and names the failed runs.
``--workers=N`` runs the model/seed jobs in N fresh worker processes (``cores // N`` threads each; logs in
``DIR/logs/``). Writes ``results.md`` (mean ± 95% interval over seeds; warm / cold columns with
``--cold_item_ratio`` > 0, the cold-start protocol of recbole_llm/data/cold.py), ``results.csv`` (mean, std, 95%
interval of every metric, epoch and eval seconds, parameters), ``results.json`` and the plots
``ndcg_head_tail_<dataset>_<mode>.png``, ``ndcg_by_popularity_<dataset>_<mode>.png`` (the papers' long-tail figure)
and, under the cold protocol, ``ndcg_warm_cold_<dataset>_<mode>.png``. A DIR of the former layout
(``runs/<Model>-<seed>.json``) is refused in one line.

    python -m recbole_llm.benchmark --suite=benchmarks/suites/llmemb_vs_sasrec.yaml [--from_json=a.json,...]

runs a suite file instead: several datasets, rows (a model plus its own keys), pairs with paired changes and
their 95% intervals, full and uni100 tests of one checkpoint (recbole_llm/suite.py).
"""

import argparse
import os
import sys
import time

from recbole_llm.errors import cli_entry

MODELS = "SASRec,GRU4Rec,BERT4Rec,FDSA,S3Rec,UniSRec,LLM2XSASRec,LLMEmbSASRec,LLMEmbGRU4Rec,LLMEmbBERT4Rec,LEARN"
SHOWN = ["ndcg@10", "hit@10", "ndcg_head@10", "ndcg_tail@10", "ndcg_short@10", "ndcg_long@10"]  # results.md's columns


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--epochs", type=int, default=None, help="epoch budget for every model (default: each model's YAML)")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--eval_mode", choices=["full", "uni100"], default="full")
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/out/<dataset>)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files every run reads")
    parser.add_argument("--rerun_failed", action="store_true", help="run failed runs again (default: keep their records)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1: one after another, in this process)")
    args, extra = parser.parse_known_args(argv)
    args.extra = extra
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    return args


def parse_seeds(text):
    """``--seeds=42,43,44`` -> [42, 43, 44]; a word, an empty list or a seed given twice (one run counted as two seeds,
    with an interval of zero width) is a ConfigError naming the option."""
    from recbole_llm.errors import ConfigError

    parts = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        seeds = [int(s) for s in parts]
    except ValueError:
        raise ConfigError(f"--seeds must be integers joined by commas (e.g. --seeds=42,43,44), got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds is empty: give at least one seed, e.g. --seeds=42")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds gives {', '.join(map(str, repeated))} more than once: each seed is one run, give each once")
    return seeds


def suite_from_args(args):
    """The suite of a ``--dataset --models`` command (recbole_llm.suite.make_suite), its command line as the header."""
    from recbole_llm.config import parse_overrides
    from recbole_llm.suite import make_suite

    config = parse_overrides(args.extra)
    if args.epochs:
        config["epochs"] = args.epochs
    raw = {"datasets": [args.dataset], "data_path": args.data_path, "seeds": parse_seeds(args.seeds),
           "eval_modes": [args.eval_mode], "config": config, "models": [m for m in args.models.split(",") if m],
           "metrics": SHOWN, "workers": args.workers, "rerun_failed": args.rerun_failed,
           "config_files": args.config_files.split() if args.config_files else [],
           "out": args.out or os.path.join("benchmarks", "out", args.dataset)}
    suite = make_suite(raw, "the --dataset/--models arguments", name=args.dataset)
    command = (f"python -m recbole_llm.benchmark --dataset={args.dataset} --models={args.models} --seeds={args.seeds} "
               f"--eval_mode={args.eval_mode}" + (f" --epochs={args.epochs}" if args.epochs else "")
               + (f" --workers={args.workers}" if args.workers > 1 else "")
               + (f' --config_files="{args.config_files}"' if args.config_files else "")
               + (" " + " ".join(args.extra) if args.extra else ""))
    suite["header"] = f"Benchmark on {args.dataset}: `{command}` ({time.strftime('%Y-%m-%d')}); test metrics of each run's best checkpoint."
    return suite


@cli_entry
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a.startswith("--suite") for a in argv):
        return suite_main(argv)
    from recbole_llm.suite import run_suite

    return run_suite(suite_from_args(parse_args(argv)))


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


if __name__ == "__main__":
    sys.exit(main())
