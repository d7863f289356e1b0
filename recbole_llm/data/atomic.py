"""A user's own atomic files without a dataset YAML, and what RecBole drops from them without a word.

:func:`no_yaml_defaults`: when neither the plugin nor RecBole has ``properties/dataset/<name>.yaml``, the config
loads every column of ``<name>.inter`` and ``<name>.item`` (RecBole's default reads only the user and item ids,
so every sequential model stopped at ``[timestamp] is not exist in interaction``), and FDSA / S3Rec get their
item attributes from the ``token_seq`` columns of ``.item`` (``selected_features``, ``item_attribute``). Keys the
user sets win. LLM prompts already take every ``.item`` column when ``text_fields`` is not set.

:class:`AtomicFilesMixin`: RecBole's ``filter_inter_by_user_or_item`` (on by default) drops the
interactions whose item is missing from a loaded ``.item`` file; the plugin's datasets warn with the count
and the share of interactions dropped, and how to keep them.
"""

import codecs
import os
from logging import getLogger

from recbole_llm.errors import ConfigError, DataFileError


def atomic_header(path):
    """[(name, type), ...] of an atomic file's header line; None when the file does not exist."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        raw = handle.readline()
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise DataFileError(f"atomic file '{path}' is not UTF-8 text on line 1: save it as UTF-8") from None
    columns = []
    for cell in line.split("\t"):
        name, _, kind = cell.partition(":")
        if not name or kind not in ("token", "token_seq", "float", "float_seq"):
            raise DataFileError(
                f"atomic file '{path}' header cell '{cell}' is not <name>:<type> with type token, token_seq, float or "
                "float_seq: fix line 1 (tab-separated, e.g. user_id:token<TAB>item_id:token<TAB>timestamp:float)"
            )
        columns.append((name, kind))
    return columns


def check_encoding(path, encoding="utf-8", block=1 << 24):
    """Raise DataFileError naming the line when ``path`` is not ``encoding`` text (read in blocks, never whole)."""
    try:
        decoder = codecs.getincrementaldecoder(encoding)()
    except LookupError:
        raise ConfigError(f"config key 'encoding' is '{encoding}', not a codec Python knows: use e.g. utf-8") from None
    line = 1
    with open(path, "rb") as handle:
        while True:
            data = handle.read(block)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                line += data[: max(err.start, 0)].count(b"\n")
                raise DataFileError(
                    f"atomic file '{path}' is not {encoding} text on line {line}: save it as UTF-8 "
                    "(e.g. iconv -f latin1 -t utf-8), or set encoding in the config"
                ) from None
            if not data:
                return
            line += data.count(b"\n")


def has_dataset_yaml(dataset, plugin_props):
    import importlib

    recbole_props = os.path.join(os.path.dirname(importlib.import_module("recbole").__file__), "properties", "dataset")
    return any(os.path.isfile(os.path.join(folder, f"{dataset}.yaml")) for folder in (plugin_props, recbole_props))


def no_yaml_defaults(config, dataset, folder, external, sequential):
    """Config values for a dataset without YAML, from the headers of its files (only keys the user left unset)."""
    inter = atomic_header(os.path.join(folder, f"{dataset}.inter"))
    item = atomic_header(os.path.join(folder, f"{dataset}.item"))
    values = {}
    if inter is None:
        return values
    if "load_col" not in external and "unload_col" not in external:
        values["load_col"] = {"inter": [n for n, _ in inter]}
        if item is not None:
            values["load_col"]["item"] = [n for n, _ in item]
    time_field = external.get("TIME_FIELD", config["TIME_FIELD"])
    if sequential and time_field and time_field not in [n for n, _ in inter]:
        raise ConfigError(
            f"'{os.path.join(folder, dataset + '.inter')}' has no '{time_field}' column, and sequential models order "
            f"each user's interactions by it: add a {time_field}:float column, or set TIME_FIELD to the time column"
        )
    item_field = external.get("ITEM_ID_FIELD", config["ITEM_ID_FIELD"])
    attributes = [n for n, kind in (item or []) if kind == "token_seq" and n != item_field]
    if attributes:
        if "selected_features" not in external:
            values["selected_features"] = attributes
        if "item_attribute" not in external:
            values["item_attribute"] = attributes[0]
    elif "selected_features" not in external:
        values["selected_features"] = []  # FDSA / S3Rec then say which key to set (see check_item_attributes)
    return values


def check_item_attributes(config):
    """FDSA / S3Rec need item attributes loaded: a clear line instead of RecBole's KeyError."""
    model = config["model"]
    needs = {"FDSA": "selected_features", "S3Rec": "item_attribute"}
    key = needs.get(model)
    if key is None:
        return
    value = config[key]
    if not value:
        raise ConfigError(
            f"{model} needs item attributes: set {key} to token_seq column(s) of {config['dataset']}.item "
            f"(e.g. --{key}=\"['categories']\") and load them (load_col item)"
        )
    loaded = (config["load_col"] or {}).get("item") if config["load_col"] is not None else None
    wanted = [value] if isinstance(value, str) else list(value)
    if loaded is not None and any(v not in loaded for v in wanted):
        raise ConfigError(
            f"{model}: {key} {wanted} must be columns loaded from {config['dataset']}.item (load_col item: {loaded}); "
            f"add them to load_col or pick loaded columns"
        )


class AtomicFilesMixin:
    """Put in front of a RecBole Dataset class: a bad file is one line naming it, the line and the fix; the
    interactions RecBole filters out are reported, not dropped silently."""

    def _load_feat(self, filepath, source):
        if os.path.isfile(filepath):
            check_encoding(filepath, self.config["encoding"] or "utf-8")
            atomic_header(filepath)
        return super()._load_feat(filepath, source)

    def _filter_inter_by_user_or_item(self):
        before = len(self.inter_feat)
        super()._filter_inter_by_user_or_item()
        dropped = before - len(self.inter_feat)
        if dropped:
            what = [name for name, feat in (("user", self.user_feat), ("item", self.item_feat)) if feat is not None]
            getLogger().warning(
                f"{dropped} of {before} interactions ({100.0 * dropped / before:.1f}%) have a {' or '.join(what)} missing from "
                f"{self.dataset_name}.{'/.'.join(what)} and were dropped (filter_inter_by_user_or_item): add those rows to the "
                "file, or set filter_inter_by_user_or_item: False to keep them"
            )
