"""Untrained LEARN towers on scientific, ours against the official module (docs/parity.md, LEARN section; outputs of
2026-12-03 in docs/benchmarks/parity/learn_untrained/outputs.txt). The official checkout is imported, never copied.

    python benchmarks/learn_untrained.py ours --seed=42 [--ties=optimistic] [--variant=A|AB]
    PYTHONPATH=/tmp/official/learn/src python benchmarks/learn_untrained.py copy --seed=42
    PYTHONPATH=/tmp/official/learn/src python benchmarks/learn_untrained.py official --seeds=42,43,44 \
        --export=/tmp/recbole_llm_parity/learn_scientific

- ``ours``: our LEARN with the parity keys (``--keys``: a parity record, default docs/benchmarks/parity/
  learn_scientific_e2/runs/scientific/ours/42.json) before any training step, RecBole's evaluator; ``--variant A``
  drops the LayerNorm after the input projection, ``B`` draws the input projection at fan-in 4,096.
- ``copy``: their seed-``--seed`` weights copied into ours; N@10 with ties optimistic (theirs), pessimistic, and
  RecBole's evaluator (on stderr).
- ``official``: their ``PreferenceAlignmentModule`` after ``torch.manual_seed`` on the parity export, N@10 by their
  rank rule and with the history masked.
"""

import argparse
import json
import os
import sys

import torch

RECORD = os.path.join("docs", "benchmarks", "parity", "learn_scientific_e2", "runs", "scientific", "ours", "42.json")
WIDTH = 4096  # the official towers' input and output width


def official_module(path, seed):
    """Their untrained PreferenceAlignmentModule of ``seed`` (BertConfig built offline: no hub download)."""
    from transformers import BertConfig

    BertConfig.from_pretrained = classmethod(lambda cls, *a, **k: cls())
    try:
        from model.LEARN import PreferenceAlignmentModule
    except ImportError:
        raise SystemExit(f"the official LEARN code is not importable: run with PYTHONPATH={os.path.join(path, 'src')}") from None

    torch.manual_seed(seed)
    return PreferenceAlignmentModule(WIDTH, WIDTH, num_layers=4).eval()


def ndcg_at_10(scores, targets, history=None, pad=0, ties="optimistic"):
    """Summed NDCG@10 of ``targets`` under ``scores``: ties counted in the user's favour (theirs) or against; the
    ``history`` items (padded with ``pad``: 0 ours, -1 theirs) masked out when given."""
    if history is not None:
        scores, real = scores.clone(), history != pad
        rows = torch.arange(len(scores)).unsqueeze(1).expand_as(history)
        scores[rows[real], history[real]] = -1e9
    pred = scores[torch.arange(len(scores)), targets].unsqueeze(1)
    rank = ((pred < scores).sum(1) if ties == "optimistic" else (pred <= scores).sum(1) - 1).float()
    return float(((rank < 10).float() / torch.log2(rank + 2)).sum())


def our_setup(args):
    """(config, untrained model, train data, test data) of our LEARN with the parity record's keys."""
    from logging import getLogger

    from recbole.utils import init_seed

    from recbole_llm import Config
    from recbole_llm.quick_start import build_dataset_and_model, prepare_artifacts

    with open(args.keys) as handle:
        keys = json.load(handle)["keys"]
    keys.pop("model")
    keys.update(eval_ties=args.ties, learn_loss="catalogue", item_tower="b", train_batch_size=64, seed=args.seed,
                data_path=args.data_path, state="WARNING", show_progress=False,
                eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"})
    config = Config(model="LEARN", dataset="scientific", config_dict=keys)
    init_seed(config["seed"], config["reproducibility"])
    prepare_artifacts(config)
    _, model, (train, _, test) = build_dataset_and_model(config, getLogger())
    return config, model, train, test


def recbole_metrics(config, model, train, test):
    from recbole_llm.utils import get_trainer

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train)
    return {k: float(v) for k, v in trainer.evaluate(test, load_best_model=False).items()}


def ours(args):
    config, model, train, test = our_setup(args)
    with torch.no_grad():
        if "A" in args.variant:
            model.LayerNorm = torch.nn.Identity()
        if "B" in args.variant:
            generator, bound = torch.Generator().manual_seed(config["seed"]), 1 / WIDTH ** 0.5
            model.in_proj.weight.uniform_(-bound, bound, generator=generator)
            model.in_proj.bias.uniform_(-bound, bound, generator=generator)
    print(json.dumps(recbole_metrics(config, model, train, test)))


