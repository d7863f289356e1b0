"""Seconds per training epoch of RecBole's GRU4Rec / BERT4Rec / FDSA / S3Rec against the plugin's versions.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/baseline_speed.py --data_path=../shared/datasets \\
        --dataset=scientific --models=GRU4Rec,BERT4Rec,FDSA --variants=recbole,bucketing,all_positions \\
        --epochs=1 --out=/tmp/baseline_speed.jsonl
    python benchmarks/baseline_speed.py --report=/tmp/baseline_speed.jsonl   # the Markdown table

Variants (same split, seed and model defaults: RecBole's model YAML + the dataset YAML, CE, batch 2048,
MAX_ITEM_LIST_LENGTH 50; all through the plugin's Config, trainer and data preparation, anomaly detection off):
  recbole        RecBole 1.2.1's class (``Config(model=<RecBole class>)``)
  bucketing      the plugin's class, ``length_bucketing: True``, ``train_mode: prefix`` (its defaults)
  all_positions  the plugin's class, ``train_mode: all_positions`` (GRU4Rec, BERT4Rec; one row per user)
  user_rows      S3Rec only: the plugin's class with its defaults (``pretrain_rows: user``, its
                 ``pretrain_batch_size``); ``bucketing`` is the plugin's S3Rec pre-training on RecBole's prefix
                 rows in batches of ``train_batch_size``
S3Rec runs time one pre-training epoch (``--pretrain_batches=K``: its first K batches, scaled) on the loader
the plugin's S3RecTrainer pre-trains on, then build the fine-tune model from those weights (RecBole's
``train_stage: finetune`` + ``pre_model_path``) and time its ``--epochs`` fine-tuning epochs as for the other models.
Each run trains ``--epochs`` epochs (no early stopping) and evaluates on the valid split after each; a run
appends one JSON line to ``--out`` so that variants can run as separate processes. ``--batches=K`` trains only
the first K batches of each epoch and scales their time to the epoch's batch count (for runs too slow to finish
a whole epoch; batches have the same size and are shuffled, so this estimates the epoch time).
"""

import argparse
import itertools
import json
import os
import platform
import tempfile
import time

from recbole_llm.compat import set_anomaly_detection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = ("recbole", "bucketing", "all_positions", "user_rows")
NO_ALL_POSITIONS = ("FDSA", "S3Rec")
ONLY_S3REC = ("user_rows",)


def base_config(args, checkpoint_dir):
    """train_speed.py's run settings without its SASRec shape, negatives and columns (each baseline keeps its own)."""
    from train_speed import base_config as sasrec_config  # benchmarks/ is the script's folder, so on sys.path

    own = ("hidden_size", "inner_size", "n_layers", "n_heads", "train_neg_sample_args", "load_col")
    return {k: v for k, v in sasrec_config(args, checkpoint_dir).items() if k not in own}


