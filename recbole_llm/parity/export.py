"""Our split and tables, written in the official code's input formats (into a scratch folder, never a checkout).

One :class:`ParityData` holds what our model sees: every user's whole time-ordered sequence of internal item ids
after the plugin's filtering (users 1..U, items 1..N, RecBole's leave-one-out: last = test, second last = valid,
checked against RecBole's own test and valid rows), and the tables read through quick_start's artifact path.

Formats (read from the official loaders):

- LLM-ESR / LLMEmb, ``data/<name>/handled/``: ``inter.txt`` (``"u i"`` lines, users 1..U in order, each user's
  items in time order; their generator splits the last two off), ``itm_emb_np.pkl`` (LLM table, (N, d), row r =
  item r + 1: they prepend the padding row), ``pca64_itm_emb_np.pkl`` (the ID view's PCA init, (N, 64)),
  ``sim_user_100.pkl`` ((U, K) 0-based user rows, row u-1 = user u; they use the first ``sim_user_num``),
  LLMEmb's ``<llm_emb_file>.pkl`` and ``itm_emb_sasrec.pkl`` (the teacher table, (N, hidden)).
- LEARN finetune: ``amazon_2018/finetune_data/<Name>/{train,val,test}_product.json`` (user token -> item tokens),
  ``smap.json`` (item token -> 0-based gallery row, in id order), ``umap.json`` (user token -> the integer key of
  the JSON files: our internal id), ``<Name>_lmdb`` (item token ->
  pickled vector) and ``amazon_2018/finetune_data/product2emb_<Name>.pkl`` (the same as a dict); vectors
  zero-padded to the 4096 columns their loaders hard-code.
"""

import json
import os
import pickle
import shutil
from dataclasses import dataclass, field

import numpy as np

from recbole_llm.errors import UserError
from recbole_llm.fileio import atomic_open, atomic_write_text

LEARN_WIDTH = 4096  # dataset_amazon.py pads histories with torch.zeros((n, 4096))


class ParityError(UserError, ValueError):
    """A parity input that cannot be exported as the official code expects."""


@dataclass
class ParityData:
    sequences: list  # sequences[u - 1] = user u's internal item ids, time order
    n_items: int  # N: ids 1..N
    user_tokens: list  # user_tokens[u] = token of internal user u (0 = padding)
    item_tokens: list  # item_tokens[i] = token of internal item i (0 = padding)
    tables: dict = field(default_factory=dict)  # name -> (N, d) float32, row r = item r + 1
    similar: np.ndarray = None  # (U, K) 0-based user rows


def data_digest(data):
    """sha1 prefix of everything the export writes from ``data`` (sequences, tokens, every table's dtype, shape and
    bytes, the similar users): a run's spec carries it, so that changed data, features or teacher rerun it."""
    import hashlib

    digest = hashlib.sha1()
    digest.update(json.dumps([data.sequences, data.n_items, data.user_tokens, data.item_tokens]).encode("utf-8"))
    arrays = sorted(data.tables.items()) + ([("similar", data.similar)] if data.similar is not None else [])
    for name, table in arrays:
        array = np.ascontiguousarray(table)
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def user_sequences_in_time_order(uids, iids, times):
    """{uid: [iid, ...]} in time order (stable: equal times keep file order), users in id order."""
    order = np.lexsort((np.asarray(times), np.asarray(uids)))
    out = {}
    for u, i in zip(np.asarray(uids)[order].tolist(), np.asarray(iids)[order].tolist()):
        out.setdefault(int(u), []).append(int(i))
    return out


def check_against_split(sequences, split_rows):
    """``split_rows`` = {"valid": (uids, targets), "test": (uids, targets)} of RecBole's split: each user's
    second-last and last items must be them (else the two sides would not share one split)."""
    for offset, name in ((2, "valid"), (1, "test")):
        uids, targets = split_rows[name]
        for u, t in zip(np.asarray(uids).tolist(), np.asarray(targets).tolist()):
            seq = sequences.get(int(u))
            if seq is None or len(seq) < offset or seq[-offset] != int(t):
                raise ParityError(
                    f"user {u}: RecBole's {name} item {t} is not its sequence's position -{offset}: the data has ties "
                    "in TIME_FIELD or a split other than leave-one-out (eval_args split LS valid_and_test, order TO)"
                )


def dense_sequences(by_user, n_users):
    """List of the sequences of users 1..U; every user must have at least 3 items (train, valid, test)."""
    missing = [u for u in range(1, n_users + 1) if len(by_user.get(u, [])) < 3]
    if missing:
        raise ParityError(
            f"{len(missing)} users have fewer than 3 interactions (first: {missing[:5]}); the official generators "
            "evaluate those on a training item: filter them (user_inter_num_interval: '[3,inf)')"
        )
    return [by_user[u] for u in range(1, n_users + 1)]


