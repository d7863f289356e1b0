"""SCFT: LoRA contrastive fine-tuning of the LLM on item attributes, then export of the tuned features.

    python -m recbole_llm.scft --dataset=D [--model=LLMEmbSASRec] [--config_files="a.yaml"] [--key=value ...]
        [--data_path=...] [--llm_path=minilm] [--steps=300] [--batch_size=32]
        [--lr=2e-4] [--lora_r=8 --lora_alpha=32 --lora_dropout=0.1] [--drop_ratio=0.4] [--loss=soft|infonce]
        [--grad_accum=1] [--grad_checkpointing] [--target_modules=query,value] [--checkpoint_every=100]
        [--resume] [--pca_dim=N] [--output_dir=...]

The settings are the model's config (its YAML, the config files, ``--key=value`` such as ``--scft_steps=300``); the
short flags set the same keys (``--steps`` is ``scft_steps``, ...), so the file is the one ``--model``'s run with
``scft: True`` attaches. SCFT runs in one process (no DDP, no Ray: docs/distributed.md).
Prints the view-retrieval check before and after, and the feature name to use as ``llm_feature``.
"""

import argparse
import sys

from recbole_llm.errors import cli_entry


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="SASRec", help="the model whose SCFT settings to use (its YAML)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--llm_path", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--lora_r", type=int, default=None)
    parser.add_argument("--lora_alpha", type=int, default=None)
    parser.add_argument("--lora_dropout", type=float, default=None)
    parser.add_argument("--drop_ratio", type=float, default=None)
    parser.add_argument("--loss", choices=["soft", "infonce"], default=None)
    parser.add_argument("--grad_accum", type=int, default=None)
    parser.add_argument("--grad_checkpointing", action="store_true")
    parser.add_argument("--target_modules", default=None, help="comma-separated; default: automatic")
    parser.add_argument("--checkpoint_every", type=int, default=None)
    parser.add_argument("--eval_items", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint of the same settings")
    parser.add_argument("--pca_dim", type=int, default=None)
    parser.add_argument("--output_dir", default=None, help="feature folder (default: dataset folder if writable)")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)

    from recbole_llm import Config, UnknownNameError
    from recbole_llm.config import parse_overrides
    from recbole_llm.llm.embed import LLMPathError
    from recbole_llm.llm.scft import NonFiniteLossError, ensure_scft_features

    mapping = {
        "data_path": args.data_path, "llm_path": args.llm_path, "scft_steps": args.steps, "scft_batch_size": args.batch_size,
        "scft_lr": args.lr, "scft_lora_r": args.lora_r, "scft_lora_alpha": args.lora_alpha, "scft_lora_dropout": args.lora_dropout,
        "scft_drop_ratio": args.drop_ratio, "scft_loss": args.loss, "scft_grad_accum": args.grad_accum,
        "scft_grad_checkpointing": args.grad_checkpointing or None, "scft_checkpoint_every": args.checkpoint_every,
        "scft_eval_items": args.eval_items, "pca_dim": args.pca_dim, "feature_dir": args.output_dir,
        "scft_target_modules": args.target_modules.split(",") if args.target_modules else None,
    }
    config_dict = {"state": "WARNING", **parse_overrides(rest), **{k: v for k, v in mapping.items() if v is not None}}
    config_files = args.config_files.split() if args.config_files else None
    try:
        config = Config(model=args.model, dataset=args.dataset, config_file_list=config_files, config_dict=config_dict)
        name = ensure_scft_features(config, resume=args.resume)
    except (UnknownNameError, LLMPathError, FileNotFoundError, ValueError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"feature name: {name}  (use llm_feature: {name}, or scft: True with the same settings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