def copy_official(off, model):
    """Their module's weights into our towers (their input adaptor, output MLP and every transformer layer)."""
    width = model.content.size(1)
    model.in_proj.weight.copy_(off.adaptor.weight[:, :width])
    model.in_proj.bias.copy_(off.adaptor.bias)
    model.out_proj.weight.copy_(off.mlp[0].weight)
    model.out_proj.bias.copy_(off.mlp[0].bias)
    model.LayerNorm = torch.nn.Identity()
    for theirs, layer in zip(off.summary_encoder.layer, model.trm_encoder.layer):
        attention, feed = layer.multi_head_attention, layer.feed_forward
        for source, target in [(theirs.attention.self.query, attention.query), (theirs.attention.self.key, attention.key),
                               (theirs.attention.self.value, attention.value), (theirs.attention.output.dense, attention.dense),
                               (theirs.attention.output.LayerNorm, attention.LayerNorm), (theirs.intermediate.dense, feed.dense_1),
                               (theirs.output.dense, feed.dense_2), (theirs.output.LayerNorm, feed.LayerNorm)]:
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)


def copy(args):
    config, model, train, test = our_setup(args)
    with torch.no_grad():
        copy_official(official_module(args.official, config["seed"]), model)
    model.eval()
    totals, rows = {"nomask": 0.0, "mask": 0.0, "pess": 0.0}, 0
    with torch.no_grad():
        for inter, _, _, _ in test:
            scores = model.full_sort_predict(inter).view(len(inter), -1).clone()
            scores[:, 0] = -1e9
            targets = inter[model.ITEM_ID]
            totals["nomask"] += ndcg_at_10(scores, targets)
            totals["mask"] += ndcg_at_10(scores, targets, history=inter[model.ITEM_SEQ])
            totals["pess"] += ndcg_at_10(scores, targets, ties="pessimistic")
            rows += len(inter)
    print({k: v / rows for k, v in totals.items()}, rows, file=sys.stderr)
    print("trainer", recbole_metrics(config, model, train, test)["ndcg@10"], file=sys.stderr)


def official(args):
    """Their towers on the parity export (the export's own files: a pickle of our own harness's making)."""
    import pickle

    import numpy as np

    folder = os.path.join(args.export, "amazon_2018", "finetune_data")
    with open(os.path.join(folder, "Scientific", "smap.json")) as handle:
        smap = json.load(handle)
    path = os.path.join(folder, "product2emb_Scientific.pkl")
    if os.stat(path).st_uid != os.getuid():
        raise SystemExit(f"{path} is not yours: only a parity export of your own is unpickled (rerun the parity harness)")
    with open(path, "rb") as handle:
        embeddings = pickle.load(handle)  # the pickle recbole_llm.parity.export wrote for the official code
    splits = {}
    for name in ("train", "val", "test"):
        with open(os.path.join(folder, "Scientific", f"{name}_product.json")) as handle:
            splits[name] = json.load(handle)
    table = torch.tensor(np.stack([embeddings[p] for p in smap]), dtype=torch.float32)
    users = list(splits["test"])
    ids = torch.full((len(users), 40), -1, dtype=torch.long)
    for row, user in enumerate(users):
        history = [smap[i] for i in splits["train"][user] + splits["val"][user]][-40:]
        ids[row, :len(history)] = torch.tensor(history)
    targets = torch.tensor([smap[splits["test"][u][0]] for u in users])
    for seed in args.seeds:
        module = official_module(args.official, seed)
        with torch.no_grad():
            items = torch.cat([module.extract_item_embedding(table[i:i + 512].unsqueeze(1)) for i in range(0, len(table), 512)])
            user_vectors = [module.extract_user_embedding(None, torch.where(ids[i:i + 256, :, None] >= 0, table[ids[i:i + 256].clamp(min=0)],
                                                                             torch.zeros(1)), (ids[i:i + 256] >= 0).long())
                            for i in range(0, len(users), 256)]
            scores = torch.cat(user_vectors) @ items.T
        print(json.dumps({"seed": seed, "ndcg@10 theirs": ndcg_at_10(scores, targets) / len(users),
                          "ndcg@10 history masked": ndcg_at_10(scores, targets, history=ids, pad=-1) / len(users)}), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ours", "copy", "official"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[42, 43, 44])
    parser.add_argument("--ties", default="arbitrary", choices=["arbitrary", "optimistic", "pessimistic"])
    parser.add_argument("--variant", default="", choices=["", "A", "B", "AB"])
    parser.add_argument("--keys", default=RECORD)
    parser.add_argument("--data_path", default=os.path.join("..", "shared", "datasets"))
    parser.add_argument("--official", default=os.path.join("/tmp", "official", "learn"), help="named in the error when not importable")
    parser.add_argument("--export", default=os.path.join("/tmp", "recbole_llm_parity", "learn_scientific"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    {"ours": ours, "copy": copy, "official": official}[args.what](args)


if __name__ == "__main__":
    main()
