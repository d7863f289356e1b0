"""A user's own atomic files without a dataset YAML, and what RecBole drops from them without a word.

:func:`no_yaml_defaults`: when neither the plugin nor RecBole has ``properties/dataset/<name>.yaml``, the config
loads every column of ``<name>.inter`` and ``<name>.item`` (RecBole's default reads only the user and item ids,
so every sequential model stopped at ``[timestamp] is not exist in interaction``), and FDSA / S3Rec get their
item attributes from the ``token_seq`` columns of ``.item`` (``selected_features``, ``item_attribute``). Keys the
user sets win. LLM prompts already take every ``.item`` column when ``text_fields`` is not set.

:class:`AtomicFilesMixin`: RecBole's ``filter_inter_by_user_or_item`` (on by default) drops the
interactions whose item is missing from a loaded ``.item`` file; the plugin's datasets warn with the count
and the share of interactions dropped, and how to keep them. Before RecBole reads a file, one line naming it (and
the line) refuses: a file that is not UTF-8, a byte-order mark, a header cell that is not ``<name>:<type>`` or a
name given twice, a row with another number of fields than the header (a tab or line break inside a value); after,
a NaN / inf / empty time and an id listed twice in ``.item`` / ``.user``. Exact duplicate lines of ``.inter`` are
dropped, kept or refused (``duplicate_interactions``), counted in a warning (docs/data.md).
"""

import codecs
import os
from logging import getLogger

from recbole_llm.errors import ConfigError, DataFileError


BOM = b"\xef\xbb\xbf"


