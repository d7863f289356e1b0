"""Top-K recommendations from a trained checkpoint, with new items added from their text and an optional FAISS index.

    python -m recbole_llm.recommend --model_file=saved/LLMEmbSASRec-....pth --users=1,2 --k=10 --exclude_seen
    python -m recbole_llm.recommend --model_file=saved/LLMEmbSASRec-....pth --history=50,172,133 --out=recs.csv
    python -m recbole_llm.recommend --model_file=... --users_file=users.txt --new_items=new.item --out=recs.jsonl
    python -m recbole_llm.recommend --model_file=... --all_users --index=faiss --out=all.csv

For each user (``--users``, ``--users_file``, ``--all_users``: their whole history in the dataset) or history
(``--history=i1,i2,i3``, repeatable, ``--history_file``: users the dataset never saw, oldest item first) it writes the
K best items with their titles and scores: the model's own ``full_sort_predict`` scores (what its evaluation ranks
by), every item of the catalogue a candidate (``--exclude_seen`` drops the items of the history).

``--new_items=FILE.item`` adds items from their text without retraining: embedded with the checkpoint's LLM, prompt
and feature pipeline and mapped through the model's own item path (LLMEmb*'s adapter, LEARN's item tower, UniSRec's
adaptor, the cold_id generator of LLMESR* / LLM2X*), ranked beside the known items. ID-only models are refused.

``--index=faiss`` (pip install faiss-cpu) ranks the known items with an approximate index of the model's item vectors
(flat or IVF by catalogue size, HNSW by name: ``--index_type``), calibrated to recall@10 >= 0.97 of exact search on the
dataset's users, saved beside the checkpoint keyed by its content and reused.

Output: ``--out=F.csv`` (user, rank, item, score, title, new) or ``--out=F.jsonl`` (one line per user), written
atomically; without ``--out`` a table on stdout. Docs: docs/serving.md.

The checkpoint given by ``--model_file`` is unpickled (RecBole stores its Config in it, and unpickling can run code):
only serve your own checkpoints, files you trust. Every other file read here (users, histories, new items, the
index) is plain text or FAISS's own format and is never unpickled.
"""

import argparse
import os
import sys

import numpy as np
import torch

from recbole_llm.errors import cli_entry
from recbole_llm.schema import setting
from recbole_llm.serve import ServeError
from recbole_llm.serve.inputs import Query, read_history_file, read_users_file, resolve_histories, resolve_users, split_tokens
from recbole_llm.serve.scoring import ModelScorer, topk_rows


def _log(message):
    print(message, file=sys.stderr, flush=True)


