"""Who to recommend for: dataset users and histories, from the command line or plain-text files (never unpickled).

- ``--users=u1,u2`` / ``--users_file=F``: user tokens of the dataset (one per line in F; blank lines, lines starting
  with ``#`` and an atomic header such as ``user_id:token`` are skipped).
- ``--history=i1,i2,i3`` (repeatable) / ``--history_file=F``: histories of users the dataset never saw, oldest item
  first. F holds one history a line, ``name<TAB>i1,i2,i3`` or just ``i1,i2,i3`` (named ``history<line>``), items
  separated by commas or spaces; or, for a ``.jsonl`` file, one ``{"user": name, "history": [i1, i2]}`` a line.
"""

import json
import os
import re

from recbole_llm.errors import MissingFileError
from recbole_llm.serve import ServeError


class Query:
    """One row to recommend for: a name, and either a dataset user (internal id) or a history (internal item ids)."""

    __slots__ = ("name", "user_id", "items")

    def __init__(self, name, user_id=None, items=None):
        self.name, self.user_id, self.items = name, user_id, items


def split_tokens(text):
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def _read_lines(path, option):
    if not os.path.isfile(path):
        raise MissingFileError(f"{option} '{path}' does not exist: pass a text file{' path' if os.path.isdir(path) else ''}")
    from recbole_llm.data.atomic import check_encoding

    try:
        check_encoding(path)
    except Exception as err:  # noqa: BLE001 - the atomic check names the line; say which option
        raise ServeError(f"{option}: {err}") from None
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def read_users_file(path):
    """User tokens of ``path`` (one a line)."""
    users = []
    for line in _read_lines(path, "--users_file"):
        line = line.strip()
        if not line or line.startswith("#") or (not users and ":" in line and line.split(":")[1] in ("token", "float")):
            continue
        if "\t" in line:
            raise ServeError(f"--users_file '{path}': line '{line[:40]}' holds a tab: write one user token a line")
        users.append(line)
    if not users:
        raise ServeError(f"--users_file '{path}' lists no user: write one user token a line")
    return users


def read_history_file(path):
    """[(name, [item tokens])] of ``path``."""
    histories = []
    lines = _read_lines(path, "--history_file")
    jsonl = path.endswith((".jsonl", ".json"))
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ServeError(f"--history_file '{path}' line {number} is not JSON ({err.msg}): write one "
                                 '{"user": name, "history": [item, ...]} a line') from None
            items = row.get("history") if isinstance(row, dict) else None
            if not isinstance(items, list) or not all(isinstance(i, (str, int)) for i in items):
                raise ServeError(f"--history_file '{path}' line {number} has no \"history\" list of item tokens: write "
                                 '{"user": name, "history": [item, ...]}')
            name, items = str(row.get("user", f"history{number}")), [str(i) for i in items]
        elif "\t" in line:
            name, _, rest = line.partition("\t")
            name, items = name.strip(), split_tokens(rest)
        else:
            name, items = f"history{number}", split_tokens(line)
        if not items:
            raise ServeError(f"--history_file '{path}' line {number} ('{name}') has no item: give at least one item token")
        histories.append((name or f"history{number}", items))
    if not histories:
        raise ServeError(f"--history_file '{path}' holds no history: write one history a line (name<TAB>item,item,...)")
    return histories


def _examples(tokens, n=3):
    return ", ".join(tokens[1 : n + 1])


def resolve_users(scorer, users, source="--users"):
    """Queries of dataset user tokens; every unknown user at once in one line."""
    known = {t: i for i, t in enumerate(scorer.user_tokens) if i > 0}
    unknown = [u for u in users if u not in known]
    dataset = scorer.config["dataset"]
    if unknown:
        raise ServeError(
            f"{source}: {len(unknown)} user(s) not in dataset {dataset} ({', '.join(map(repr, unknown[:5]))}); its users are "
            f"tokens of its .inter file, e.g. {_examples(scorer.user_tokens)}: pass one of them, or give the items with --history"
        )
    queries = []
    missing = []
    for user in users:
        uid = known[user]
        if uid not in scorer.row_of_user:
            missing.append(user)
        queries.append(Query(user, user_id=uid))
    if missing:
        raise ServeError(
            f"{source}: user(s) {', '.join(map(repr, missing[:5]))} of {dataset} have no test row (every interaction of "
            "theirs was filtered or held out): give their items with --history"
        )
    return queries


def resolve_histories(scorer, histories, source="--history", new_tokens=()):
    """Queries of (name, item tokens) histories; every unknown item at once in one line."""
    new_tokens = set(new_tokens)
    queries, unknown, new = [], [], []
    for name, items in histories:
        ids = []
        for token in items:
            if token in scorer.item_ids:
                ids.append(scorer.item_ids[token])
            elif token in new_tokens:
                new.append((name, token))
            else:
                unknown.append((name, token))
        queries.append(Query(name, items=ids))
    empty = [name for name, items in histories if not items]
    if empty:
        raise ServeError(f"{source}: history '{empty[0]}' is empty: give the items of a history, oldest first, e.g. i1,i2,i3")
    dataset = scorer.config["dataset"]
    if new:
        raise ServeError(
            f"{source}: item '{new[0][1]}' of history '{new[0][0]}' is one of --new_items: a history holds only items the model "
            "knows (new items are candidates, not inputs); leave it out"
        )
    if unknown:
        shown = ", ".join(f"'{t}' (history '{n}')" for n, t in unknown[:5])
        raise ServeError(
            f"{source}: {len(unknown)} item(s) not in dataset {dataset}: {shown}; items are tokens of its .item / .inter "
            f"files, e.g. {_examples(scorer.item_tokens)}"
        )
    return queries