def atomic_header(path):
    """[(name, type), ...] of an atomic file's header line; None when the file does not exist. A byte-order mark,
    a cell that is not ``<name>:<type>`` or a name given twice is one line naming the file and the fix."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        raw = handle.readline()
    if raw.startswith(BOM):  # Excel's "UTF-8" adds one; RecBole would read it as part of the first column's name
        raise DataFileError(
            f"atomic file '{path}' starts with a UTF-8 byte-order mark (BOM): save it as UTF-8 without BOM "
            f"(e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' '{path}')"
        )
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
        if name in [n for n, _ in columns]:
            raise DataFileError(f"atomic file '{path}' names column '{name}' twice on line 1 (the header): rename or drop one of them")
        columns.append((name, kind))
    return columns


def check_field_counts(path, encoding="utf-8", separator="\t"):
    """Raise DataFileError naming the first row whose number of tab-separated fields is not the header's: a tab or a
    line break inside a value (atomic files have no quoting). Blank lines are skipped, as pandas does."""
    sep = separator.encode(encoding)
    with open(path, "rb") as handle:
        fields = handle.readline().count(sep) + 1
        for number, raw in enumerate(handle, 2):
            line = raw.rstrip(b"\r\n")
            count = line.count(sep) + 1
            if line and count != fields:
                text = line.decode(encoding, errors="replace")
                raise DataFileError(
                    f"atomic file '{path}' line {number} has {count} tab-separated fields, the header has "
                    f"{fields} ({text[:60]!r}): a tab or a line break inside a value? replace them with spaces (one row per line)"
                )


def _data_rows(handle):
    """(line number, line without its end) of every non-blank data line of an open atomic file (header skipped)."""
    handle.readline()
    for number, raw in enumerate(handle, 2):
        line = raw.rstrip(b"\r\n")
        if line:
            yield number, line


def data_lines(path, rows):
    """File line numbers (1 = header) of the data rows at positions ``rows`` (0 = the first row, blank lines skipped)."""
    wanted = set(int(r) for r in rows)
    found = {}
    with open(path, "rb") as handle:
        for position, (number, _) in enumerate(_data_rows(handle)):
            if position in wanted:
                found[position] = number
                if len(found) == len(wanted):
                    break
    return [found.get(int(r)) for r in rows]


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


DUPLICATE_MODES = ("keep", "drop", "error")


def check_time_values(frame, path, time_field):
    """A NaN, inf or empty time (RecBole fills the mean, and the rows of that user reorder) is refused by line."""
    import numpy as np

    if time_field is None or time_field not in frame:
        return
    values = frame[time_field].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(bad.argmax())
        line = data_lines(path, [row])[0]
        raise DataFileError(
            f"atomic file '{path}' line {line} has {'no' if np.isnan(values[row]) else 'an infinite'} {time_field} "
            f"(rows without a finite {time_field}: {int(bad.sum())}): every interaction needs one; fix or remove those rows"
        )


def duplicate_lines(path):
    """(data-row positions of the lines that repeat an earlier line exactly, (line, earlier line) of the first one);
    positions count rows as pandas does (0 = the first row, blank lines skipped). 8 bytes a line: hashes first, then
    only the lines whose hash repeats are compared as bytes."""
    import array

    import numpy as np

    hashes = array.array("q")
    with open(path, "rb") as handle:
        for _, line in _data_rows(handle):
            hashes.append(hash(line))
    values, counts = np.unique(np.frombuffer(hashes, dtype=np.int64), return_counts=True)
    candidates = set(values[counts > 1].tolist())
    seen, repeats, example = {}, [], None
    if candidates:
        with open(path, "rb") as handle:
            for position, (number, line) in enumerate(_data_rows(handle)):
                if hashes[position] in candidates:
                    earlier = seen.setdefault(line, number)
                    if earlier != number:
                        repeats.append(position)
                        example = example or (number, earlier)
    return repeats, example


def duplicate_rows(frame, path, mode, repeats, example):
    """``frame`` without the rows at ``repeats`` (:func:`duplicate_lines`: exact copies of an earlier line) for
    ``drop``, with a warning that counts them; as it is for ``keep`` (warned as well); ``error`` refuses the file.
    Null keeps them too (checkpoints from before the key did)."""
    if mode is not None and mode not in DUPLICATE_MODES:
        raise ConfigError(f"config key 'duplicate_interactions' must be one of {list(DUPLICATE_MODES)}, got {mode!r}")
    if not repeats:
        return frame
    what = f"atomic file '{path}' has {len(repeats)} exact duplicate rows (line {example[0]} repeats line {example[1]})"
    if mode == "error":
        raise DataFileError(f"{what}: remove them, or set duplicate_interactions: drop (or keep)")
    if mode == "drop":
        getLogger().warning(f"{what}: dropped them (duplicate_interactions: drop; keep leaves them in)")
        return frame.drop(index=frame.index[repeats]).reset_index(drop=True)
    getLogger().warning(f"{what}: kept them as separate interactions (duplicate_interactions: keep; drop removes them)")
    return frame


def check_unique_ids(frame, path, field, column=None):
    """A user / item id listed twice in ``.user`` / ``.item`` (RecBole keeps the first silently) is refused by line
    (``column``: the frame's name of ``field`` when it is not ``field``)."""
    column = column or field
    if field is None or column not in frame:
        return
    ids = frame[column]
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        row = int(dup.argmax())
        first = int((ids.iloc[:row] == ids.iloc[row]).to_numpy().argmax())
        line, earlier = data_lines(path, [row, first])
        raise DataFileError(
            f"atomic file '{path}' lists {field} '{ids.iloc[row]}' twice (line {line}, first on line {earlier}; "
            f"ids repeated: {int(dup.sum())}): keep one row per {field}"
        )


class AtomicFilesMixin:
    """Put in front of a RecBole Dataset class: a bad file is one line naming it, the line and the fix; the
    interactions RecBole filters out are reported, not dropped silently."""

    def _load_feat(self, filepath, source):
        if os.path.isfile(filepath):
            encoding = self.config["encoding"] or "utf-8"
            check_encoding(filepath, encoding)
            atomic_header(filepath)
            check_field_counts(filepath, encoding, self.config["field_separator"] or "\t")
        from recbole.utils import FeatureSource

        inter = source == FeatureSource.INTERACTION and os.path.isfile(filepath)
        repeats, example = duplicate_lines(filepath) if inter else ([], None)
        frame = super()._load_feat(filepath, source)
        if frame is None:
            return frame
        if inter:
            check_time_values(frame, filepath, self.time_field)
            frame = duplicate_rows(frame, filepath, self.config["duplicate_interactions"], repeats, example)
        elif source in (FeatureSource.ITEM, FeatureSource.USER):
            check_unique_ids(frame, filepath, self.iid_field if source == FeatureSource.ITEM else self.uid_field)
        return frame

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
