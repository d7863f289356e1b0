"""Build (or reuse) the LLM feature file of a dataset: the file that ``--model``'s run reads.

    python -m recbole_llm.features --dataset=ml-100k [--model=LEARN] [--config_files="a.yaml b.yaml"] [--key=value ...]
        [--llm_path=minilm] [--pooling=mean] [--prompt=llmemb|learn] [--name=...] [--pca_dim=N] [--max_length=256]
        [--batch_size=64] [--normalize] [--force]
        [--ray [--ray_address=auto|ray://host:10001] [--num_workers=2] [--gpus_per_worker=1]]

The settings come from the model's config (its YAML, the config files, then ``--key=value``), so
``--model=LEARN`` builds LEARN's normalised learn-style prompts (and ``--model=LLMEmbSASRec --scft=True`` the
SCFT-tuned table, PCA and whitening included: exactly the file that run attaches); the short flags set the same keys (``--pooling``
is ``llm_pooling``, ``--ray`` is ``llm_ray: True``, ``--num_workers`` ``llm_ray_workers``, ...). ``--ray`` extracts
through Ray Data (one LLM per actor; docs/distributed.md) into the same file.

Prints where it wrote and how many items/s, or that an up-to-date file was reused: "up to date" means the
cache key matches AND the file opens as a sound one (rows and dims agree with its metadata, float, finite);
a broken file is rebuilt. ``--force`` rebuilds it anyway.
"""

import argparse
import sys

from recbole_llm.errors import ConfigError, cli_entry

# short flag -> config key
FLAG_KEYS = {
    "llm_path": "llm_path",
    "pooling": "llm_pooling",
    "prompt": "prompt_style",
    "pca_dim": "pca_dim",
    "max_length": "llm_max_length",
    "batch_size": "llm_batch_size",
    "feature_dir": "feature_dir",
    "data_path": "data_path",
    "ray_address": "llm_ray_address",
    "num_workers": "llm_ray_workers",
    "gpus_per_worker": "llm_ray_gpus_per_worker",
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="SASRec", help="the model whose features to build (its YAML's llm_* keys)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/ (default: dataset_atomic/)")
    parser.add_argument("--llm_path", default=None, help="local HF model directory, a .gguf file, 'minilm' (default) or 'smollm2'")
    parser.add_argument("--pooling", default=None, choices=["mean", "last", "cls"])
    parser.add_argument("--prompt", default=None, choices=["llmemb", "learn"])
    parser.add_argument("--name", default=None, help="feature name (default: <llm>-<pooling>-<prompt>[-pca<N>]-<key>, the key of its settings)")
    parser.add_argument("--pca_dim", type=int, default=None)
    parser.add_argument("--max_length", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    parser.add_argument("--feature_dir", default=None, help="where to write (default: dataset folder if writable)")
    parser.add_argument("--force", action="store_true", help="rebuild even when an up-to-date file exists")
    parser.add_argument("--ray", action="store_true", help="extract on Ray (llm_ray: True)")
    parser.add_argument("--ray_address", default=None, help="auto | ray://host:10001 (default: a local Ray)")
    parser.add_argument("--num_workers", type=int, default=None, help="Ray actors (llm_ray_workers)")
    parser.add_argument("--gpus_per_worker", type=float, default=None, help="GPUs per Ray actor (llm_ray_gpus_per_worker)")
    args, rest = parser.parse_known_args(argv)
    from recbole_llm.config import parse_overrides

    config_dict = {"state": "WARNING", **parse_overrides(rest)}
    for flag, key in FLAG_KEYS.items():
        if getattr(args, flag) is not None:
            config_dict[key] = getattr(args, flag)
    if args.normalize:
        config_dict["llm_normalize"] = True
    if args.ray:
        config_dict["llm_ray"] = True
    return args, config_dict


@cli_entry
def main(argv=None):
    args, config_dict = parse_args(sys.argv[1:] if argv is None else argv)

    from recbole_llm import Config
    from recbole_llm.llm.extract import ensure_features
    from recbole_llm.model.adapters import prepare_llm_features

    if config_dict.get("llm_ray") is not True and any(k.startswith("llm_ray_") for k in config_dict):
        raise ConfigError("--ray_address/--num_workers/--gpus_per_worker need --ray (llm_ray: True)")
    config_files = args.config_files.split() if args.config_files else None
    config = Config(model=args.model, dataset=args.dataset, config_file_list=config_files, config_dict=config_dict)
    if args.name is None:  # what the model's own run builds: extraction or SCFT, PCA, whitening
        name = prepare_llm_features(config, force=args.force)
    else:
        name = ensure_features(config, name=args.name, force=args.force)
    print(f"feature name: {name}  (use llm_features: [{name}])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
