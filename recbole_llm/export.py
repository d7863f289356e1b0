"""Export user and item embeddings of a trained model (for ranking models, as LEARN uses them).

    python -m recbole_llm.export --model_file=saved/LEARN-....pth --out=DIR

Writes ``DIR/users.npy`` + ``users.json`` and ``DIR/items.npy`` + ``items.json`` (feature-file format:
tokens, float32 matrix, metadata), each written atomically. Users are embedded from their whole history
(every interaction, the held-out valid and test items included, the last MAX_ITEM_LIST_LENGTH kept);
items by the model's item tower / item table. Works for LEARN, the SASRec / GRU4Rec family and BERT4Rec (any
model with ``user_embeddings(item_seq, item_seq_len)`` or ``forward(item_seq, item_seq_len)``, and ``item_table()``
or ``item_embedding``; BERT4Rec's score also adds its per-item ``output_bias``, not exported).

The checkpoint is unpickled (RecBole stores its Config in it): only export files you trust.
"""

import argparse
import os
import sys

import torch

from recbole_llm.errors import UserError, cli_entry


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be exported."""


def full_histories(test_dataset, max_len):
    """(item_seq, item_len) per test row: the history plus the held-out test item, last ``max_len`` kept."""
    inter = test_dataset.inter_feat
    seq = inter[test_dataset.item_id_list_field]
    length = inter[test_dataset.item_list_length_field].long()
    target = inter[test_dataset.iid_field]
    extended = torch.zeros(seq.size(0), max_len + 1, dtype=seq.dtype)
    extended[:, : seq.size(1)] = seq
    extended[torch.arange(seq.size(0)), length] = target
    new_len = length + 1
    overflow = new_len > max_len
    extended[overflow] = torch.roll(extended[overflow], -1, dims=1)
    new_len = new_len.clamp(max=max_len)
    return extended[:, :max_len], new_len


def item_embeddings(model):
    """The item vectors the model scores with: its item table (item tower), through ``output_table`` when the
    model normalises it for scoring (UniSRec), without BERT4Rec's mask token."""
    if hasattr(model, "item_table"):
        table = model.item_table()
        return model.output_table(table) if hasattr(model, "output_table") else table
    if hasattr(model, "item_embedding"):
        return model.item_embedding.weight[: model.n_items]
    raise TypeError(f"{type(model).__name__} has no item_table() or item_embedding: it cannot be exported")


@torch.no_grad()
def export_embeddings(model_file, out_dir, batch_size=1024):
    from recbole_llm.llm.features import save_features
    from recbole_llm.quick_start import load_model_file

    config, model, train, _, test = load_model_file(model_file, {"state": "WARNING"})
    dataset = train.dataset
    model.eval()

    items = item_embeddings(model).float().cpu().numpy()
    item_tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field]]
    seq, seq_len = full_histories(test._dataset, config["MAX_ITEM_LIST_LENGTH"])
    encode = getattr(model, "user_embeddings", None) or model.forward  # BERT4Rec: the state at a mask after the history
    users = torch.cat([encode(seq[i : i + batch_size], seq_len[i : i + batch_size]) for i in range(0, len(seq), batch_size)])
    user_ids = test._dataset.inter_feat[dataset.uid_field].tolist()
    user_tokens = [str(dataset.field2id_token[dataset.uid_field][u]) for u in user_ids]
    meta = {"model": config["model"], "dataset": config["dataset"], "model_file": os.path.abspath(model_file)}
    os.makedirs(out_dir, exist_ok=True)
    save_features(os.path.join(out_dir, "items"), item_tokens[1:], items[1:], dict(meta, kind="items"))
    save_features(os.path.join(out_dir, "users"), user_tokens, users.float().cpu().numpy(), dict(meta, kind="users"))
    return len(user_tokens), len(item_tokens) - 1


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_file", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        n_users, n_items = export_embeddings(args.model_file, args.out)
    except (FileNotFoundError, TypeError, KeyError) as err:
        raise CheckpointError(str(err).strip("'\"")) from err
    print(f"wrote {n_users} user and {n_items} item embeddings to {args.out}/users.npy and {args.out}/items.npy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
