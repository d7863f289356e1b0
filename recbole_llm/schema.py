"""The plugin's config keys, declared in properties/**/*.yaml: one line per key, ``key: default  # (type) meaning``.

The YAML files are the one place a key's default, type and meaning live (RecBole's own keys live in RecBole's
YAML). A key's ``(type)`` is one or more of ``int``, ``float``, ``bool``, ``str``, ``list``, ``dict``, ``null`` and
literal words (``auto``), joined by ``|``; indented comment lines under a key continue its meaning. A key may appear
in several files (a model's own default); the files that give a type must agree (tests/test_codebase.py).

:func:`declared_keys` is what validation (recbole_llm/config.py) reads: the keys a user may set, their types (a
wrong type is one line naming the key), and the defaults that code reading a plain dict falls back to
(:func:`default`).
"""

import copy
import functools
import glob
import os
import re
from dataclasses import dataclass

import yaml

from recbole_llm.paths import properties_dir

TYPE_NAMES = ("int", "float", "bool", "str", "list", "dict", "null")
_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(.*)$")
_TYPED = re.compile(r"^\(([^)]*)\)\s*(.*)$")
_DECLARED = None


@dataclass
class Key:
    name: str
    default: object
    types: tuple  # () when no file gives one
    help: str
    file: str  # the file of the typed declaration (else the first file naming the key)


def yaml_files():
    root = properties_dir()
    return sorted(glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True))


def parse_file(path):
    """[(key, default, types, help)] of one YAML file, in file order."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    values = yaml.safe_load(text) or {}
    entries, last = [], None
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            name, rest = match.groups()
            comment = rest.split(" #", 1)[1].strip() if " #" in rest else ""
            typed = _TYPED.match(comment)
            types = tuple(t.strip() for t in typed.group(1).split("|")) if typed else ()
            last = [name, values.get(name), types, typed.group(2) if typed else comment]
            entries.append(last)
        elif last is not None and line.startswith(" ") and line.strip().startswith("#"):
            last[3] = (last[3] + " " + line.strip()[1:].strip()).strip()
        elif line.strip() and not line.startswith(" "):
            last = None
    return [tuple(entry) for entry in entries]


def declared_keys():
    """{key: Key} over every plugin YAML (the typed declaration wins; else the first file naming the key)."""
    global _DECLARED
    if _DECLARED is None:
        keys = {}
        for path in yaml_files():
            rel = os.path.relpath(path, os.path.dirname(properties_dir()))
            for name, default, types, help_text in parse_file(path):
                if name not in keys or (types and not keys[name].types):
                    keys[name] = Key(name, default, types, help_text, rel)
        _DECLARED = keys
    return _DECLARED


@functools.lru_cache(maxsize=1)
def _overall_defaults():
    return {entry[0]: entry[1] for entry in parse_file(os.path.join(properties_dir(), "overall.yaml"))}


def default(name):
    """The declared default of a plugin key (properties/overall.yaml's, else the first file's); a copy, so that a
    caller may change a list or dict default."""
    overall = _overall_defaults()
    return copy.deepcopy(overall[name] if name in overall else declared_keys()[name].default)


def _matches(value, kind):
    if kind == "null":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, (list, tuple))
    if kind == "dict":
        return isinstance(value, dict)
    return value == kind  # a literal word such as auto


def type_error(name, value):
    """One line when ``value`` does not fit the declared type of plugin key ``name``; None when it does."""
    key = declared_keys().get(name)
    if key is None or not key.types:
        return None
    if value is None and key.default is None:
        return None
    if any(_matches(value, kind) for kind in key.types):
        return None
    return (
        f"config key '{name}' must be {' or '.join(key.types)} (default {key.default!r}; {key.file}), got {value!r}"
    )


def setting(config, key, fallback=None):
    """``config[key]`` of a RecBole Config or a plain dict; a key that is absent or null takes its declared YAML
    default (a key no YAML declares: ``fallback``). The one getter for code that accepts both."""
    value = config.get(key) if isinstance(config, dict) else config[key]
    if value is not None:
        return value
    return default(key) if key in declared_keys() else fallback
