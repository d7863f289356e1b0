"""Titles of items, and the recommendations written as CSV or JSONL (atomically: a stop leaves no half-written file).

CSV: one row per recommended item, ``user,rank,item,score,title,new`` (``new``: 1 for an item of ``--new_items``).
JSONL: one line per user, ``{"user": ..., "items": [{"item", "score", "title", "new"}, ...]}``.
"""

import csv
import io
import json
import os

from recbole_llm.serve import ServeError

TITLE_FIELDS = ("title", "movie_title", "name")
FORMATS = (".csv", ".jsonl")


def _columns(path):
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    return [c.partition(":")[0] for c in header]


def title_field(item_path, requested=None, text_fields=None):
    """The .item column that names an item: ``requested``, else title / movie_title / name, else the first text field."""
    if not os.path.isfile(item_path):
        if requested:
            raise ServeError(f"--title_field '{requested}': the dataset has no .item file ('{item_path}') to read titles from; leave it out")
        return None
    columns = _columns(item_path)
    if requested:
        if requested not in columns:
            raise ServeError(f"--title_field '{requested}' is not a column of '{item_path}' (columns: {', '.join(columns)})")
        return requested
    for name in TITLE_FIELDS:
        if name in columns:
            return name
    fields = [f for f in (text_fields or columns[1:]) if f in columns]
    return fields[0] if fields else None


def read_titles(item_path, field, item_field="item_id"):
    """{token: title} from one column of an atomic .item file (missing file or column: {})."""
    if not field or not os.path.isfile(item_path):
        return {}
    from recbole_llm.llm.prompts import read_item_text

    if field not in _columns(item_path):  # a new-items file with the text columns but not the title's
        return {}
    folder, name = os.path.dirname(os.path.abspath(item_path)), os.path.basename(item_path)[: -len(".item")]
    try:
        text = read_item_text(folder, name, [field], {}, [], item_field)
    except (ValueError, KeyError) as err:
        raise ServeError(f"'{item_path}': its {field} column cannot be read ({str(err).splitlines()[0]}): fix the file, or pass "
                         "--title_field=ANOTHER_COLUMN") from None
    return {str(t): (attrs[0][1] if attrs else "") for t, attrs in text.attributes.items()}


def check_out(path, model_file=None):
    """Refuse, before any work, an ``--out`` that cannot be written: another format, a folder, a path under a file, the
    checkpoint itself."""
    if os.path.splitext(path)[1] not in FORMATS:
        raise ServeError(f"--out '{path}' must end in .csv or .jsonl (the format is chosen by the suffix)")
    if os.path.isdir(path):
        raise ServeError(f"--out '{path}' is a folder: pass a file name such as {os.path.join(path, 'recommendations.csv')}")
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ServeError(f"--out '{path}' lies under '{probe}', a file: pass a path in a folder")
    if model_file and os.path.exists(path) and os.path.samefile(path, model_file):
        raise ServeError(f"--out '{path}' is --model_file itself: pass another file name")


class Writer:
    """Streams recommendation rows into ``handle`` in the format of ``suffix`` (.csv, .jsonl)."""

    def __init__(self, handle, suffix):
        self.handle, self.suffix = handle, suffix
        if suffix == ".csv":
            self.csv = csv.writer(handle, lineterminator="\n")
            self.csv.writerow(["user", "rank", "item", "score", "title", "new"])

    def write(self, user, items):
        """``items``: [{"item", "score", "title", "new"}], best first."""
        if self.suffix == ".csv":
            for rank, row in enumerate(items, 1):
                self.csv.writerow([user, rank, row["item"], f"{row['score']:.6g}", row["title"], int(row["new"])])
        else:
            self.handle.write(json.dumps({"user": user, "items": items}, ensure_ascii=False) + "\n")


def format_table(results):
    """Plain text for the terminal: per user, its ranked items."""
    out = io.StringIO()
    for user, items in results:
        out.write(f"{user}\n")
        for rank, row in enumerate(items, 1):
            mark = " (new)" if row["new"] else ""
            out.write(f"  {rank:>3}. {row['item']}  {row['score']:.4f}  {row['title']}{mark}\n")
    return out.getvalue()
