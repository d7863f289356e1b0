"""Config: RecBole's, plus the plugin's YAML defaults and dataset location rules.

Order (later wins): RecBole overall -> RecBole model -> RecBole dataset -> RecBole quick-start presets
-> the YAML of every model class the model subclasses (RecBole's and the plugin's, most basic first)
-> plugin ``properties/overall.yaml`` -> ``properties/model/<Model>.yaml`` ->
``properties/dataset/<dataset>.yaml`` -> config files -> config dict -> command line.

Dataset folder: ``<data_path>/<dataset>/`` if it holds ``<dataset>.inter``, else the checkout's
``dataset_atomic/<dataset>/``; ml-100k falls back to the copy inside the recbole wheel (offline).
An unknown name raises :class:`UnknownNameError` listing the datasets that exist.
"""

import ast
import glob
import importlib
import os
import re

from recbole.config import Config as RecBoleConfig
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import InputType

from recbole_llm.data.atomic import check_item_attributes, has_dataset_yaml, no_yaml_defaults
from recbole_llm.paths import PROJECT_ROOT, properties_dir
from recbole_llm.utils import UnknownNameError, get_model


def parse_overrides(items):
    """Config overrides from ``--key=value`` (or ``key=value``) strings; anything else is a ConfigError. Python literals (``False``, ``0.5``,
    ``{'mode': 'uni100'}``) become values, anything else stays a string (``gelu``)."""
    overrides = {}
    for item in items:
        if "=" not in item or item.startswith("="):
            raise _config_error(f"argument '{item}' is not --key=value: write config keys as --key=value (e.g. --epochs=1)")
        key, _, value = item.lstrip("-").partition("=")
        try:
            overrides[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value
    return overrides


RECBOLE_MODEL_PROPS = os.path.join(os.path.dirname(importlib.import_module("recbole").__file__), "properties", "model")
RECBOLE_ML100K = os.path.join(
    os.path.dirname(importlib.import_module("recbole").__file__), "dataset_example", "ml-100k"
)


def _has_atomic_files(folder, dataset):
    # escaped: a dataset or folder name with glob characters ("a[1]", "*") is a name, not a pattern
    return bool(glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(dataset)}*.inter")))


def known_datasets(data_path):
    names = {"ml-100k"}
    names.update(os.path.splitext(os.path.basename(f))[0] for f in glob.glob(os.path.join(properties_dir(), "dataset", "*.yaml")))
    for root in {data_path, os.path.join(PROJECT_ROOT, "dataset_atomic")}:
        if root and os.path.isdir(root):
            names.update(d for d in os.listdir(root) if _has_atomic_files(os.path.join(root, d), d))
    return sorted(names)


def resolve_dataset_dir(dataset, data_path):
    """The folder that holds ``<dataset>.inter``; raises UnknownNameError when there is none."""
    candidates = []
    if data_path:
        candidates.append(os.path.join(data_path, dataset))
    candidates.append(os.path.join(PROJECT_ROOT, "dataset_atomic", dataset))
    if dataset == "ml-100k":
        candidates.append(RECBOLE_ML100K)
    for folder in candidates:
        if _has_atomic_files(folder, dataset):
            return os.path.abspath(folder)
    where = " or ".join(f"'{c}'" for c in candidates)
    raise UnknownNameError(
        f"Unknown dataset '{dataset}': no {dataset}.inter in {where}. "
        f"Known datasets: {', '.join(known_datasets(data_path))}. "
        f"Put the atomic files in dataset_atomic/{dataset}/ or pass --data_path=<folder holding {dataset}/>."
    )


class Config(RecBoleConfig):
    """RecBole's Config with the plugin's YAML, dataset rules and validation. It never reads ``sys.argv``
    (RecBole's does, so every nested run used to inherit the command line): pass keys as ``config_dict`` or
    files; the command-line tools parse ``--key=value`` themselves (:func:`parse_overrides`)."""

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        from recbole_llm.errors import UserError

        try:
            super().__init__(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
        except UserError:
            raise
        except (ValueError, NotImplementedError) as err:  # RecBole's own config checks (topk, metrics, eval_args, ...)
            raise _config_error(f"config: {err}") from err
        validate_config(self)

    def _load_cmd_line(self):
        return {}

    def _load_config_files(self, file_list):
        """RecBole's, with a missing file, bad YAML or a file that is not a mapping as one line naming it."""
        import yaml

        merged = {}
        for file in file_list or []:
            if not os.path.isfile(file):
                raise _config_error(f"config file '{file}' (--config_files) does not exist: check the path (several files: space-separated)")
            try:
                with open(file, "r", encoding="utf-8") as handle:
                    loaded = yaml.load(handle.read(), Loader=self.yaml_loader)
            except (yaml.YAMLError, UnicodeDecodeError) as err:
                mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None) or type(err).__name__
                where = f" on line {mark.line + 1}" if mark is not None else ""
                raise _config_error(f"config file '{file}' is not valid YAML{where} ({problem}): fix it (key: value, one per line)") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise _config_error(f"config file '{file}' holds a {type(loaded).__name__}, not key: value lines: write one key: value per line")
            merged.update(loaded or {})
        return merged

    def _set_eval_neg_sample_args(self, phase):
        """RecBole's, after checking the phase's ``eval_args`` mode: ``uni0`` (every metric 1.0), ``pop-5``, ``uniabc`` refused."""
        mode = self.final_config_dict["eval_args"]["mode"][phase]
        if isinstance(mode, str) and mode[:3] in ("uni", "pop") and not (mode[3:].isdigit() and int(mode[3:]) >= 1):
            raise _config_error(
                f"config key 'eval_args' mode '{mode}' ({phase}) needs a number of sampled negatives >= 1 after "
                f"'{mode[:3]}' (e.g. {mode[:3]}100), or full: with none, every metric is 1.0"
            )
        return super()._set_eval_neg_sample_args(phase)

    def _init_device(self):
        """RecBole's, except that a DDP process without CUDA uses the gloo backend on CPU (recbole_llm.compat)."""
        from recbole_llm.compat import init_distributed_device

        init_distributed_device(self.final_config_dict, super()._init_device)

    def compatibility_settings(self):
        """RecBole's numpy aliases without reading names numpy 2 removed (recbole_llm.compat)."""
        from recbole_llm.compat import numpy_compatibility_settings

        numpy_compatibility_settings()

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise UnknownNameError("No model given: pass --model=<name> (e.g. --model=SASRec).")
        if isinstance(model, str):
            final_model, final_model_class = model, get_model(model)
        else:
            final_model, final_model_class = model.__name__, model
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise UnknownNameError("No dataset given: pass --dataset=<name> (e.g. --dataset=ml-100k).")
        return final_model, final_model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        props = properties_dir()
        # a plugin model inherits the YAML defaults of the classes it subclasses (RecBole's, then the plugin's),
        # most basic first: LLMEmbSASRec gets SASRec's n_layers, dropout, ... before its own; a mixin's YAML
        # (LLMESRMixin.yaml) comes after the backbone's, as the mixin's methods do
        base_files = []
        for base in reversed(model_class.__mro__[1:]):
            if isinstance(base, type) and issubclass(base, AbstractRecommender):
                base_files += [os.path.join(RECBOLE_MODEL_PROPS, f"{base.__name__}.yaml"), os.path.join(props, "model", f"{base.__name__}.yaml")]
            elif isinstance(base, type) and base is not object and base.__module__.startswith("recbole_llm."):
                base_files.append(os.path.join(props, "model", f"{base.__name__}.yaml"))
        for file in base_files:
            if os.path.isfile(file):
                self._update_internal_config_dict(file)
        for file in (
            os.path.join(props, "overall.yaml"),
            os.path.join(props, "model", f"{model}.yaml"),
            os.path.join(props, "dataset", f"{dataset}.yaml"),
        ):
            if os.path.isfile(file):
                config_dict = self._update_internal_config_dict(file) or {}
                if os.path.basename(os.path.dirname(file)) == "dataset":
                    self.parameters["Dataset"] += [k for k in config_dict if k not in self.parameters["Dataset"]]

    def _get_final_config_dict(self):
        final = super()._get_final_config_dict()
        # eval_args given by the user (e.g. {mode: uni100}) update the defaults instead of replacing them,
        # so that switching the ranking mode keeps the leave-one-out split
        internal, external = self.internal_config_dict.get("eval_args"), self.external_config_dict.get("eval_args")
        if isinstance(internal, dict) and isinstance(external, dict):
            final["eval_args"] = {**internal, **external}
        return final

    def _set_default_parameters(self):
        data_path = self.final_config_dict.get("data_path")
        # RecBole's overall.yaml samples one negative per row, which its own check then rejects for CE
        # losses: with CE, no training negatives unless the user asked for them explicitly.
        if self.final_config_dict.get("loss_type") in ("CE", "SSM") and "train_neg_sample_args" not in self.external_config_dict:
            self.final_config_dict["train_neg_sample_args"] = None
        super()._set_default_parameters()
        if self.final_config_dict.get("loss_type") == "BCE" and "MODEL_INPUT_TYPE" not in self.final_config_dict:
            # the official LLMEmb loss: one positive and one sampled negative per row, like BPR's input
            self.final_config_dict["MODEL_INPUT_TYPE"] = InputType.PAIRWISE
        self.final_config_dict["data_path"] = resolve_dataset_dir(self.dataset, data_path)
        ratio = self.final_config_dict.get("cold_item_ratio")
        if isinstance(ratio, (int, float)) and ratio > 0 and "metrics" not in self.external_config_dict:
            cold_metrics = ["Hit_cold", "Hit_warm", "NDCG_cold", "NDCG_warm", "Recall_cold", "Recall_warm"]
            self.final_config_dict["metrics"] = list(self.final_config_dict["metrics"]) + cold_metrics
        if not has_dataset_yaml(self.dataset, os.path.join(properties_dir(), "dataset")):
            # a user's own files: every column, FDSA/S3Rec attributes from .item (recbole_llm/data/atomic.py)
            from recbole.utils import ModelType

            sequential = self.final_config_dict.get("MODEL_TYPE") == ModelType.SEQUENTIAL
            self.final_config_dict.update(
                no_yaml_defaults(self.final_config_dict, self.dataset, self.final_config_dict["data_path"], self.external_config_dict, sequential)
            )


# ---- validation: before any work starts, one line that names the key and the fix --------------------------
# RecBole's keys: its YAML defaults and what its own code reads as config["..."] (RecBole declares no schema); the
# plugin's keys: declared in properties/**/*.yaml with their types (recbole_llm/schema.py)
_CONFIG_READ = re.compile(r"""(?:config\w*(?:\.get\(|\[)|(?<![.\w])get\()\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")
# read by RecBole from the command line or set by its distributed launcher, not through config["..."]
_EXTRA_KNOWN = {"model", "dataset", "config_files", "nproc", "world_size", "ip", "port", "offset", "local_rank",
                "device", "single_spec", "valid_neg_sample_args", "test_neg_sample_args", "eval_type", "MODEL_INPUT_TYPE"}
_RECBOLE_KEYS = None


def recbole_config_keys():
    """Every key a YAML default of RecBole names or that RecBole's code reads as config[...]."""
    global _RECBOLE_KEYS
    if _RECBOLE_KEYS is None:
        import yaml

        keys = set(_EXTRA_KNOWN)
        root = os.path.dirname(importlib.import_module("recbole").__file__)
        for path in glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True):
            try:
                with open(path) as handle:
                    loaded = yaml.safe_load(handle)
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(loaded, dict):
                keys.update(str(k) for k in loaded)
        for path in glob.glob(os.path.join(root, "**", "*.py"), recursive=True):
            with open(path, encoding="utf-8", errors="replace") as handle:
                keys.update(_CONFIG_READ.findall(handle.read()))
        _RECBOLE_KEYS = keys
    return _RECBOLE_KEYS


def known_config_keys():
    """RecBole's keys and the plugin's declared ones (properties/**/*.yaml)."""
    from recbole_llm.schema import declared_keys

    return recbole_config_keys() | set(declared_keys())


def _config_error(message):
    from recbole_llm.errors import ConfigError

    return ConfigError(message)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def validate_config(config):
    """Raise ConfigError for a key nobody reads or a value that cannot work (checked on the user's keys)."""
    import difflib

    external = config.external_config_dict
    known = known_config_keys() | set(config.internal_config_dict)
    for key in external:
        if key.startswith("_") or key in known:
            continue
        near = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise _config_error(f"unknown config key '{key}'{hint}: no RecBole or recbole-llm code reads it; fix its name or drop it")
    from recbole_llm.schema import parse_file, type_error

    for key, value in external.items():  # the declared type of a plugin key; RecBole's: the type of its default
        message = type_error(key, value)
        if message:
            raise _config_error(message)
        default = config.internal_config_dict.get(key)
        if isinstance(value, str) and isinstance(default, (bool, int, float)) and default is not None:
            kind = "True or False" if isinstance(default, bool) else "a number"
            raise _config_error(f"config key '{key}' must be {kind} (default {default!r}), got '{value}'")

    def positive_int(key, minimum=1):
        value = config[key]
        if value is not None and (not _is_int(value) or value < minimum):
            raise _config_error(f"config key '{key}' must be an integer >= {minimum}, got {value!r}")

    for key in ("epochs", "train_batch_size", "eval_batch_size", "MAX_ITEM_LIST_LENGTH", "hidden_size", "embedding_size",
                "inner_size", "n_layers", "n_heads", "stopping_step", "eval_step", "ssm_negatives", "eval_item_chunk", "nproc",
                "llm_ray_workers", "llm_batch_size"):
        if key == "epochs" and config["epochs"] == 0 and not (config["pretrain_datasets"] or config["pretrained_checkpoint"]):
            raise _config_error("config key 'epochs' must be an integer >= 1, got 0 (epochs: 0 evaluates a model without "
                                "training it, zero-shot: only with pretrain_datasets or pretrained_checkpoint)")
        if key == "epochs":
            positive_int(key, minimum=0)
        elif key in external or key == "MAX_ITEM_LIST_LENGTH":
            positive_int(key)
    learning_rate = config["learning_rate"]
    if learning_rate is not None and (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or learning_rate <= 0):
        raise _config_error(f"config key 'learning_rate' must be a number > 0, got {learning_rate!r}")
    for key in ("hidden_dropout_prob", "attn_dropout_prob", "dropout_prob"):
        value = config[key]
        if key in external and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1):
            raise _config_error(f"config key '{key}' must be a number in [0, 1), got {value!r}")
    if "offset" in external:
        positive_int("offset", minimum=0)
    cold_id_keys = [entry[0] for entry in parse_file(os.path.join(properties_dir(), "model", "ColdIdMixin.yaml"))]
    for key in cold_id_keys:  # declared for the models that read them only
        if key in external and key not in config.internal_config_dict:
            raise _config_error(
                f"config key '{key}' applies to the models that keep an ID table next to text (LLMESR*, LLM2X*; "
                f"properties/model/ColdIdMixin.yaml), not to {config['model']}: drop it for this model"
            )
    _validate_choices(config)
    _validate_interval(config, "train_user_inter_num_interval")
    _validate_metrics(config)
    _validate_device(config, external)
    _validate_saved_files(config)
    check_item_attributes(config)


