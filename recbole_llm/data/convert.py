"""Convert public raw dumps (Amazon 2014/2018 reviews + metadata, Yelp Open Dataset) into RecBole atomic files.

    python -m recbole_llm.data.convert amazon --reviews=reviews_Beauty.json.gz --meta=meta_Beauty.json.gz \\
        --name=beauty [--out=dataset_atomic] [--kcore=5] [--dedup] [--keep_time] [--no_description]
    python -m recbole_llm.data.convert yelp --reviews=review.json --business=business.json \\
        --name=yelp [--out=dataset_atomic] [--kcore=5] [--dedup] [--keep_time]

Writes ``<out>/<name>/<name>.inter`` (``user_id:token  item_id:token  timestamp:float``) and
``<out>/<name>/<name>.item`` (``item_id:token  title:token  brand:token  categories:token_seq
[description:token]``), the format of ``../shared/datasets/README.md``:

- rows of one user are in chronological order (stable sort by time, so ties keep the input order);
  ``timestamp`` is the position in that user's sequence (0, 1, 2, ...), or the raw unix time with
  ``--keep_time``;
- ``--dedup`` keeps only the first (earliest) interaction of each (user, item) pair;
- ``--kcore=K`` keeps users and items with >= K interactions, repeated until nothing changes (after
  ``--dedup`` when both are given);
- the .item file lists exactly the items of the .inter file (an item without metadata gets empty fields);
  text fields are HTML-stripped, unescaped, whitespace-collapsed (no tabs or newlines); ``categories`` is
  space-separated with the inner spaces of each category replaced by ``_``, de-duplicated, in order;
- the description column is written when the metadata carries ``description`` for at least one kept item
  (Amazon 2018, some Amazon 2014 files) unless ``--no_description``; Yelp has none, and no brand.

Inputs may be plain or gzip-compressed JSON lines (detected from the file's first bytes). Amazon 2014
metadata lines are Python literals (``{'asin': ...}``): each line is parsed as JSON first, then with
``ast.literal_eval``. Every output file is written to a temporary file in its folder, then renamed.
"""

import argparse
import ast
import gzip
import html
import json
import os
import re
import sys
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from recbole_llm.errors import UserError
from recbole_llm.fileio import atomic_open

INTER_HEADER = ["user_id:token", "item_id:token", "timestamp:float"]
ITEM_HEADER = ["item_id:token", "title:token", "brand:token", "categories:token_seq"]
DESCRIPTION_HEADER = "description:token"

_TAG = re.compile(r"</?[A-Za-z!][^<>]*>")  # HTML tags and comments, not a bare "a < b"


class ConvertError(UserError, ValueError):
    """A raw input that cannot be converted; the message names the file (and line, field)."""


# --------------------------------------------------------------------------------------------------
# reading


def _open_text(path, what):
    if not os.path.isfile(path):
        raise ConvertError(f"{what} file not found: {path}")
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def iter_records(path, what, literal_fallback=False):
    """Yield ``(line_number, dict)`` for every non-blank line of a JSON-lines file (plain or gzip)."""
    with _open_text(path, what) as handle:
        lineno = 0
        while True:
            try:
                line = handle.readline()
            except (OSError, EOFError, UnicodeDecodeError) as err:
                raise ConvertError(f"{path}:{lineno + 1}: cannot read {what} file ({err})") from err
            if not line:
                return
            lineno += 1
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                record = None
                error = err
                if literal_fallback:
                    try:
                        record = ast.literal_eval(line)
                    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err2:
                        error = err2
                if record is None:
                    raise ConvertError(
                        f"{path}:{lineno}: malformed line in {what} file ({error.__class__.__name__}: {error}): "
                        f"{_preview(line)}"
                    ) from error
            if not isinstance(record, dict):
                raise ConvertError(
                    f"{path}:{lineno}: malformed line in {what} file (expected an object, got "
                    f"{type(record).__name__}): {_preview(line)}"
                )
            yield lineno, record


def _preview(line, width=80):
    return line if len(line) <= width else line[:width] + "..."


def _require(record, field, path, lineno, what):
    value = record.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConvertError(f"{path}:{lineno}: {what} line is missing field '{field}'")
    return value


def _token(value):
    """An id as a RecBole token: no whitespace inside."""
    return "_".join(str(value).split())


def _amazon_time(value, path, lineno):
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            raise ConvertError(
                f"{path}:{lineno}: field 'unixReviewTime' is not a unix time: {value!r}"
            ) from None


