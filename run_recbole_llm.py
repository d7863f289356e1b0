"""Train and evaluate a plugin or RecBole model.

    python run_recbole_llm.py --model=SASRec --dataset=ml-100k [--config_files="a.yaml b.yaml"] [--key=value ...]

Any other ``--key=value`` is a RecBole/plugin config key of this run (not of the runs it starts, such as the
LLMEmb teacher); anything else on the command line is an error (exit code 2). A user error (unknown key, bad
value, missing file) is one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

import argparse
import sys

from recbole_llm.errors import ConfigError, cli_entry


def plain(result):
    """Plain numbers (under numpy 2 metric values would print as np.float64(...)); counts stay integers."""
    return {k: int(v) if isinstance(v, int) else float(v) for k, v in (result or {}).items()}


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default="SASRec", help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    malformed = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if malformed:
        raise ConfigError(f"argument '{malformed[0]}' is not --key=value: write config keys as --key=value (e.g. --epochs=1)")

    from recbole_llm import run_recbole_llm
    from recbole_llm.config import parse_overrides

    # the keys go in as this run's config dict only: the plugin's Config never reads sys.argv, so nested runs (the
    # LLMEmb teacher, a tune trial) do not inherit them (with RecBole's, the teacher got --epochs=1)
    overrides = parse_overrides(rest)
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    result = run_recbole_llm(model=args.model, dataset=args.dataset, config_file_list=config_file_list, config_dict=overrides)
    if result is None:  # DDP on several machines: global rank 0 (the machine with offset 0) reports
        print("trained; the results are printed by the machine with offset 0")
        return 0
    print(f"best valid: {plain(result['best_valid_result'])}")
    print(f"test result: {plain(result['test_result'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