# RecBole's caches of pickled objects: loading one unpickles it, which can run code; the plugin builds both from the
# atomic files every run (recbole_llm/data/utils.py split_loaders, recbole_llm/utils.py create_dataset)
_PICKLE_CACHE_KEYS = {
    "save_dataloaders": "RecBole's saved dataloaders",
    "dataloaders_save_path": "RecBole's saved dataloaders",
    "save_dataset": "RecBole's saved dataset",
    "dataset_save_path": "RecBole's saved dataset",
}


def _validate_saved_files(config):
    """The pickle-cache keys refused, and a ``checkpoint_dir`` that is (or lies under) a file refused before training."""
    for key, what in _PICKLE_CACHE_KEYS.items():
        if config[key]:
            raise _config_error(
                f"config key '{key}' is {config[key]!r}: {what} are pickles, which can run code when loaded, and the "
                "plugin builds the split from the atomic files every run: drop the key"
            )
    folder = config["checkpoint_dir"]
    if folder:
        probe = _existing_part(folder)
        if not os.path.isdir(probe):
            raise _config_error(
                f"config key 'checkpoint_dir' is '{folder}', but '{probe}' is a file, not a folder: pass a folder "
                "(every run writes its checkpoint into it)"
            )
    log_dir = os.path.join("log", config["model"])  # RecBole's init_logger writes ./log/<model>/ (a fixed root)
    probe = _existing_part(log_dir)
    if not os.path.isdir(probe):
        raise _config_error(
            f"RecBole writes its run log into './{log_dir}/', but '{os.path.relpath(probe)}' is a file here: run from "
            "another folder, or rename that file"
        )


