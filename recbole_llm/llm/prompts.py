"""Item prompts from the text fields of a RecBole ``.item`` file.

LLMEmb form:  ``"<instruction> \\n " + "; ".join(f"{attr} is {value}")`` (values truncated).
LEARN form:   ``"Title: {title}. Brand: {brand}. Category: {categories}"`` (the public Amazon code),
              generalised to ``"<Attr>: <value>."`` for every non-empty field.

Fields come from the dataset YAML: ``text_fields`` (order), ``text_field_names`` (display names),
``text_list_fields`` (token_seq fields that are lists of names, joined with ", "; ``_`` -> space).
An item with no text at all gets ``item id is <token>`` and is reported, never a crash.
"""

import hashlib
import logging
import os

import pandas as pd

from recbole_llm.errors import DataFileError, MissingFileError

logger = logging.getLogger(__name__)

DEFAULT_LIST_FIELDS = ("categories", "class", "genres", "tags")
DEFAULT_MAX_VALUE_LEN = 100


class ItemText:
    """Text attributes of every item of one ``.item`` file.

    ``attributes[token]`` is the ordered list of ``(display_name, value)`` pairs with non-empty values.
    """

    def __init__(self, tokens, attributes, path):
        self.tokens = tokens
        self.attributes = attributes
        self.path = path

    def __len__(self):
        return len(self.tokens)

    def empty_items(self):
        return [t for t in self.tokens if not self.attributes.get(t)]


def item_file(dataset_dir, dataset):
    return os.path.join(dataset_dir, f"{dataset}.item")


def _column_map(columns):
    """{field name: (column, type)} from RecBole's ``name:type`` headers."""
    result = {}
    for col in columns:
        name, _, ftype = col.partition(":")
        result[name] = (col, ftype or "token")
    return result


def read_item_text(dataset_dir, dataset, text_fields=None, field_names=None, list_fields=None, item_field="item_id"):
    """Read the text fields of ``<dataset_dir>/<dataset>.item`` into an :class:`ItemText`."""
    path = item_file(dataset_dir, dataset)
    if not os.path.isfile(path):
        raise MissingFileError(
            f"item text file '{path}' not found: LLM features need <dataset>.item with text columns "
            f"(e.g. title:token) next to {dataset}.inter"
        )
    from recbole_llm.data.atomic import atomic_header, check_encoding, check_field_counts, check_unique_ids

    check_encoding(path)
    atomic_header(path)  # a byte-order mark, a header cell that is not name:type, a column named twice
    check_field_counts(path)  # a tab or a line break inside a title (pandas: ParserError, or a row cut in two)
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8")
    columns = _column_map(frame.columns)
    if item_field not in columns:
        raise DataFileError(f"'{path}' has no '{item_field}' column (columns: {list(columns)})")
    check_unique_ids(frame, path, item_field, columns[item_field][0])
    if text_fields is None:
        text_fields = [f for f in columns if f != item_field]
    missing = [f for f in text_fields if f not in columns]
    if missing:
        raise ValueError(
            f"text_fields {missing} are not columns of '{path}' (columns: {list(columns)}); "
            f"fix 'text_fields' in properties/dataset/{dataset}.yaml or your config"
        )
    field_names = dict(field_names or {})
    list_fields = set(DEFAULT_LIST_FIELDS if list_fields is None else list_fields)
    tokens = frame[columns[item_field][0]].tolist()
    attributes = {}
    value_columns = []
    for field in text_fields:
        col, ftype = columns[field]
        values = frame[col].str.strip()
        if ftype == "token_seq" and field in list_fields:
            values = values.map(lambda v: ", ".join(x.replace("_", " ") for x in v.split()))
        value_columns.append((field_names.get(field, field.replace("_", " ")), values.tolist()))
    for row, token in enumerate(tokens):
        attributes[token] = [(name, vals[row]) for name, vals in value_columns if vals[row]]
    return ItemText(tokens, attributes, path)


def truncate(value, max_len):
    return value if max_len is None or len(value) <= max_len else value[:max_len]


def llmemb_prompt(attributes, instruction, max_value_len=DEFAULT_MAX_VALUE_LEN):
    """The LLMEmb item prompt from ``(name, value)`` pairs (order kept, values truncated)."""
    body = "; ".join(f"{name} is {truncate(value, max_value_len)}" for name, value in attributes)
    return f"{instruction} \n {body}" if instruction else body