class Recommender:
    """Top-K items of a trained checkpoint for histories or dataset users.

    >>> rec = Recommender.from_checkpoint("saved/LLMEmbSASRec-....pth", new_items="new.item")
    >>> rec.recommend(["50", "172", "133"], k=5)          # a history: item tokens, oldest first
    [{"item": "181", "score": 7.12, "title": "Return of the Jedi (1983)", "new": False}, ...]
    >>> rec.recommend_users(["1", "2"], k=5, exclude_seen=True)   # dataset users: {user: [...]}
    """

    def __init__(self, scorer, model_file, title_field=None, log=_log):
        from recbole_llm.serve.output import read_titles, title_field as pick_title

        self.scorer, self.model_file, self.log = scorer, model_file, log
        config = scorer.config
        self.item_file = os.path.join(config["data_path"], f"{config['dataset']}.item")
        self._title_field = pick_title(self.item_file, title_field, setting(config, "text_fields"))
        self.titles = read_titles(self.item_file, self._title_field, config["ITEM_ID_FIELD"] or "item_id")
        self.new_tokens, self.new_titles = [], {}
        self.new_vectors = self.new_bias = None
        self.index = None

    @classmethod
    def from_checkpoint(cls, model_file, new_items=None, index=None, index_type="auto", index_dir=None, title_field=None,
                        log=_log, show_progress=False):
        """Load ``model_file`` (your own checkpoint: it is unpickled) and its dataset; ``new_items`` (a .item file) and
        ``index`` ("faiss") as :meth:`add_items` and :meth:`use_index`."""
        from recbole_llm.quick_start import load_model_file

        if not os.path.isfile(model_file):
            raise ServeError(f"--model_file '{model_file}' is not a file: pass the .pth a run wrote (see 'Saving current' in its log)")
        if index not in (None, "none", "faiss"):
            raise ServeError(f"--index '{index}' is not one of none, faiss")
        if index == "faiss":
            from recbole_llm.serve.index import choose_type, import_faiss

            import_faiss()  # before the model loads: a missing faiss-cpu is one line at once
            choose_type(0, index_type)
        try:
            config, model, train, valid, test = load_model_file(model_file, {"state": "WARNING", "show_progress": False})
        except (KeyError, TypeError) as err:
            raise ServeError(f"--model_file '{model_file}' cannot be rebuilt ({str(err).strip(chr(39))}): pass a checkpoint "
                             "this project's runs wrote") from None
        rec = cls(ModelScorer(config, model, train, valid, test), model_file, title_field, log)
        if new_items:
            rec.add_items(new_items, show_progress=show_progress)
        if index == "faiss":
            rec.use_index(index_type, index_dir)
        return rec

    @property
    def n_candidates(self):
        return self.scorer.n_items - 1 + len(self.new_tokens)

    def add_items(self, path, show_progress=False):
        """Add the items of ``path`` (an atomic .item file) from their text, as candidates beside the known items."""
        from recbole_llm.serve.new_items import item_path, new_item_features, new_item_vectors, read_new_items
        from recbole_llm.serve.output import read_titles

        scorer = self.scorer
        item_path(scorer.model)  # refuses an ID-only model before anything is embedded
        _, bias = scorer.item_factors()
        known = set(scorer.item_ids) | set(self.new_tokens)
        tokens, prompts, _ = read_new_items(path, scorer.config, known)
        titles = read_titles(path, self._title_field, scorer.config["ITEM_ID_FIELD"] or "item_id")  # before the LLM runs
        features = new_item_features(scorer.config, prompts, tokens, show_progress=show_progress)
        vectors, new_bias = new_item_vectors(scorer.model, features, bias is not None)
        if self.new_vectors is not None:
            vectors = torch.cat([self.new_vectors, vectors])
            new_bias = None if new_bias is None else torch.cat([self.new_bias, new_bias])
        self.new_vectors, self.new_bias = vectors, new_bias
        self.new_tokens = self.new_tokens + tokens
        self.new_titles.update(titles)
        self.log(f"added {len(tokens)} new items from {path} ({type(scorer.model).__name__}'s item path)")
        return tokens

    def use_index(self, index_type="auto", index_dir=None):
        """Rank the known items with a FAISS index of the model's item vectors (built or reused, beside the checkpoint)."""
        from recbole_llm.serve.index import ensure_index, query_rows, with_bias

        scorer = self.scorer
        items, bias = scorer.item_factors()
        vectors = with_bias(items[1:].numpy(), None if bias is None else bias[1:].numpy())
        rows = np.unique(np.linspace(0, len(scorer.user_seq) - 1, num=min(1000, len(scorer.user_seq))).astype(int))
        rows = torch.from_numpy(rows)
        calibration = query_rows(scorer.user_factors(scorer.user_seq[rows], scorer.user_seq_len[rows]).numpy(), bias is not None)
        keys = getattr(scorer.dataset, "llm_feature_keys", None)
        self.index = ensure_index(vectors, self.model_file, keys, index_type, index_dir, calibration, log=self.log)
        self._has_bias = bias is not None
        return self.index

    # ---- ranking ----------------------------------------------------------------------------------------------------
    def _batch(self, queries):
        scorer = self.scorer
        seq = torch.zeros(len(queries), scorer.max_len, dtype=scorer.user_seq.dtype)
        seq_len = torch.zeros(len(queries), dtype=scorer.user_seq_len.dtype)
        user_ids = torch.zeros(len(queries), dtype=torch.long)
        users = [(row, q.user_id) for row, q in enumerate(queries) if q.user_id is not None]
        if users:
            rows = torch.tensor([r for r, _ in users])
            seq[rows], seq_len[rows] = scorer.user_histories([u for _, u in users])
            user_ids[rows] = torch.tensor([u for _, u in users])
        given = [(row, q.items) for row, q in enumerate(queries) if q.user_id is None]
        if given:
            rows = torch.tensor([r for r, _ in given])
            seq[rows], seq_len[rows] = scorer.histories([items for _, items in given])
        return seq, seq_len, user_ids

    def _seen(self, queries):
        scorer = self.scorer
        mask = torch.zeros(len(queries), scorer.n_items, dtype=torch.bool)
        users = [(row, q.user_id) for row, q in enumerate(queries) if q.user_id is not None]
        if users:
            mask[torch.tensor([r for r, _ in users])] = scorer.seen_mask([u for _, u in users])
        for row, q in enumerate(queries):
            if q.user_id is None:
                mask[row, torch.tensor(q.items, dtype=torch.long)] = True
        mask[:, 0] = False
        return mask

    @torch.no_grad()
    def rank(self, queries, k=10, exclude_seen=False):
        """(scores (B, k), ids (B, k)) of one batch of :class:`~recbole_llm.serve.inputs.Query`; ids below
        ``scorer.n_items`` are known items, the others new items (``id - n_items``); -inf scores pad short rows (only
        where fewer than k candidates are left). Equal scores go to the lower id. A row the index returns fewer
        than k items for (IVF's lists run out after the history's items are left out) is ranked exactly."""
        values, ids = self._rank(queries, k, exclude_seen, self.index is not None)
        if self.index is not None:
            seen = self._seen(queries).sum(1) if exclude_seen else torch.zeros(len(queries), dtype=torch.long)
            wanted = torch.clamp(self.n_candidates - seen, max=k).clamp(min=0)
            short = torch.nonzero(torch.isfinite(values).sum(1) < wanted).view(-1).tolist()
            if short:
                exact_values, exact_ids = self._rank([queries[r] for r in short], k, exclude_seen, False)
                values[short], ids[short] = exact_values, exact_ids
        return values, ids

    def _rank(self, queries, k, exclude_seen, use_index):
        scorer = self.scorer
        seq, seq_len, user_ids = self._batch(queries)
        seen = self._seen(queries) if exclude_seen else None
        users = scorer.user_factors(seq, seq_len) if (use_index or self.new_tokens) else None
        if not use_index:
            known = scorer.full_scores(seq, seq_len, user_ids)
            known[:, 0] = -torch.inf
            if seen is not None:
                known[seen] = -torch.inf
            ids = torch.arange(scorer.n_items).expand(len(queries), -1)
        else:
            from recbole_llm.serve.index import query_rows

            extra = int(seen.sum(1).max()) if seen is not None else 0
            depth = min(k + extra, scorer.n_items - 1)
            found, rows = self.index.search(query_rows(users.numpy(), self._has_bias), depth)
            ids = torch.from_numpy(rows).long() + 1  # index row r is item r + 1 (0 is padding)
            known = torch.from_numpy(found).float()
            invalid = rows < 0
            if seen is not None:
                invalid |= seen.gather(1, ids.clamp(min=0)).numpy()
            known[torch.from_numpy(invalid)] = -torch.inf
            ids = ids.clamp(min=0)
            # ties by id, as the exact ranking (the index returns equal scores in its own order)
            order = torch.from_numpy(np.lexsort((ids.numpy(), -known.numpy().astype(np.float64)), axis=1))
            known, ids = known.gather(1, order), ids.gather(1, order)
        if self.new_tokens:
            new = users @ self.new_vectors.t()
            if self.new_bias is not None:
                new = new + self.new_bias
            known = torch.cat([known, new], 1)
            ids = torch.cat([ids, torch.arange(scorer.n_items, scorer.n_items + len(self.new_tokens)).expand(len(queries), -1)], 1)
        values, columns = topk_rows(known, k)
        return values, ids.gather(1, columns)

    def _items(self, values, ids):
        scorer, n = self.scorer, self.scorer.n_items
        out = []
        for score, item in zip(values.tolist(), ids.tolist()):
            if score == -np.inf:
                continue
            if item < n:
                token = scorer.item_tokens[item]
                out.append({"item": token, "score": float(score), "title": self.titles.get(token, ""), "new": False})
            else:
                token = self.new_tokens[item - n]
                out.append({"item": token, "score": float(score), "title": self.new_titles.get(token, ""), "new": True})
        return out

    def check_k(self, k):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.n_candidates:
            raise ServeError(f"--k={k}: pass a whole number from 1 to {self.n_candidates} (the candidate items)")

    def iter_results(self, queries, k=10, exclude_seen=False, batch_size=256, show_progress=False):
        """(name, [{"item", "score", "title", "new"}, ...]) per query, in order, ``batch_size`` at a time."""
        from tqdm.auto import tqdm

        self.check_k(k)
        batches = range(0, len(queries), batch_size)
        for start in tqdm(batches, desc="recommend", unit="batch", disable=not show_progress or len(batches) < 2, file=sys.stderr):
            batch = queries[start : start + batch_size]
            values, ids = self.rank(batch, k, exclude_seen)
            for query, row_values, row_ids in zip(batch, values, ids):
                yield query.name, self._items(row_values, row_ids)

    def recommend(self, history, k=10, exclude_seen=False):
        """The top ``k`` of one history (item tokens, oldest first): [{"item", "score", "title", "new"}, ...]."""
        if isinstance(history, str):
            history = split_tokens(history)
        query = resolve_histories(self.scorer, [("history", [str(t) for t in history])], "history", self.new_tokens)
        return next(self.iter_results(query, k, exclude_seen))[1]

    def recommend_users(self, users, k=10, exclude_seen=False, batch_size=256):
        """{user token: top ``k``} of dataset users (their whole history)."""
        queries = resolve_users(self.scorer, [str(u) for u in users], "users")
        return dict(self.iter_results(queries, k, exclude_seen, batch_size))


