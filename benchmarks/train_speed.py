"""Seconds per training epoch and valid NDCG@10 of SASRec variants, in one run.

    python benchmarks/train_speed.py --data_path=../shared/datasets --dataset=scientific --epochs=3

Variants (same split, seed, model size: hidden 64, 2 layers, MAX_ITEM_LIST_LENGTH 50, CE, batch 2048):
  stock            RecBole 1.2.1's SASRec and Trainer, with the anomaly detection its sine.py switches on
  anomaly_off      the same model and trainer, anomaly detection off
  off+bucketing    the plugin's SASRec (length-bucketed encoding), anomaly detection off
  all_positions    the plugin's SASRec with train_mode all_positions (one row per user, loss at every position)
Each variant trains a fixed number of epochs (no early stopping) and evaluates on the valid split after each.
Writes a Markdown table to stdout and, with --out, to a file.
"""

import argparse
import os
import platform
import tempfile
import time

from recbole_llm.compat import set_anomaly_detection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base_config(args, checkpoint_dir):
    return {
        "data_path": os.path.abspath(args.data_path),
        "checkpoint_dir": checkpoint_dir,
        "epochs": args.epochs,
        "stopping_step": 1000,
        "train_batch_size": 2048,
        "eval_batch_size": 4096,
        "hidden_size": 64,
        "inner_size": 256,
        "n_layers": 2,
        "n_heads": 2,
        "MAX_ITEM_LIST_LENGTH": 50,
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "seed": args.seed,
        "show_progress": False,
        "state": "WARNING",
        "metrics": ["NDCG", "Hit"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    }


def run_variant(name, args, workdir):
    from recbole.utils import init_seed

    config_dict = base_config(args, os.path.join(workdir, name))
    if name in ("stock", "anomaly_off"):
        from recbole.config import Config
        from recbole.data import create_dataset, data_preparation
        from recbole.model.sequential_recommender.sasrec import SASRec
        from recbole.trainer import Trainer

        config = Config(model="SASRec", dataset=args.dataset, config_dict=config_dict)
        model_class, trainer_class = SASRec, Trainer
    else:
        from recbole_llm import Config, create_dataset, get_model
        from recbole_llm.utils import data_preparation, get_trainer

        config_dict["length_bucketing"] = True
        config_dict["train_mode"] = "all_positions" if name == "all_positions" else "prefix"
        config = Config(model="SASRec", dataset=args.dataset, config_dict=config_dict)
        model_class, trainer_class = get_model("SASRec"), get_trainer(config["MODEL_TYPE"], "SASRec")
    set_anomaly_detection(name == "stock")  # "stock": as RecBole's sine.py leaves it
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train_data.dataset)
    trainer = trainer_class(config, model)
    trainer.eval_collector.data_collect(train_data)
    epoch_seconds, ndcgs = [], []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        trainer._train_epoch(train_data, epoch)
        epoch_seconds.append(time.perf_counter() - start)
        result = trainer.evaluate(valid_data, load_best_model=False)
        ndcgs.append(result["ndcg@10"])
    set_anomaly_detection(False)
    return {
        "variant": name,
        "train_rows": len(train_data.dataset),
        "sec_per_epoch": sum(epoch_seconds) / len(epoch_seconds),
        "valid_ndcg_last": ndcgs[-1],
        "valid_ndcg_best": max(ndcgs),
        "ndcg_per_epoch": ndcgs,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=os.path.join(ROOT, "..", "shared", "datasets"))
    parser.add_argument("--dataset", default="scientific")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--variants", default="stock,anomaly_off,off+bucketing,all_positions")
    parser.add_argument("--out", default=None, help="also write the Markdown table here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.variants.split(","):
            row = run_variant(name, args, workdir)
            rows.append(row)
            print(f"{name}: {row['sec_per_epoch']:.1f} s/epoch, valid NDCG@10 per epoch {row['ndcg_per_epoch']}", flush=True)
    stock = next((r for r in rows if r["variant"] == "stock"), rows[0])
    lines = [
        f"Command: `python benchmarks/train_speed.py --dataset={args.dataset} --epochs={args.epochs}` "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU, {time.strftime('%Y-%m-%d')})",
        "",
        "| variant | train rows | s / epoch | speed-up vs stock | valid NDCG@10 (last epoch) | best epoch |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['train_rows']} | {r['sec_per_epoch']:.1f} | {stock['sec_per_epoch'] / r['sec_per_epoch']:.1f}x "
            f"| {r['valid_ndcg_last']:.4f} | {r['valid_ndcg_best']:.4f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        from recbole_llm.fileio import atomic_write_text

        atomic_write_text(args.out, table + "\n")


if __name__ == "__main__":
    main()