class FirstBatches:
    """The first ``n`` batches of a dataloader; every other attribute is the dataloader's."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self):
        return min(self.n, len(self.loader))

    def __getattr__(self, name):
        return getattr(self.loader, name)


def recbole_class(model):
    from recbole.utils import get_model as recbole_get_model

    return recbole_get_model(model)


def run_variant(model_name, variant, args, workdir):
    import torch
    from recbole.utils import init_seed

    from recbole_llm import Config, create_dataset, get_model
    from recbole_llm.utils import data_preparation, get_trainer

    config_dict = base_config(args, os.path.join(workdir, f"{model_name}-{variant}"))
    if variant == "recbole":
        model_class = recbole_class(model_name)
    else:
        model_class = get_model(model_name)
        config_dict["length_bucketing"] = True
        if model_name == "S3Rec":
            if variant == "bucketing":  # RecBole's pre-training rows and batches, the plugin's model
                config_dict.update(pretrain_rows="prefix", pretrain_batch_size=None)
        else:
            config_dict["train_mode"] = variant if variant == "all_positions" else "prefix"
    config = Config(model=model_class, dataset=args.dataset, config_dict=config_dict)
    set_anomaly_detection(False)  # importing RecBole's models turns it on
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train_data.dataset)
    trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    pretrain = {}
    if model_name == "S3Rec":
        pretrain, weights = time_pretraining(trainer, train_data, args, config["checkpoint_dir"])
        config["train_stage"], config["pre_model_path"] = "finetune", weights
        init_seed(config["seed"], config["reproducibility"])
        model = model_class(config, train_data.dataset)
        trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    trainer.eval_collector.data_collect(train_data)
    n_batches = len(train_data)
    timed = FirstBatches(train_data, args.batches) if args.batches else train_data
    scale = n_batches / len(timed)
    epoch_seconds, eval_seconds, ndcgs = [], [], []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        trainer._train_epoch(timed, epoch)
        epoch_seconds.append((time.perf_counter() - start) * scale)
        start = time.perf_counter()
        result = trainer.evaluate(valid_data, load_best_model=False)
        eval_seconds.append(time.perf_counter() - start)
        ndcgs.append(float(result["ndcg@10"]))
    return {
        "model": model_name,
        "variant": variant,
        "class": f"{model_class.__module__}.{model_class.__name__}",
        "train_rows": len(train_data.dataset),
        "epochs": args.epochs,
        "batches_timed": len(timed),
        "batches_per_epoch": n_batches,
        "sec_per_epoch": sum(epoch_seconds) / len(epoch_seconds),
        "valid_eval_sec": sum(eval_seconds) / len(eval_seconds),
        "valid_ndcg_per_epoch": ndcgs,
        **pretrain,
        "threads": torch.get_num_threads(),
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }


def time_pretraining(trainer, train_data, args, checkpoint_dir):
    """S3Rec: seconds of one pre-training epoch (first ``--pretrain_batches`` batches, scaled); weights file."""
    import torch

    loader = trainer.pretrain_data(train_data) if hasattr(trainer, "pretrain_data") else train_data
    timed = FirstBatches(loader, args.pretrain_batches) if args.pretrain_batches else loader
    start = time.perf_counter()
    loss = trainer._train_epoch(timed, 0)
    seconds = (time.perf_counter() - start) * len(loader) / len(timed)
    os.makedirs(checkpoint_dir, exist_ok=True)
    weights = os.path.join(checkpoint_dir, "pretrained-weights.pth")
    torch.save({"state_dict": trainer.model.state_dict()}, weights)
    return {
        "pretrain_rows": getattr(trainer.model, "pretrain_rows", "prefix"),
        "pretrain_train_rows": len(loader.dataset),
        "pretrain_batch_size": loader._batch_size,
        "pretrain_batches_timed": len(timed),
        "pretrain_batches_per_epoch": len(loader),
        "pretrain_sec_per_epoch": seconds,
        "pretrain_loss": float(loss),
    }, weights


def s3rec_report(rows):
    lines = [
        "| variant | pre-train rows | batch | batches timed | pre-train s / epoch | speed-up | fine-tune batches timed "
        "| fine-tune s / epoch | speed-up | valid eval s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((r for r in rows if r["variant"] == "recbole"), None)
    for r in sorted(rows, key=lambda r: VARIANTS.index(r["variant"])):
        pre_speed = f"{base['pretrain_sec_per_epoch'] / r['pretrain_sec_per_epoch']:.1f}x" if base else "-"
        speed = f"{base['sec_per_epoch'] / r['sec_per_epoch']:.1f}x" if base else "-"
        lines.append(
            f"| {r['variant']} | {r['pretrain_train_rows']} ({r['pretrain_rows']}) | {r['pretrain_batch_size']} "
            f"| {r['pretrain_batches_timed']} / {r['pretrain_batches_per_epoch']} | {r['pretrain_sec_per_epoch']:.1f} "
            f"| {pre_speed} | {r['batches_timed']} / {r['batches_per_epoch']} | {r['sec_per_epoch']:.1f} | {speed} "
            f"| {r['valid_eval_sec']:.1f} |"
        )
    return "\n".join(lines)


def report(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    s3rec = [r for r in rows if "pretrain_sec_per_epoch" in r]
    rows = [r for r in rows if "pretrain_sec_per_epoch" not in r]
    lines = [
        "| model | variant | train rows | batches timed | s / epoch | speed-up vs RecBole | valid eval s | valid NDCG@10 per epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        ours = [r for r in rows if r["model"] == model]
        base = next((r for r in ours if r["variant"] == "recbole"), None)
        for r in sorted(ours, key=lambda r: VARIANTS.index(r["variant"])):
            speed = f"{base['sec_per_epoch'] / r['sec_per_epoch']:.1f}x" if base else "-"
            timed = f"{r.get('batches_timed', '?')} / {r.get('batches_per_epoch', '?')}"
            whole_epoch = r.get("batches_timed") == r.get("batches_per_epoch")
            ndcg = " / ".join(f"{v:.4f}" for v in r["valid_ndcg_per_epoch"]) if whole_epoch else "(partial epoch)"
            lines.append(
                f"| {model} | {r['variant']} | {r['train_rows']} | {timed} | {r['sec_per_epoch']:.1f} | {speed} "
                f"| {r['valid_eval_sec']:.1f} | {ndcg} |"
            )
    if not rows:
        lines = []
    if s3rec:
        lines += ["", "S3Rec (one pre-training epoch, then fine-tuning epochs):", ""] if lines else []
        lines.append(s3rec_report(s3rec))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=os.path.join(ROOT, "..", "shared", "datasets"))
    parser.add_argument("--dataset", default="scientific")
    parser.add_argument("--models", default="GRU4Rec,BERT4Rec,FDSA")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--batches", type=int, default=0, help="time only the first K batches of each epoch, scaled")
    parser.add_argument("--pretrain_batches", type=int, default=0, help="S3Rec: time only the first K pre-training batches, scaled")
    parser.add_argument("--out", default=None, help="append one JSON line per run here")
    parser.add_argument("--report", default=None, help="print the Markdown table of a --out file and exit")
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        return
    with tempfile.TemporaryDirectory() as workdir:
        for model in args.models.split(","):
            for variant in args.variants.split(","):
                if variant not in VARIANTS:
                    raise SystemExit(f"unknown variant '{variant}': {', '.join(VARIANTS)}")
                if variant == "all_positions" and model in NO_ALL_POSITIONS:
                    continue
                if variant in ONLY_S3REC and model != "S3Rec":
                    continue
                row = run_variant(model, variant, args, workdir)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
