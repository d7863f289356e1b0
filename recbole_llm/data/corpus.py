"""A pre-training corpus: several datasets joined into one atomic dataset, kept apart by dataset.

``pretrain_datasets: [beauty, yelp, ml-100k]`` (LEARN, UniSRec; recbole_llm/model/pretrained.py) builds
``corpus-<key>/corpus-<key>.inter`` / ``.item`` / ``.json`` once, from each source's own atomic files (found as a
``--dataset`` would be: ``<data_path>/<name>/``, ``dataset_atomic/<name>/``, ml-100k inside the recbole wheel):

- every user and item token becomes ``<dataset>|<token>``: two datasets' user ``1`` or item ``1`` stay two users and
  two items (a user never spans datasets, an item is never shared);
- the interactions keep their order (``timestamp`` per source: ml-100k's clock, the shared datasets' positions);
  other columns (ratings) are dropped;
- item text is mapped to one set of fields, ``title``, ``brand``, ``categories``, ``description`` (ml-100k:
  ``movie_title`` + ``release_year`` -> title ``Toy Story (1995)``, ``class`` -> categories), so that one prompt
  template and one LLM embed every item: the corpus's items, and a target dataset's with the same fields
  (scientific, beauty, yelp), live in one feature space. A field a source lacks is empty (left out of the prompt).

The artifact (:class:`Corpus`, recbole_llm/artifacts.py) is keyed by the sources' names and the content of their
files: a changed source builds a new corpus under a new name. Its ``.json`` (written last, the completion mark)
records the key, the sources and their fingerprints, and the counts per dataset; a load checks the two data files
against it.
"""

import json
import os

from recbole_llm.artifacts import Artifact, BrokenArtifact, keyed_name
from recbole_llm.errors import ConfigError, DataFileError
from recbole_llm.fileio import atomic_open, atomic_write_text, file_fingerprint

SEPARATOR = "|"  # <dataset>|<token>
FORMAT = 1
FIELDS = (("title", "token"), ("brand", "token"), ("categories", "token_seq"), ("description", "token"))
TEXT_FIELDS = [name for name, _ in FIELDS]
# where each corpus field is read from, first match wins (the shared datasets' names, then ml-100k's)
FIELD_SOURCES = {
    "title": ("title", "movie_title", "name"),
    "brand": ("brand",),
    "categories": ("categories", "class", "genre", "genres"),
    "description": ("description",),
}
YEAR_FIELDS = ("release_year", "year")  # appended to a title that lacks it: "Toy Story (1995)"
INTER_COLUMNS = ("user_id", "item_id", "timestamp")


def corpus_token(dataset, token):
    return f"{dataset}{SEPARATOR}{token}"


def split_token(token):
    """(dataset, token) of a corpus token."""
    dataset, _, inner = str(token).partition(SEPARATOR)
    return dataset, inner


def source_names(value, key="pretrain_datasets"):
    """The list of dataset names of ``pretrain_datasets`` (a list, or a comma-separated string from the command line)."""
    if value in (None, "", []):
        return []
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names if str(n).strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"config key '{key}' names {', '.join(repeated)} twice: list each source dataset once")
    bad = [n for n in names if SEPARATOR in n or os.sep in n]
    if bad:
        raise ConfigError(f"config key '{key}': '{bad[0]}' is not a dataset name (no '{SEPARATOR}' or '{os.sep}'): name the dataset folder")
    return names


def source_roots(config):
    """The folders the sources are looked for in: the ``data_path`` the user gave (the target may live elsewhere:
    ml-100k resolves to the copy inside the recbole wheel), then the one holding the target's folder."""
    given = (getattr(config, "external_config_dict", None) or {}).get("data_path")
    roots = [os.path.abspath(given)] if given else []
    if config["data_path"]:
        roots.append(os.path.dirname(os.path.abspath(config["data_path"])))
    return list(dict.fromkeys(roots)) or [None]


def source_dirs(names, roots):
    """{name: folder holding <name>.inter} for every source, the first root that has it (one line for one that
    none has)."""
    from recbole_llm.config import resolve_dataset_dir
    from recbole_llm.errors import UserError

    roots = [roots] if roots is None or isinstance(roots, str) else list(roots)
    found = {}
    for name in names:
        for number, root in enumerate(roots):
            try:
                found[name] = resolve_dataset_dir(name, root)
                break
            except UserError:
                if number == len(roots) - 1:
                    raise
    return found