# ---- command line ------------------------------------------------------------------------------------------------------
def build_queries(args, rec):
    scorer = rec.scorer
    queries = []
    if args.all_users:
        queries += [Query(scorer.user_tokens[u], user_id=u) for u in sorted(scorer.row_of_user)]
        left = len(scorer.user_tokens) - 1 - len(scorer.row_of_user)
        if left:
            rec.log(f"--all_users: {left} user(s) of {scorer.config['dataset']} have no test row (every interaction "
                    "filtered or held out) and are left out; give their items with --history")
    if args.users:
        queries += resolve_users(scorer, split_tokens(args.users), "--users")
    if args.users_file:
        queries += resolve_users(scorer, read_users_file(args.users_file), f"--users_file '{args.users_file}'")
    histories = [(f"history{i}", split_tokens(h)) for i, h in enumerate(args.history or [], 1)]
    empty = [name for name, items in histories if not items]
    if empty:
        raise ServeError("--history is empty: give the items of a history, e.g. --history=i1,i2,i3")
    if histories:
        queries += resolve_histories(scorer, histories, "--history", rec.new_tokens)
    if args.history_file:
        queries += resolve_histories(scorer, read_history_file(args.history_file), f"--history_file '{args.history_file}'", rec.new_tokens)
    return queries


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m recbole_llm.recommend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_file", required=True, help="a checkpoint your own run wrote (it is unpickled: trusted files only)")
    who = parser.add_argument_group("who to recommend for (any combination)")
    who.add_argument("--users", help="dataset user tokens, comma-separated: their whole history in the dataset")
    who.add_argument("--users_file", help="a text file of dataset user tokens, one a line")
    who.add_argument("--all_users", action="store_true", help="every user of the dataset")
    who.add_argument("--history", action="append", help="a history of item tokens, oldest first, comma-separated (repeatable)")
    who.add_argument("--history_file", help="histories, one a line: name<TAB>i1,i2,i3 (or a .jsonl of {user, history})")
    parser.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    parser.add_argument("--exclude_seen", action="store_true", help="leave out the items of each history")
    parser.add_argument("--new_items", help="a .item file of new items, added from their text (text models only)")
    parser.add_argument("--index", default="none", choices=["none", "faiss"], help="rank with a FAISS index (pip install faiss-cpu)")
    parser.add_argument("--index_type", default="auto", help="auto (flat below 50k items, ivf above), flat, ivf, hnsw")
    parser.add_argument("--index_dir", help="folder of the index (default: the checkpoint's)")
    parser.add_argument("--out", help="output file, .csv or .jsonl (written atomically); default: a table on stdout")
    parser.add_argument("--title_field", help=".item column shown as the title (default: title, movie_title, name, else the first text field)")
    parser.add_argument("--batch_size", type=int, default=256, help="histories scored at once (default 256)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not (args.users or args.users_file or args.all_users or args.history or args.history_file):
        raise ServeError("recommend for whom? pass --users=u1,u2, --users_file=F, --all_users, --history=i1,i2,i3 or --history_file=F")
    if args.batch_size < 1:
        raise ServeError(f"--batch_size={args.batch_size}: pass a positive number")
    if args.k < 1:
        raise ServeError(f"--k={args.k}: pass a whole number of at least 1")
    if args.index != "faiss" and (args.index_type != "auto" or args.index_dir):
        given = "--index_type" if args.index_type != "auto" else "--index_dir"
        raise ServeError(f"{given} is an option of the FAISS index: add --index=faiss, or leave {given} out")
    from recbole_llm.serve.index import choose_type

    choose_type(0, args.index_type)  # one line for an unknown type, before the model loads
    return args


@cli_entry
def main(argv=None):
    from recbole_llm.fileio import atomic_open
    from recbole_llm.serve.output import Writer, check_out, format_table

    args = parse_args(argv)
    if args.out:
        check_out(args.out, args.model_file)
    for option in ("users_file", "history_file", "new_items"):
        path = getattr(args, option)
        if path and not os.path.isfile(path):
            raise ServeError(f"--{option} '{path}' does not exist: pass an existing file")
    rec = Recommender.from_checkpoint(args.model_file, new_items=args.new_items, index=args.index, index_type=args.index_type,
                                      index_dir=args.index_dir, title_field=args.title_field, show_progress=not args.no_progress)
    queries = build_queries(args, rec)
    rec.check_k(args.k)
    results = rec.iter_results(queries, args.k, args.exclude_seen, args.batch_size, show_progress=not args.no_progress)
    if not args.out:
        print(format_table(list(results)), end="")
        return 0
    suffix = os.path.splitext(args.out)[1]
    with atomic_open(args.out, "w", encoding="utf-8", newline="") as handle:
        writer = Writer(handle, suffix)
        for name, items in results:
            writer.write(name, items)
    ranking = f"{rec.index.kind} index" if rec.index is not None else "exact ranking"
    _log(f"wrote the top {args.k} of {len(queries)} users to {args.out} ({ranking}, {rec.n_candidates} candidate items)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