def check_negatives(sequences, n_items, test_neg=100):
    """The official evaluation draws ``test_neg`` distinct items outside each user's sequence, by rejection: with
    fewer such items it never ends."""
    worst = max(len(set(seq)) for seq in sequences)
    drawn_from = min(n_items, max(max(seq) for seq in sequences))  # their item_num: the largest id in inter.txt
    if drawn_from - worst < test_neg:
        raise ParityError(
            f"a user has {worst} distinct items of the {drawn_from} the official code draws from: fewer than the "
            f"{test_neg} negatives its evaluation draws outside each sequence (it would loop forever); use a larger dataset"
        )


def tail_thresholds(sequences, n_items, tail_ratio=0.8):
    """(item threshold, user threshold) as integers both sides accept: the smallest t with at least
    ``tail_ratio`` of the items below t training users (the papers' "bottom 80%"), and the median training
    length (rounded up), training = all but the last two items."""
    pop = np.zeros(n_items + 1, dtype=np.int64)
    for seq in sequences:
        pop[np.unique(seq[:-2])] += 1
    items = pop[1:]
    t_item = next(t for t in range(1, int(items.max()) + 2) if (items < t).mean() >= tail_ratio)
    t_user = int(np.ceil(np.median([len(s) - 2 for s in sequences])))
    return int(t_item), t_user


def _dump(obj, path):
    with atomic_open(path, "wb") as f:
        pickle.dump(obj, f)


def write_inter(sequences, path):
    lines = [f"{u} {i}" for u, seq in enumerate(sequences, start=1) for i in seq]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_handled(data, folder, tables):
    """``folder`` (``data/<name>/handled``): inter.txt, every ``{file stem: table name}`` of ``tables`` as a
    pickled (N, d) float32 array, and sim_user_100.pkl when the data has similar users."""
    os.makedirs(folder, exist_ok=True)
    write_inter(data.sequences, os.path.join(folder, "inter.txt"))
    for stem, name in tables.items():
        table = np.ascontiguousarray(data.tables[name], dtype=np.float32)
        if table.shape[0] != data.n_items:
            raise ParityError(f"table '{name}' has {table.shape[0]} rows for {data.n_items} items")
        _dump(table, os.path.join(folder, f"{stem}.pkl"))
    if data.similar is not None:
        _dump(np.asarray(data.similar, dtype=np.int64), os.path.join(folder, "sim_user_100.pkl"))
    return folder


def pad_width(table, width=LEARN_WIDTH):
    if table.shape[1] > width:
        raise ParityError(f"LEARN's loaders hard-code {width} columns; the table has {table.shape[1]}")
    out = np.zeros((table.shape[0], width), dtype=np.float32)
    out[:, : table.shape[1]] = table
    return out


def write_learn(data, root, name, table_name):
    """LEARN's finetune inputs under ``root/amazon_2018/finetune_data/`` (``name``: their dataset name)."""
    import lmdb

    base = os.path.join(root, "amazon_2018", "finetune_data")
    folder = os.path.join(base, name)
    os.makedirs(folder, exist_ok=True)
    items, users = data.item_tokens, data.user_tokens
    splits = {"train": {}, "val": {}, "test": {}}
    for u, seq in enumerate(data.sequences, start=1):  # their user keys are integers (int(userid)): our ids
        tokens = [items[i] for i in seq]
        splits["train"][str(u)], splits["val"][str(u)], splits["test"][str(u)] = tokens[:-2], tokens[-2:-1], tokens[-1:]
    for split, content in splits.items():
        atomic_write_text(os.path.join(folder, f"{split}_product.json"), json.dumps(content))
    atomic_write_text(os.path.join(folder, "smap.json"), json.dumps({items[i]: i - 1 for i in range(1, data.n_items + 1)}))
    atomic_write_text(os.path.join(folder, "umap.json"), json.dumps({users[u]: u for u in range(1, len(users))}))
    table = pad_width(np.asarray(data.tables[table_name], dtype=np.float32))
    vectors = {items[i]: table[i - 1] for i in range(1, data.n_items + 1)}
    _dump(vectors, os.path.join(base, f"product2emb_{name}.pkl"))
    # a fresh environment next to the old one, then swapped in: writing into the LMDB of an earlier export filled its
    # map (MDB_MAP_FULL), and a stop mid-write must not leave a half-written store under the final name
    final = os.path.join(base, f"{name}_lmdb")
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    env = lmdb.open(tmp, map_size=max(1 << 26, table.nbytes * 3))
    with env.begin(write=True) as txn:
        for token, vector in vectors.items():
            txn.put(token.encode("utf-8"), pickle.dumps(vector))
    env.close()
    old = f"{final}.old-{os.getpid()}"
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return folder
