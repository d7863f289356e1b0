"""Build (or reuse) the LLM feature file of a dataset.

    python -m recbole_llm.features --dataset=ml-100k [--data_path=...] [--llm_path=minilm] [--pooling=mean]
        [--prompt=llmemb|learn] [--name=...] [--pca_dim=N] [--max_length=256] [--batch_size=64] [--normalize] [--force]

Prints where it wrote and how many items/s, or that an up-to-date file was reused: "up to date" means the
cache key matches AND the file opens as a sound one (rows and dims agree with its metadata, float, finite);
a broken file is rebuilt. ``--force`` rebuilds it anyway.
"""

import argparse
import sys

from recbole_llm.errors import cli_entry


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/ (default: dataset_atomic/)")
    parser.add_argument("--llm_path", default=None, help="local HF model directory, or 'minilm' (default)")
    parser.add_argument("--pooling", default=None, choices=["mean", "last", "cls"])
    parser.add_argument("--prompt", default=None, choices=["llmemb", "learn"])
    parser.add_argument("--name", default=None, help="feature name (default: <llm>-<pooling>-<prompt>[-pca<N>])")
    parser.add_argument("--pca_dim", type=int, default=None)
    parser.add_argument("--max_length", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    parser.add_argument("--feature_dir", default=None, help="where to write (default: dataset folder if writable)")
    parser.add_argument("--force", action="store_true", help="rebuild even when an up-to-date file exists")
    args = parser.parse_args(argv)

    from recbole_llm import Config, UnknownNameError
    from recbole_llm.llm.extract import LLMPathError, ensure_features

    config_dict = {"state": "WARNING"}
    for key, value in (
        ("data_path", args.data_path),
        ("llm_path", args.llm_path),
        ("llm_pooling", args.pooling),
        ("prompt_style", args.prompt),
        ("llm_max_length", args.max_length),
        ("llm_batch_size", args.batch_size),
        ("feature_dir", args.feature_dir),
    ):
        if value is not None:
            config_dict[key] = value
    try:
        config = Config(model="SASRec", dataset=args.dataset, config_dict=config_dict)
        name = ensure_features(config, name=args.name, pca_dim=args.pca_dim, normalize=args.normalize or None, force=args.force)
    except (UnknownNameError, LLMPathError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"feature name: {name}  (use llm_features: [{name}])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
