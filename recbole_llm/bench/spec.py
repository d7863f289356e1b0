"""The suite file and what one run of it is: its config, its record's path, and the spec and inputs a record must
match to count for the suite (:func:`run_spec`, :func:`run_inputs`)."""

import hashlib
import json
import os
import subprocess

from recbole_llm.errors import ConfigError
from recbole_llm.fileio import file_fingerprint, read_yaml

SUITE_KEYS = {"datasets", "data_path", "seeds", "eval_modes", "budget", "config", "config_files", "rows", "models", "pairs",
              "metrics", "workers", "rerun_failed", "popularity_buckets", "out"}
DEFAULT_METRICS = ["ndcg@10", "ndcg_head@10", "ndcg_tail@10", "hit@10", "hit_head@10", "hit_tail@10"]
ATOMIC_SUFFIXES = (".inter", ".item", ".user", ".kg", ".link", ".net")  # what RecBole reads of a dataset folder
RUN_ONLY_KEYS = ("checkpoint_dir", "show_progress", "state")  # where and how loudly a run runs, not what it computes


def load_suite(path):
    """The suite of ``path`` with every default filled in; a bad file is one ConfigError naming the key."""
    suite = read_yaml(path, "suite file", "pass --suite=<file.yaml>")
    if not isinstance(suite, dict):
        raise ConfigError(f"suite file '{path}' must be a mapping of suite keys (known: {', '.join(sorted(SUITE_KEYS))})")
    return make_suite(suite, path)


def make_suite(suite, path, name=None):
    """The suite dict of ``suite`` (a suite file's mapping) with every default filled in; ``path`` names it in errors."""
    unknown = sorted(set(suite) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"suite file '{path}': unknown key '{unknown[0]}' (known: {', '.join(sorted(SUITE_KEYS))})")
    check_suite_types(path, suite)
    rows = {name: dict(keys or {}) for name, keys in (suite.get("rows") or {}).items()}
    for model in suite.get("models") or []:
        rows.setdefault(model, {"model": model})
    for row, keys in rows.items():
        if "model" not in keys:
            raise ConfigError(f"suite file '{path}': row '{row}' has no 'model' key (write {row}: {{model: <Model>, ...}})")
    if not rows or not suite.get("datasets"):
        raise ConfigError(f"suite file '{path}' needs 'datasets' and 'rows' (or 'models')")
    pairs = [tuple(p) for p in suite.get("pairs") or []]
    for pair in pairs:
        if len(pair) != 2 or any(row not in rows for row in pair):
            raise ConfigError(f"suite file '{path}': pair {list(pair)} must name two rows of {sorted(rows)}")
    modes = list(suite.get("eval_modes") or ["full"])
    if any(m not in ("full", "uni100") for m in modes):
        raise ConfigError(f"suite file '{path}': eval_modes must be full and/or uni100, got {modes}")
    for key in ("seeds", "datasets"):
        values = list(suite.get(key) or [])
        if len(set(values)) != len(values):
            repeated = next(v for v in values if values.count(v) > 1)
            raise ConfigError(f"suite file '{path}': key '{key}' names {repeated!r} twice; list each once "
                              "(a repeated seed would count one run as two)")
    out = os.path.abspath(suite.get("out") or os.path.join("benchmarks", "out", name or os.path.splitext(os.path.basename(path))[0]))
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"suite file '{path}': out '{out}' is a file, not a folder: name a folder for the suite's records")
    name = name or os.path.splitext(os.path.basename(path))[0]
    return {
        "name": name, "path": path, "datasets": list(suite["datasets"]), "data_path": suite.get("data_path"),
        "seeds": [int(s) for s in suite.get("seeds") or [2020]], "eval_modes": modes,
        "config": {**(suite.get("config") or {}), **(suite.get("budget") or {})}, "rows": rows, "pairs": pairs,
        "config_files": [os.path.abspath(f) for f in suite.get("config_files") or []],
        "metrics": list(suite.get("metrics") or DEFAULT_METRICS), "workers": int(suite.get("workers") or 1),
        "rerun_failed": suite.get("rerun_failed", True) is not False,
        "popularity_buckets": suite.get("popularity_buckets", True) is not False, "out": out, "header": None,
    }


_KINDS = {"datasets": (list, str, "a list of dataset names"), "seeds": (list, int, "a list of integers"),
          "eval_modes": (list, str, "a list of full / uni100"), "models": (list, str, "a list of model names"),
          "metrics": (list, str, "a list of metric names such as ndcg@10"), "pairs": (list, list, "a list of [row, row] pairs"),
          "rows": (dict, dict, "a mapping of row name to {model: ..., keys ...}"), "config": (dict, None, "a mapping of config keys"),
          "budget": (dict, None, "a mapping such as {epochs: 50}"), "workers": (int, None, "an integer >= 1"),
          "config_files": (list, str, "a list of YAML file paths")}


