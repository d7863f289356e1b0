"""Hyperparameter search with Ray Tune for any plugin or RecBole model.

    python run_hyper.py --model=LLMEmbSASRec --dataset=ml-100k --params_file=hyper/llmemb_sasrec.hyper \
        [--num_samples=4] [--scheduler=asha|fifo] [--search=random|grid|hyperopt] [--max_concurrent=K] \
        [--cpus_per_trial=1 --gpus_per_trial=0] [--address=auto|ray://host:port] [--output=DIR] \
        [--config_files="a.yaml b.yaml"] [--<config key>=<value> ...]

Extra ``--key=value`` flags are fixed config values for every trial (e.g. ``--epochs=20``). The params file's keys
and the fixed config are checked before Ray starts (exit code 2); the exit code is 1 when every trial failed.
"""

import argparse
import sys

from recbole_llm.errors import cli_entry


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--params_file", required=True)
    parser.add_argument("--config_files", default=None)
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    parser.add_argument("--search", choices=["random", "grid", "hyperopt"], default="random")
    parser.add_argument("--max_concurrent", type=int, default=0)
    parser.add_argument("--cpus_per_trial", type=float, default=1)
    parser.add_argument("--gpus_per_trial", type=float, default=0)
    parser.add_argument("--num_cpus", type=int, default=0, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--grace_period", type=int, default=2, help="ASHA: epochs before a trial can be stopped")
    parser.add_argument("--address", default=None, help="existing Ray cluster: auto or ray://host:port")
    parser.add_argument("--output", default=None)
    args, extra = parser.parse_known_args(argv)
    args.extra = extra
    return args


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    from recbole_llm import UnknownNameError
    from recbole_llm.tune import HyperFileError, run_search

    try:
        rows, _ = run_search(args)
    except (UnknownNameError, HyperFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [r for r in rows if r["status"] == "ERROR"]
    if rows and len(failed) == len(rows):  # nothing was tuned: say so in the exit code, not only in the table
        print(f"error: all {len(rows)} trials failed (first: {failed[0]['error'] or 'see its Ray log'}); see trials.csv", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
