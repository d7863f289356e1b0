"""Train and evaluate a plugin or RecBole model.

    python run_recbole_llm.py --model=SASRec --dataset=ml-100k [--config_files="a.yaml b.yaml"] [--key=value ...]

Any other ``--key=value`` is a RecBole/plugin config key (read by Config from the command line).
"""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default="SASRec", help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    args, _ = parser.parse_known_args(argv)

    from recbole_llm import UnknownNameError, run_recbole_llm

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    try:
        result = run_recbole_llm(model=args.model, dataset=args.dataset, config_file_list=config_file_list)
    except UnknownNameError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"best valid: {dict(result['best_valid_result'] or {})}")
    print(f"test result: {dict(result['test_result'] or {})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
