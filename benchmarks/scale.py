"""Cost against catalogue size: seconds per 1,000 training steps, peak memory and full-sort evaluation time of
SASRec and LLMEmbSASRec with full CE and with sampled softmax, on synthetic catalogues of 10k to 1M items.

    python benchmarks/scale.py --sizes=10000,100000,1000000 --models=SASRec,LLMEmbSASRec --losses=CE,SSM \
        --dims=384 --out=docs/benchmarks/scale

Synthetic data (no text extraction): ``--users`` users with sequences of 5 + Geometric(mean ``--mean_len`` - 5)
items (capped at 50), items drawn from a Zipf(``--zipf``) popularity over the whole catalogue; a ``.item`` file
lists every item, so every one is a candidate in training and evaluation; a random N(0, 1) feature table of
``--dims`` dims (stored as ``--feature_dtype``). Cached under dataset_atomic/scale-<items>/.

Every configuration runs in its own process (its own peak memory) through the library's pipeline (Config,
create_dataset, data_preparation, get_model, get_trainer): ``--warmup`` steps, then ``--steps`` timed steps of
the model's own calculate_loss + Adam; then full-sort evaluation of the test split in item chunks
(``eval_item_chunk``). Settings: train_mode prefix (one target per row: full CE at 1M items and 50 positions per
row would need 25 GB of logits), batch 256, MAX_ITEM_LIST_LENGTH 50, hidden 64, 2 layers; SSM with
``--ssm_negatives`` shared negatives + in-batch targets (the setting that kept NDCG@10 on scientific);
LLMEmbSASRec without the alignment loss (align_alpha 0: no teacher to train on random data). One JSON per
configuration in ``<out>/runs/`` (a rerun skips finished ones); ``<out>/results.md`` and ``scale.png`` (log-log).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- synthetic data -------------------------------------------------------------------------------------------
def write_dataset(n_items, args):
    """dataset_atomic/scale-<n>/ with .inter, .item and a random feature table; reused when present."""
    import numpy as np

    from recbole_llm.fileio import atomic_write_text
    from recbole_llm.llm.features import feature_base, save_features_blockwise

    name = f"scale-{n_items}"
    folder = os.path.join(ROOT, "dataset_atomic", name)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    inter = os.path.join(folder, f"{name}.inter")
    if not os.path.isfile(inter):
        ranks = np.arange(1, n_items + 1, dtype=np.float64)
        popularity = ranks ** -args.zipf
        popularity /= popularity.sum()
        item_of_rank = rng.permutation(n_items)
        lengths = np.minimum(5 + rng.geometric(1.0 / max(args.mean_len - 5, 1.0), size=args.users) - 1, 50)
        lines = ["user_id:token\titem_id:token\ttimestamp:float"]
        for user, length in enumerate(lengths):
            items = item_of_rank[rng.choice(n_items, size=length, p=popularity)]
            lines += [f"u{user}\ti{item}\t{t}" for t, item in enumerate(items)]
        atomic_write_text(os.path.join(folder, f"{name}.item"), "item_id:token\n" + "\n".join(f"i{i}" for i in range(n_items)) + "\n")
        atomic_write_text(inter, "\n".join(lines) + "\n")
    feature = f"rand{args.dim}-{args.feature_dtype}"
    base = feature_base(folder, name, feature)
    if not os.path.isfile(base + ".json"):
        tokens = [f"i{i}" for i in range(n_items)]
        blocks = (rng.standard_normal((min(65536, n_items - start), args.dim), dtype=np.float32) for start in range(0, n_items, 65536))
        save_features_blockwise(base, tokens, args.dim, blocks, {"synthetic": True}, dtype=args.feature_dtype)
    return name, feature


# ---- one configuration ------------------------------------------------------------------------------------------
class PeakRSS:
    """Largest resident set size seen while active (sampled every 50 ms from /proc/self/status)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    @staticmethod
    def now():
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self.peak = self.now()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.now())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def config_dict(args, feature):
    keys = {
        "data_path": os.path.join(ROOT, "dataset_atomic"), "checkpoint_dir": os.path.join(ROOT, "saved", "scale"),
        "train_mode": "prefix", "train_batch_size": 256, "eval_batch_size": 256, "MAX_ITEM_LIST_LENGTH": 50,
        "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2, "loss_type": args.loss, "seed": args.seed,
        "eval_item_chunk": 65536, "show_progress": False, "state": "WARNING", "metrics": ["Hit", "NDCG"], "topk": [10],
        "valid_metric": "NDCG@10", "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "feature_dtype": args.feature_dtype, "feature_mmap": args.feature_mmap,
    }
    if args.loss == "SSM":
        keys.update(ssm_negatives=args.ssm_negatives, ssm_in_batch=True)
    if args.model.startswith("LLMEmb"):
        keys.update(llm_feature=feature, llm_features=[feature], align_alpha=0.0)
    return keys


