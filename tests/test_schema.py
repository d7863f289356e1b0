"""The declared key schema (recbole_llm/schema.py): every plugin key in properties/**/*.yaml with its type and meaning,
every key the code reads declared, the docs' key tables in agreement with the YAML, validation by the declared types."""

import glob
import os
import re

import pytest
import yaml

from recbole_llm import Config, schema
from recbole_llm.config import _CONFIG_READ, recbole_config_keys
from recbole_llm.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recbole_yaml_values():
    import recbole

    values = {}
    for path in glob.glob(os.path.join(os.path.dirname(recbole.__file__), "**", "*.yaml"), recursive=True):
        loaded = yaml.safe_load(open(path))
        if isinstance(loaded, dict):
            for key, value in loaded.items():
                values.setdefault(key, []).append(value)
    return values


def test_every_key_the_plugin_reads_is_declared():
    """Code that reads config["x"] needs x in a YAML (the plugin's, or RecBole's own keys)."""
    declared, recbole = set(schema.declared_keys()), recbole_config_keys()
    missing = []
    for path in glob.glob(os.path.join(ROOT, "recbole_llm", "**", "*.py"), recursive=True):
        for key in _CONFIG_READ.findall(open(path).read()):
            if key not in declared and key not in recbole:
                missing.append(f"{os.path.relpath(path, ROOT)}: {key}")
    assert not missing, missing


def test_every_plugin_key_has_a_type_and_a_meaning_and_its_default_fits():
    recbole = recbole_yaml_values()
    problems = []
    for name, key in schema.declared_keys().items():
        if name in recbole:
            continue  # RecBole's key with a plugin default: RecBole documents it
        if not key.types or not key.help:
            problems.append(f"{key.file}: {name} has no '# (type) meaning' comment")
        elif schema.type_error(name, key.default):
            problems.append(schema.type_error(name, key.default))
    assert not problems, problems


def test_files_that_type_a_key_agree_and_types_are_known():
    types = {}
    for path in schema.yaml_files():
        for name, _, kinds, _ in schema.parse_file(path):
            if kinds:
                types.setdefault(name, set()).add(kinds)
                unknown = [k for k in kinds if k not in schema.TYPE_NAMES and not re.fullmatch(r"[a-z_]+", k)]
                assert not unknown, (path, name, unknown)
    assert {name: kinds for name, kinds in types.items() if len(kinds) > 1} == {}


def docs_key_rows():
    """(file, key, default cell) of every '| key | default | ...' table of docs/*.md and README.md."""
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]:
        header = None
        for line in open(path, encoding="utf-8").read().splitlines():
            if line.startswith("| key |"):
                header = [c.strip() for c in line.strip("|").split("|")]
                continue
            if header and line.startswith("|---"):
                continue
            if not (header and line.startswith("|")):
                header = None
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            for i in (i for i, h in enumerate(header) if h == "key"):
                j = header.index("default", i)
                keys = re.findall(r"`([A-Za-z_]\w*)`", cells[i])
                values = [cells[j]] if len(keys) == 1 else re.split(r",\s+|\s+/\s+", cells[j])
                assert not keys or len(values) == len(keys), (path, cells[i], cells[j])
                for key, value in zip(keys, values):
                    yield os.path.relpath(path, ROOT), key, value


def literal(cell):
    """The value a docs default cell states, or None for free text ("every column but the item id")."""
    token = re.split(r"\s+\(|\s+=", cell.strip().strip("`").strip())[0].strip("` ")
    if " " in token:
        return None
    try:
        return [float(token)]
    except ValueError:
        pass
    return [None] if token in ("~", "null") else [yaml.safe_load(token)]


def test_the_docs_key_tables_name_declared_keys_with_their_yaml_defaults():
    defaults = recbole_yaml_values()
    for path in schema.yaml_files():
        for name, default, _, _ in schema.parse_file(path):
            defaults.setdefault(name, []).append(default)
    rows, wrong = 0, []
    for path, key, cell in docs_key_rows():
        rows += 1
        if key not in defaults:
            wrong.append(f"{path}: {key} is not declared in any YAML")
            continue
        value = literal(cell)
        if value is not None and not any(value[0] == d or str(value[0]) == str(d) for d in defaults[key]):
            wrong.append(f"{path}: {key} default '{cell}', YAML {defaults[key]}")
    assert rows > 80 and not wrong, wrong


@pytest.mark.parametrize("key, value", [("scft_steps", "ten"), ("llmesr_id_scale", "big"), ("pca_dim", 3.5),
                                        ("scft_grad_checkpointing", "yes"), ("cold_id_dropout", "x")])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"config key '{key}' must be .*properties/.*got"):
        Config(model="LLMESRSASRec", dataset="ml-100k", config_dict={"state": "ERROR", key: value})


@pytest.mark.parametrize("key, value", [("llmesr_id_scale", "auto"), ("llmesr_id_scale", 0.5), ("pca_dim", None),
                                        ("scft_target_modules", ["q_proj"]), ("scft_lr", 1)])
def test_values_of_the_declared_types_pass(key, value):
    Config(model="LLMESRSASRec", dataset="ml-100k", config_dict={"state": "ERROR", key: value})


def test_an_unknown_key_still_gets_its_nearest_name():
    with pytest.raises(ConfigError, match="unknown config key 'scft_stepz' \\(did you mean 'scft_steps'\\?\\)"):
        Config(model="LLMEmbSASRec", dataset="ml-100k", config_dict={"scft_stepz": 3})


def test_scft_settings_take_their_defaults_from_the_yaml():
    from recbole_llm.llm.scft import SETTING_KEYS, SCFTSettings, settings_from_config

    plain, from_dict = SCFTSettings(), settings_from_config({})
    assert plain == from_dict
    for name, (key, _) in SETTING_KEYS.items():
        expected = schema.default(key)
        assert getattr(plain, name) == (expected if expected is not None else type(getattr(plain, name))()), name
    assert settings_from_config({"scft_steps": 7}).steps == 7
