"""Export user and item embeddings of a trained model (for ranking models, as LEARN uses them).

    python -m recbole_llm.export --model_file=saved/LEARN-....pth --out=DIR
    python -m recbole_llm.export --model_file=saved/SASRec-....pth --weights=sasrec-weights.pth

Writes ``DIR/users.npy`` + ``users.json`` and ``DIR/items.npy`` + ``items.json`` (feature-file format:
tokens, float32 matrix, metadata), each written atomically. Users are embedded from their whole history
(every interaction, the held-out valid and test items included, the last MAX_ITEM_LIST_LENGTH kept);
items by the model's item tower / item table. Works for LEARN, the SASRec / GRU4Rec family and BERT4Rec (any
model with ``user_embeddings(item_seq, item_seq_len)`` or ``forward(item_seq, item_seq_len)``, and ``item_table()``
or ``item_embedding``; BERT4Rec's score also adds its per-item ``output_bias``, not exported).

``--weights=FILE`` writes the model's weights as a plain file (tensors, the item tokens, model and dataset
names: loadable with ``weights_only=True``): the form ``teacher_checkpoint`` and UniSRec's ``pretrained_checkpoint``
accept, so that a weights file can be handed to another person without anything in it that runs code.

The checkpoint given by ``--model_file`` is unpickled (RecBole stores its Config in it, and unpickling can run
code): only export your own checkpoints, files you trust.
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

    check_destinations(model_file, out_dir=out_dir)
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


def export_weights(model_file, out_file):
    """Write ``model_file``'s weights as a plain torch file (:func:`recbole_llm.fileio.plain`) to ``out_file``."""
    from recbole_llm.data.cold import cold_settings_key
    from recbole_llm.fileio import atomic_torch_save, plain
    from recbole_llm.quick_start import load_model_file

    check_destinations(model_file, weights=out_file)
    config, model, train, _, _ = load_model_file(model_file, {"state": "WARNING"})
    dataset = train.dataset
    weights = {
        "state_dict": {name: value.detach().cpu().clone() for name, value in model.state_dict().items()},
        "item_tokens": [str(t) for t in dataset.field2id_token[dataset.iid_field]],
        "model": config["model"],
        "dataset": config["dataset"],
        "model_file": os.path.abspath(model_file),
        "teacher_config": cold_settings_key(config) or {},  # the cold items it was trained without (teacher check)
    }
    atomic_torch_save(plain(weights), out_file)
    return len(weights["state_dict"])


def _existing_parent(path):
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return probe


def check_destinations(model_file, out_dir=None, weights=None):
    """Refuse, before the checkpoint is loaded, what the export could only find out when writing: ``--out`` onto a
    file, ``--weights`` onto a folder or onto ``--model_file`` itself (it would replace your checkpoint), a
    destination under a file, and a ``--model_file`` that is not there."""
    if not os.path.isfile(model_file):
        raise CheckpointError(f"--model_file '{model_file}' is not a file: pass the .pth a run wrote (see 'Saving current' in its log)")
    if out_dir:
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise CheckpointError(f"--out '{out_dir}' is a file: --out names a folder (users.npy, items.npy go into it); pass a folder")
        parent = _existing_parent(out_dir)
        if not os.path.isdir(parent):
            raise CheckpointError(f"--out '{out_dir}' lies under '{parent}', a file: pass a folder path")
    if weights:
        if os.path.isdir(weights):
            raise CheckpointError(f"--weights '{weights}' is a folder: --weights names the file to write (e.g. {os.path.join(weights, 'weights.pth')})")
        parent = _existing_parent(os.path.dirname(os.path.abspath(weights)))
        if not os.path.isdir(parent):
            raise CheckpointError(f"--weights '{weights}' lies under '{parent}', a file: pass a path in a folder")
        if os.path.exists(weights) and os.path.samefile(weights, model_file):
            raise CheckpointError(
                f"--weights '{weights}' is --model_file itself: writing it would replace your checkpoint; pass another file name"
            )


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_file", required=True, help="a checkpoint your own run wrote (it is unpickled: trusted files only)")
    parser.add_argument("--out", help="folder for users.npy/json and items.npy/json")
    parser.add_argument("--weights", help="plain weights file to write (teacher_checkpoint, pretrained_checkpoint)")
    args = parser.parse_args(argv)
    if not args.out and not args.weights:
        raise CheckpointError("export needs --out=DIR (embeddings) or --weights=FILE (plain weights), or both")
    check_destinations(args.model_file, args.out, args.weights)
    try:
        if args.weights:
            n_tensors = export_weights(args.model_file, args.weights)
            print(f"wrote {n_tensors} tensors and the item tokens to {args.weights} (plain: loads with weights_only=True)")
        if args.out:
            n_users, n_items = export_embeddings(args.model_file, args.out)
            print(f"wrote {n_users} user and {n_items} item embeddings to {args.out}/users.npy and {args.out}/items.npy")
    except (FileNotFoundError, TypeError, KeyError) as err:
        raise CheckpointError(str(err).strip("'\"")) from err
    return 0


if __name__ == "__main__":
    sys.exit(main())