def _existing_part(path):
    """The longest leading part of ``path`` (absolute) that exists."""
    probe = os.path.abspath(str(path))
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return probe


def _validate_choices(config):
    duplicates = config["duplicate_interactions"]
    if duplicates is not None and duplicates not in ("keep", "drop", "error"):
        raise _config_error(f"config key 'duplicate_interactions' must be 'keep', 'drop' or 'error', got {duplicates!r}")
    train_mode = config["train_mode"]
    if train_mode is not None and train_mode not in ("prefix", "all_positions"):
        raise _config_error(f"config key 'train_mode' must be 'prefix' or 'all_positions', got {train_mode!r}")
    ties = config["eval_ties"]
    if ties is not None and ties not in ("arbitrary", "optimistic", "pessimistic"):
        raise _config_error(f"config key 'eval_ties' must be arbitrary, optimistic or pessimistic, got {ties!r}")


_INTERVAL = re.compile(r"^\s*[\[(]\s*([-+]?(?:\d+(?:\.\d*)?|inf))\s*,\s*([-+]?(?:\d+(?:\.\d*)?|inf))\s*[\])]\s*$")


def _validate_interval(config, key):
    """RecBole's interval syntax ("[5,40]", "(0,inf)", ";"-joined); RecBole itself warns and skips a bad one.
    RecBole evaluates "[5,40]" to a list and "(5,40)" to a tuple: they become "[5,40]" and "(5,40)" again."""
    value = config[key]
    if value is None:
        return
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        left, right = ("[", "]") if isinstance(value, list) else ("(", ")")
        value = config[key] = f"{left}{value[0]},{value[1]}{right}"
    fix = f"config key '{key}' must be an interval such as \"[5,40]\" or \"[5,inf)\", got {value!r}"
    if not isinstance(value, str):
        raise _config_error(fix)
    for part in value.split(";"):
        match = _INTERVAL.match(part)
        if not match or float(match.group(1)) > float(match.group(2)):
            raise _config_error(fix)