def learn_prompt(attributes, max_value_len=DEFAULT_MAX_VALUE_LEN):
    """The LEARN (public Amazon code) item prompt: ``Title: ... . Brand: ... . Category: ...``."""
    parts = []
    for name, value in attributes:
        label = "Category" if name in ("categories", "category") else name[:1].upper() + name[1:]
        parts.append(f"{label}: {truncate(value, max_value_len)}")
    return ". ".join(parts)


PROMPT_STYLES = ("llmemb", "learn")


def fallback_attributes(token):
    return [("item id", token)]


def build_prompts(item_text, style="llmemb", instruction="", max_value_len=DEFAULT_MAX_VALUE_LEN, tokens=None):
    """{token: prompt} for ``tokens`` (default: every item of the file).

    Items without any text (or absent from the ``.item`` file) get a prompt from their id and are
    reported in the log with a count and examples.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style '{style}': use one of {PROMPT_STYLES}")
    tokens = item_text.tokens if tokens is None else tokens
    prompts, empty = {}, []
    for token in tokens:
        attributes = item_text.attributes.get(token)
        if not attributes:
            empty.append(token)
            attributes = fallback_attributes(token)
        if style == "llmemb":
            prompts[token] = llmemb_prompt(attributes, instruction, max_value_len)
        else:
            prompts[token] = learn_prompt(attributes, max_value_len)
    if empty:
        logger.warning(
            f"{len(empty)} of {len(tokens)} items have no text in '{item_text.path}' "
            f"(e.g. {', '.join(map(str, empty[:5]))}): their prompt is built from the item id"
        )
    return prompts


def prompt_config(config):
    """The prompt-related keys of a RecBole Config (or dict), absent or null ones at their YAML defaults."""
    from recbole_llm.schema import setting

    return {
        "text_fields": setting(config, "text_fields"),
        "field_names": setting(config, "text_field_names"),
        "list_fields": setting(config, "text_list_fields"),
        "instruction": setting(config, "prompt_instruction"),
        "max_value_len": setting(config, "prompt_max_value_len"),
        "item_field": setting(config, "ITEM_ID_FIELD", "item_id"),
    }


def dataset_item_tokens(data_dir, dataset, item_text, item_field="item_id"):
    """Tokens of every item: the .item file's, plus items that only appear in the .inter file."""
    tokens = list(item_text.tokens)
    inter = os.path.join(data_dir, f"{dataset}.inter")
    if os.path.isfile(inter):
        header = pd.read_csv(inter, sep="\t", nrows=0, quoting=3).columns
        column = next((c for c in header if c.split(":")[0] == item_field), None)
        if column is not None:
            known = set(tokens)
            seen = pd.read_csv(inter, sep="\t", usecols=[column], dtype=str, quoting=3)[column].unique()
            tokens += [t for t in seen if t not in known]
    return tokens


def dataset_prompts(config, style):
    """(ItemText, every item token, {token: prompt in ``style``}) of ``config``'s dataset (a Config or a dict with
    ``dataset`` and ``data_path``): the one reader of item text for extraction and SCFT."""
    dataset, data_dir = config["dataset"], config["data_path"]
    cfg = prompt_config(config)
    item_text = read_item_text(data_dir, dataset, cfg["text_fields"], cfg["field_names"], cfg["list_fields"], cfg["item_field"])
    tokens = dataset_item_tokens(data_dir, dataset, item_text, cfg["item_field"])
    return item_text, tokens, build_prompts(item_text, style, cfg["instruction"], cfg["max_value_len"], tokens)


def prompt_hash(config, style):
    """:func:`template_hash` of ``config``'s prompt keys in ``style`` (part of every feature file's cache key): every
    key :func:`prompt_config` reads."""
    cfg = prompt_config(config)
    return template_hash(style, cfg["instruction"], cfg["max_value_len"], cfg["text_fields"], cfg["field_names"], cfg["list_fields"],
                         cfg["item_field"])


def template_hash(style, instruction, max_value_len, text_fields, field_names=None, list_fields=None, item_field="item_id"):
    """A short hash of everything that shapes the prompt text (feature-file cache key). The list fields and the item
    field join it when they are not the defaults, so that a file built with the defaults keeps the key it had."""
    parts = (style, instruction, max_value_len, list(text_fields or []), sorted((field_names or {}).items()))
    lists = sorted(set(DEFAULT_LIST_FIELDS if list_fields is None else list_fields))
    extra = {}
    if lists != sorted(DEFAULT_LIST_FIELDS):
        extra["list_fields"] = lists
    if (item_field or "item_id") != "item_id":
        extra["item_field"] = item_field
    key = repr(parts + (extra,) if extra else parts)
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