def _yelp_time(value, path, lineno):
    text = str(value).strip()
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return int(datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp())
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConvertError(
            f"{path}:{lineno}: field 'date' is not a date like '2016-03-09 00:00:00': {value!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def read_amazon_reviews(path):
    """DataFrame (user, item, time) of an Amazon 2014/2018 review dump, in file order."""
    return _read_reviews(path, ("reviewerID", "asin", "unixReviewTime"), _amazon_time)


def read_yelp_reviews(path):
    """DataFrame (user, item, time) of a Yelp review dump, in file order."""
    return _read_reviews(path, ("user_id", "business_id", "date"), _yelp_time)


def _read_reviews(path, fields, to_time):
    user_key, item_key, time_key = fields
    users, items, times = [], [], []
    for lineno, rec in iter_records(path, "reviews"):
        users.append(_token(_require(rec, user_key, path, lineno, "review")))
        items.append(_token(_require(rec, item_key, path, lineno, "review")))
        times.append(to_time(_require(rec, time_key, path, lineno, "review"), path, lineno))
    return _frame(users, items, times)


def _frame(users, items, times):
    return pd.DataFrame(
        {"user": pd.Series(users, dtype=object), "item": pd.Series(items, dtype=object),
         "time": np.asarray(times, dtype=np.int64)}
    )


# --------------------------------------------------------------------------------------------------
# text


def clean_text(value):
    """HTML-stripped, unescaped, whitespace-collapsed single-line string ('' for None)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(t for t in (clean_text(v) for v in value) if t)
    text = str(value)
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = _TAG.sub(" ", text)  # tags that were entity-escaped in the source
    return " ".join(text.split())


def _flatten(value):
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


def format_categories(values):
    """Space-separated categories, inner spaces replaced by '_', de-duplicated, order kept."""
    seen, out = set(), []
    for value in _flatten(values):
        name = clean_text(value).replace(" ", "_")
        if name and name not in seen:
            seen.add(name)
            out.append(name)
    return " ".join(out)


def amazon_item_row(rec):
    """(title, brand, categories, description or None) of one Amazon 2014/2018 metadata record."""
    cats = rec.get("categories")
    if cats is None:
        cats = rec.get("category")
    description = clean_text(rec["description"]) if "description" in rec else None
    return clean_text(rec.get("title")), clean_text(rec.get("brand")), format_categories(cats), description


def yelp_item_row(rec):
    cats = rec.get("categories")
    if isinstance(cats, str):
        cats = cats.split(",")
    return clean_text(rec.get("name")), "", format_categories(cats), None


def read_item_meta(path, what, id_field, row_fn, wanted, literal_fallback):
    """{item: row} for the items in ``wanted`` (first record of an item wins)."""
    meta = {}
    for lineno, rec in iter_records(path, what, literal_fallback=literal_fallback):
        item = _token(_require(rec, id_field, path, lineno, what))
        if item in wanted and item not in meta:
            meta[item] = row_fn(rec)
    return meta


# --------------------------------------------------------------------------------------------------
# processing


def order_and_filter(df, kcore=0, dedup=False):
    """Group by user (first appearance), chronological within user (stable), dedup, k-core."""
    n = len(df)
    user_code = pd.factorize(df["user"])[0]
    order = np.lexsort((np.arange(n), df["time"].to_numpy(), user_code))
    df = df.iloc[order].reset_index(drop=True)
    if dedup:
        df = df[~df.duplicated(subset=["user", "item"], keep="first")].reset_index(drop=True)
    if kcore and kcore > 1:
        while True:
            user_counts = df["user"].map(df["user"].value_counts())
            item_counts = df["item"].map(df["item"].value_counts())
            keep = (user_counts >= kcore) & (item_counts >= kcore)
            if keep.all():
                break
            df = df[keep.to_numpy()].reset_index(drop=True)
    return df


def _atomic_write_lines(path, header, rows):
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\t".join(header) + "\n")
        for row in rows:
            handle.write("\t".join(row) + "\n")


def write_atomic(df, meta, out, name, keep_time=False, description=True):
    """Write ``<out>/<name>/<name>.inter`` and ``.item``; returns a summary dict."""
    folder = os.path.join(out, name)
    inter_path = os.path.join(folder, f"{name}.inter")
    item_path = os.path.join(folder, f"{name}.item")
    if keep_time:
        stamps = df["time"].astype(str).to_numpy()
    else:
        stamps = df.groupby("user", sort=False).cumcount().astype(str).to_numpy()
    users, items = df["user"].to_numpy(), df["item"].to_numpy()
    _atomic_write_lines(inter_path, INTER_HEADER, zip(users, items, stamps))

    item_ids = list(dict.fromkeys(items))  # order of first appearance in the .inter file
    empty = ("", "", "", None)
    has_description = description and any(meta.get(i, empty)[3] is not None for i in item_ids)
    header = ITEM_HEADER + ([DESCRIPTION_HEADER] if has_description else [])

    def item_rows():
        for item in item_ids:
            title, brand, cats, desc = meta.get(item, empty)
            row = [item, title, brand, cats]
            if has_description:
                row.append(desc or "")
            yield row

    _atomic_write_lines(item_path, header, item_rows())
    return {
        "users": int(df["user"].nunique()),
        "items": len(item_ids),
        "interactions": int(len(df)),
        "items_without_metadata": sum(1 for i in item_ids if i not in meta),
        "description": bool(has_description),
        "inter_path": inter_path,
        "item_path": item_path,
    }


def _check_inputs(*pairs):
    for what, path in pairs:
        if not os.path.isfile(path):
            raise ConvertError(f"{what} file not found: {path}")


def _convert(reviews_df, meta_reader, out, name, kcore, dedup, keep_time, description):
    df = order_and_filter(reviews_df, kcore=kcore, dedup=dedup)
    if len(df) == 0:
        raise ConvertError(
            f"no interactions left for '{name}'" + (f" after {kcore}-core filtering" if kcore and kcore > 1 else "")
        )
    meta = meta_reader(set(df["item"].unique()))
    summary = write_atomic(df, meta, out, name, keep_time=keep_time, description=description)
    summary["raw_interactions"] = int(len(reviews_df))
    return summary


def convert_amazon(reviews, meta, name, out="dataset_atomic", kcore=0, dedup=False, keep_time=False, description=True):
    """Amazon 2014/2018 review + metadata dumps -> atomic files; returns the summary dict."""
    _check_inputs(("reviews", reviews), ("metadata", meta))
    return _convert(
        read_amazon_reviews(reviews),
        lambda wanted: read_item_meta(meta, "metadata", "asin", amazon_item_row, wanted, literal_fallback=True),
        out, name, kcore, dedup, keep_time, description,
    )


def convert_yelp(reviews, business, name, out="dataset_atomic", kcore=0, dedup=False, keep_time=False):
    """Yelp Open Dataset review + business dumps -> atomic files; returns the summary dict."""
    _check_inputs(("reviews", reviews), ("business", business))
    return _convert(
        read_yelp_reviews(reviews),
        lambda wanted: read_item_meta(business, "business", "business_id", yelp_item_row, wanted, literal_fallback=False),
        out, name, kcore, dedup, keep_time, False,
    )


# --------------------------------------------------------------------------------------------------
# command line


def _common(parser):
    parser.add_argument("--name", required=True, help="dataset name: writes <out>/<name>/<name>.inter/.item")
    parser.add_argument("--out", default="dataset_atomic", help="output folder (default: dataset_atomic)")
    parser.add_argument("--kcore", type=int, default=0, help="keep users and items with >= K interactions, iterated")
    parser.add_argument("--dedup", action="store_true", help="keep only the first interaction of a (user, item) pair")
    parser.add_argument("--keep_time", action="store_true", help="timestamp = raw unix time, not the position")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m recbole_llm.data.convert", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="source", required=True)
    amazon = sub.add_parser("amazon", help="Amazon 2014/2018 reviews + metadata (JSON lines, plain or .gz)")
    amazon.add_argument("--reviews", required=True, help="reviews_<Cat>.json[.gz] or <Cat>.json[.gz]")
    amazon.add_argument("--meta", required=True, help="meta_<Cat>.json[.gz]")
    amazon.add_argument("--no_description", action="store_true", help="never write a description column")
    _common(amazon)
    yelp = sub.add_parser("yelp", help="Yelp Open Dataset review + business JSON lines")
    yelp.add_argument("--reviews", required=True, help="yelp_academic_dataset_review.json")
    yelp.add_argument("--business", required=True, help="yelp_academic_dataset_business.json")
    _common(yelp)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.kcore < 0:
        print("error: --kcore must be >= 0", file=sys.stderr)
        return 2
    try:
        if args.source == "amazon":
            summary = convert_amazon(args.reviews, args.meta, args.name, args.out, args.kcore, args.dedup,
                                     args.keep_time, description=not args.no_description)
        else:
            summary = convert_yelp(args.reviews, args.business, args.name, args.out, args.kcore, args.dedup,
                                   args.keep_time)
    except (ConvertError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.name}: {summary['users']} users, {summary['items']} items, {summary['interactions']} interactions "
        f"(from {summary['raw_interactions']} raw reviews; {summary['items_without_metadata']} items without metadata)"
    )
    print(f"wrote {summary['inter_path']}")
    print(f"wrote {summary['item_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