def _validate_metrics(config):
    topk = config["topk"]
    topk = [topk] if _is_int(topk) else topk
    if not isinstance(topk, list) or not topk or not all(_is_int(k) and k >= 1 for k in topk):
        raise _config_error(f"config key 'topk' must be a list of integers >= 1, got {config['topk']!r}")
    metrics = config["metrics"] or []
    metrics = [metrics] if isinstance(metrics, str) else metrics
    valid_metric = str(config["valid_metric"] or "")
    name, _, k = valid_metric.partition("@")
    lowered = [str(m).lower() for m in metrics]
    if name.lower().endswith(("_cold", "_warm")) and not float(config["cold_item_ratio"] or 0) > 0:
        raise _config_error(f"config key 'valid_metric' is '{valid_metric}', a cold/warm metric, but cold_item_ratio is 0: set cold_item_ratio > 0")
    if name.lower() not in lowered:
        raise _config_error(f"config key 'valid_metric' is '{valid_metric}' but '{name}' is not in metrics {metrics}: add it to metrics")
    if k:
        if not k.isdigit() or int(k) not in topk:
            raise _config_error(f"config key 'valid_metric' is '{valid_metric}' but topk is {topk}: add {k} to topk or pick a k in it")


def _validate_device(config, external):
    import torch

    # gpu_id's default "0" means "GPU 0 if there is one" (nested runs pass it on); another id asks for that GPU
    gpu_asked = "gpu_id" in external and str(external["gpu_id"]).strip() not in ("", str(config.internal_config_dict.get("gpu_id", "0")))
    asked = str(external.get("device", "")).startswith("cuda") or (gpu_asked and external.get("use_gpu", True) is not False)
    if asked and not torch.cuda.is_available():
        which = "device" if "device" in external else "gpu_id"
        raise _config_error(
            f"config key '{which}' asks for a GPU ({external[which]!r}) but torch sees no CUDA device here: "
            "drop the key to run on CPU, or install a CUDA build of torch"
        )