def check_suite_types(path, suite):
    """One ConfigError naming the key whose value has the wrong kind (``datasets: scientific`` instead of a list)."""
    for key, (container, item, what) in _KINDS.items():
        value = suite.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, container) or (
                item is not None and not all(isinstance(v, item) and not isinstance(v, bool) for v in (value.values() if container is dict else value))):
            raise ConfigError(f"suite file '{path}': key '{key}' must be {what}, got {value!r}")
    if suite.get("workers") is not None and suite["workers"] < 1:
        raise ConfigError(f"suite file '{path}': key 'workers' must be an integer >= 1, got {suite['workers']!r}")
    for key in ("rerun_failed", "popularity_buckets"):
        if suite.get(key) is not None and not isinstance(suite[key], bool):
            raise ConfigError(f"suite file '{path}': key '{key}' must be true or false, got {suite[key]!r}")


# ---- one run ----------------------------------------------------------------------------------------------------
def all_runs(suite):
    """(dataset, row, seed) of every run of the suite, in file order."""
    return [(dataset, row, seed) for dataset in suite["datasets"] for row in suite["rows"] for seed in suite["seeds"]]


def run_config(suite, dataset, row, seed):
    """(model, config dict) of one run: the suite's keys, the row's, the seed, validation in the first mode."""
    keys = dict(suite["rows"][row])
    model = keys.pop("model")
    config = {**suite["config"], **keys, "seed": seed, "show_progress": False, "state": "WARNING",
              "checkpoint_dir": os.path.join(suite["out"], "saved", dataset, row)}
    config["eval_args"] = {**(config.get("eval_args") or {}), "mode": suite["eval_modes"][0]}
    if suite["data_path"]:
        config["data_path"] = os.path.abspath(suite["data_path"])
    return model, config


def run_path(suite, dataset, row, seed):
    return os.path.join(suite["out"], "runs", dataset, row.replace("/", "_"), f"{seed}.json")


def run_spec(suite, dataset, row, seed):
    """What a finished record must have been run with to count for this suite: the model, its config, the modes, the
    config files (when there are any: the hash of a suite without them is what it was before the key existed). The
    content of those files and of the dataset is :func:`run_inputs`, checked beside it."""
    model, config = run_config(suite, dataset, row, seed)
    config = {k: v for k, v in config.items() if k not in RUN_ONLY_KEYS}
    payload = [model, config, suite["eval_modes"]] + ([suite["config_files"]] if suite.get("config_files") else [])
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataset_files(dataset, data_path):
    """{file name: [size, sha1 prefix]} of the atomic files RecBole reads for ``dataset`` (from the folder the
    plugin's Config resolves); {} when the dataset cannot be found here (nothing to compare then)."""
    from recbole_llm.config import resolve_dataset_dir
    from recbole_llm.errors import UserError

    try:
        folder = resolve_dataset_dir(dataset, data_path)
    except UserError:
        return {}
    names = sorted(n for n in os.listdir(folder) if n.startswith(f"{dataset}.") and n.endswith(ATOMIC_SUFFIXES))
    return {name: file_fingerprint(os.path.join(folder, name)) for name in names}


def run_inputs(suite, dataset, row, seed):
    """The content a run reads besides its keys: each config file's and each atomic dataset file's fingerprint.
    Every cached artifact's key is a function of these and the spec's keys (recbole_llm.artifacts), so a record whose
    inputs and spec both match was made from the same artifacts; the artifact keys themselves are in the record."""
    from recbole_llm.data.corpus import source_names

    _, config = run_config(suite, dataset, row, seed)
    files = dataset_files(dataset, config.get("data_path"))
    for source in source_names(config.get("pretrain_datasets")):  # a pre-trained row reads its sources too
        files.update(dataset_files(source, config.get("data_path")))
    return {"config_files": {path: file_fingerprint(path) for path in suite.get("config_files") or []},
            "dataset_files": files}


def changed_inputs(recorded, current):
    """The names of the inputs whose content differs between a record's ``inputs`` and today's (:func:`run_inputs`);
    a file that is not on this machine today is not compared (a record made elsewhere stays readable)."""
    changed = []
    for kind in ("config_files", "dataset_files"):
        old, new = (recorded or {}).get(kind) or {}, current.get(kind) or {}
        for name in sorted(set(old) | set(new)):
            if name in new and new[name] is None and kind == "config_files":
                continue  # the config file is not here: nothing to compare
            if kind == "dataset_files" and not new:
                continue  # the dataset is not on this machine
            if old.get(name) != new.get(name):
                changed.append(os.path.basename(name))
    return changed


def provenance():
    """The package version and the checkout's git commit (with '+dirty' for uncommitted changes; None outside git)."""
    import recbole_llm

    root = os.path.dirname(os.path.dirname(os.path.abspath(recbole_llm.__file__)))
    commit = None
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or None
        if commit and subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True, timeout=10).stdout.strip():
            commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package_version": recbole_llm.__version__, "git_commit": commit}