def _rows(path):
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        names = [cell.partition(":")[0] for cell in header]
        for number, line in enumerate(handle, 2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cells = line.split("\t")
            if len(cells) != len(names):
                raise DataFileError(f"atomic file '{path}' line {number} has {len(cells)} fields, the header {len(names)}: fix the row")
            yield dict(zip(names, cells))


def _item_fields(path):
    """{corpus field: source column} for one .item file."""
    from recbole_llm.data.atomic import atomic_header

    columns = [name for name, _ in (atomic_header(path) or [])]
    found = {}
    for field, candidates in FIELD_SOURCES.items():
        for name in candidates:
            if name in columns:
                found[field] = name
                break
    year = next((name for name in YEAR_FIELDS if name in columns), None)
    return found, year


def _clean(value):
    return " ".join(str(value).replace("\t", " ").split())


def write_corpus(sources, folder, name):
    """Write ``<folder>/<name>.inter`` and ``.item`` from ``sources`` ({dataset: folder}); returns the counts per
    dataset. Each file is written to a temp file and renamed."""
    from recbole_llm.data.atomic import atomic_header

    counts = {}
    inter_path, item_path = (os.path.join(folder, f"{name}.{suffix}") for suffix in ("inter", "item"))
    with atomic_open(inter_path, "w", encoding="utf-8") as out:
        out.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for dataset, where in sources.items():
            path = os.path.join(where, f"{dataset}.inter")
            header = [n for n, _ in atomic_header(path) or []]
            missing = [c for c in INTER_COLUMNS if c not in header]
            if missing:
                raise DataFileError(
                    f"pre-training source '{path}' has no {', '.join(missing)} column: a corpus joins user_id, item_id "
                    "and timestamp of every source; rename its columns or leave the dataset out of pretrain_datasets"
                )
            users, items, n = set(), set(), 0
            for row in _rows(path):
                user, item = corpus_token(dataset, row["user_id"]), corpus_token(dataset, row["item_id"])
                out.write(f"{user}\t{item}\t{row['timestamp']}\n")
                users.add(user)
                items.add(item)
                n += 1
            counts[dataset] = {"users": len(users), "items": len(items), "interactions": n}
    with atomic_open(item_path, "w", encoding="utf-8") as out:
        out.write("item_id:token\t" + "\t".join(f"{f}:{kind}" for f, kind in FIELDS) + "\n")
        for dataset, where in sources.items():
            path = os.path.join(where, f"{dataset}.item")
            if not os.path.isfile(path):  # items without text: the prompt falls back to the item id
                continue
            columns, year = _item_fields(path)
            for row in _rows(path):
                values = {f: _clean(row.get(c, "")) for f, c in columns.items()}
                title = values.get("title", "")
                if year and row.get(year) and row[year] not in title:
                    values["title"] = f"{title} ({row[year]})" if title else row[year]
                out.write(corpus_token(dataset, row["item_id"]) + "\t" + "\t".join(values.get(f, "") for f in TEXT_FIELDS) + "\n")
    return counts


def corpus_root(config):
    """The folder corpora are written to: ``feature_dir`` when set, else beside the target's feature folder."""
    from recbole_llm.llm.features import feature_dirs
    from recbole_llm.schema import setting

    if setting(config, "feature_dir"):
        return os.path.abspath(setting(config, "feature_dir"))
    return os.path.dirname(feature_dirs(config)[0])


class Corpus(Artifact):
    """The corpus of ``pretrain_datasets`` (module docstring): ``<root>/corpus-<key>/corpus-<key>.json`` marks it."""

    what = "pre-training corpus"
    reuse_line = "pre-training corpus: reusing {path}"
    unkeyed = ("data_path", "feature_dir")  # where the sources are found and the corpus goes: the files are keyed by content

    def __init__(self, names):
        self.names = list(names)

    def sources(self, config):
        return source_dirs(self.names, source_roots(config))

    def settings(self, config):
        stamps = []
        for name, where in self.sources(config).items():
            stamps.append([name] + [file_fingerprint(os.path.join(where, f"{name}.{s}")) for s in ("inter", "item")])
        return {"sources": stamps, "fields": list(FIELDS), "format": FORMAT}

    @staticmethod
    def name(key):
        return keyed_name("corpus", key)

    def path(self, config, settings, key):
        name = self.name(key)
        return os.path.join(corpus_root(config), name, f"{name}.json")

    def files(self, path):
        stem = path[: -len(".json")]
        return [f"{stem}.inter", f"{stem}.item", path]

    def validate(self, path):
        try:
            with open(path, encoding="utf-8") as handle:
                meta = json.load(handle)
        except (OSError, ValueError) as err:
            raise BrokenArtifact(f"its .json cannot be read ({err})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
            raise BrokenArtifact("its .json records no files")
        for data in self.files(path)[:2]:
            if file_fingerprint(data) != meta["files"].get(os.path.basename(data)):
                raise BrokenArtifact(f"{os.path.basename(data)} is missing or not the file its .json records")
        return meta.get("cache_key")

    def build(self, config, settings, key, path):
        folder, name = os.path.dirname(path), self.name(key)
        os.makedirs(folder, exist_ok=True)
        print(f"pre-training corpus: joining {', '.join(self.names)} -> {folder}")
        counts = write_corpus(self.sources(config), folder, name)
        files = {os.path.basename(f): file_fingerprint(f) for f in self.files(path)[:2]}
        meta = {"cache_key": key, "datasets": counts, "sources": settings["sources"], "files": files, "format": FORMAT}
        atomic_write_text(path, json.dumps(meta, indent=1) + "\n")


def ensure_corpus(config, names):
    """(dataset name, folder holding it, counts per source) of the corpus of ``names``, built when missing."""
    ensured = Corpus(names).ensure(config)
    with open(ensured.path, encoding="utf-8") as handle:
        meta = json.load(handle)
    return Corpus.name(ensured.key), os.path.dirname(ensured.path), meta["datasets"]