def run_one(args):
    import torch

    from recbole_llm import Config, create_dataset, get_model
    from recbole_llm.compat import set_anomaly_detection
    from recbole_llm.utils import data_preparation, get_trainer

    dataset_name, feature = write_dataset(args.items, args)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    config = Config(model=args.model, dataset=dataset_name, config_dict=config_dict(args, feature))
    set_anomaly_detection(False)
    dataset = create_dataset(config)
    train_data, _, test_data = data_preparation(config, dataset)
    model = get_model(args.model)(config, train_data._dataset)
    build_seconds = time.perf_counter() - start
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    step_seconds, batches = [], iter(train_data)
    with PeakRSS() as train_peak:
        for step in range(args.warmup + args.steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(train_data)
                batch = next(batches)
            begin = time.perf_counter()
            optimizer.zero_grad()
            model.calculate_loss(batch).backward()
            optimizer.step()
            if step >= args.warmup:
                step_seconds.append(time.perf_counter() - begin)
    trainer = get_trainer(config["MODEL_TYPE"], args.model)(config, model)
    trainer.eval_collector.data_collect(train_data)
    with PeakRSS() as eval_peak:
        begin = time.perf_counter()
        result = trainer.evaluate(test_data, load_best_model=False)
        eval_seconds = time.perf_counter() - begin
    return {
        "items": args.items, "model": args.model, "loss": args.loss, "dim": args.dim if args.model.startswith("LLMEmb") else None,
        "feature_dtype": args.feature_dtype, "feature_mmap": args.feature_mmap, "steps": args.steps, "sec_per_1000_steps": 1000 * sum(step_seconds) / len(step_seconds),
        "train_peak_gib": train_peak.peak / 2**30, "eval_peak_gib": eval_peak.peak / 2**30, "eval_seconds": eval_seconds,
        "eval_users": len(test_data.dataset), "build_seconds": build_seconds, "ndcg@10": float(result["ndcg@10"]),
        "train_rows": len(train_data.dataset), "batch": 256, "ssm_negatives": args.ssm_negatives if args.loss == "SSM" else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "date": time.strftime("%Y-%m-%d"),
    }


# ---- the driver: one process per configuration, resumable, then the table and the plot -----------------------------
def run_name(items, model, loss, dim, dtype, mmap=False):
    return f"{model}-{loss}-{items}" + (f"-d{dim}-{dtype}" + ("-mmap" if mmap else "") if model.startswith("LLMEmb") else "")


def table(rows):
    lines = ["| items | model | features | loss | s / 1,000 steps | vs smallest | train peak GiB | eval s | eval peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["dim"] or 0, r["loss"], r["items"])):
        base = next((b for b in rows if b["model"] == r["model"] and b["loss"] == r["loss"] and b["dim"] == r["dim"]
                     and b["feature_dtype"] == r["feature_dtype"] and b["items"] == min(x["items"] for x in rows)
                     and bool(b.get("feature_mmap")) == bool(r.get("feature_mmap"))), None)
        ratio = f"{r['sec_per_1000_steps'] / base['sec_per_1000_steps']:.2f}x" if base else ""
        features = f"{r['dim']} {r['feature_dtype']}" + (" mmap" if r.get("feature_mmap") else "") if r["dim"] else "-"
        lines.append(f"| {r['items']:,} | {r['model']} | {features} | {r['loss']} | {r['sec_per_1000_steps']:.0f} | {ratio} "
                     f"| {r['train_peak_gib']:.2f} | {r['eval_seconds']:.1f} | {r['eval_peak_gib']:.2f} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recbole_llm.fileio import atomic_open

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    def series_of(r):
        return r["model"], r["loss"], r["dim"], r["feature_dtype"], bool(r.get("feature_mmap"))

    for model, loss, dim, dtype, mmap in sorted({series_of(r) for r in rows}, key=str):
        points = sorted((r for r in rows if series_of(r) == (model, loss, dim, dtype, mmap)), key=lambda r: r["items"])
        label = f"{model} {loss}" + (f" ({dim}d {dtype}{' mmap' if mmap else ''})" if dim else "")
        axes[0].plot([p["items"] for p in points], [p["sec_per_1000_steps"] for p in points], marker="o", label=label)
        axes[1].plot([p["items"] for p in points], [p["train_peak_gib"] for p in points], marker="o", label=label)
    for axis, title in zip(axes, ("seconds per 1,000 training steps", "peak memory in training (GiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("catalogue size (items)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)


def drive(args):
    from recbole_llm.fileio import atomic_write_text

    runs = os.path.join(args.out, "runs")
    os.makedirs(runs, exist_ok=True)
    failed = []
    for items in [int(s) for s in args.sizes.split(",")]:
        for model in args.models.split(","):
            for loss in args.losses.split(","):
                for dim in ([int(d) for d in args.dims.split(",")] if model.startswith("LLMEmb") else [None]):
                    name = run_name(items, model, loss, dim, args.feature_dtype, args.feature_mmap)
                    path = os.path.join(runs, name + ".json")
                    if os.path.isfile(path):
                        continue
                    print(f"running {name}", flush=True)
                    command = [sys.executable, os.path.abspath(__file__), "--one", f"--items={items}", f"--model={model}",
                               f"--loss={loss}", f"--dim={dim or 384}", f"--feature_dtype={args.feature_dtype}",
                               f"--steps={args.steps}", f"--warmup={args.warmup}", f"--users={args.users}",
                               f"--ssm_negatives={args.ssm_negatives}", f"--seed={args.seed}", f"--zipf={args.zipf}",
                               f"--mean_len={args.mean_len}", f"--json={path}"] + (["--feature_mmap"] if args.feature_mmap else [])
                    code = subprocess.call(command, timeout=args.timeout)
                    if code != 0:
                        failed.append(name)
    rows = [json.load(open(os.path.join(runs, f))) for f in sorted(os.listdir(runs)) if f.endswith(".json")]
    if rows:
        header = (f"Command: `python benchmarks/scale.py --sizes={args.sizes} --models={args.models} --losses={args.losses} "
                  f"--dims={args.dims} --feature_dtype={args.feature_dtype} --steps={args.steps}` ({rows[0]['machine']}, "
                  f"{rows[0]['date']})\n\n")
        atomic_write_text(os.path.join(args.out, "results.md"), header + table(rows) + "\n")
        plot(rows, os.path.join(args.out, "scale.png"))
        print(header + table(rows))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--models", default="SASRec,LLMEmbSASRec")
    parser.add_argument("--losses", default="CE,SSM")
    parser.add_argument("--dims", default="384", help="feature widths of LLMEmbSASRec (e.g. 384,4096)")
    parser.add_argument("--feature_dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--feature_mmap", action="store_true", help="LLMEmbSASRec maps its table from disk (feature_mmap: True)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--mean_len", type=float, default=10.0)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--ssm_negatives", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per configuration")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "scale"))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--loss", help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, default=384, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.one:
        return drive(args)
    from recbole_llm.fileio import atomic_write_text

    atomic_write_text(args.json, json.dumps(run_one(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
