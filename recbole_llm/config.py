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

from recbole.config import Config as RecBoleConfig
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import InputType

from recbole_llm.utils import PROJECT_ROOT, UnknownNameError, get_model, properties_dir


def parse_overrides(items):
    """Config overrides from ``--key=value`` / ``key=value`` strings: Python literals (``False``, ``0.5``,
    ``{'mode': 'uni100'}``) become values, anything else stays a string (``gelu``)."""
    overrides = {}
    for item in items:
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
    return bool(glob.glob(os.path.join(folder, f"{dataset}*.inter")))


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
        if self.final_config_dict.get("loss_type") == "CE" and "train_neg_sample_args" not in self.external_config_dict:
            self.final_config_dict["train_neg_sample_args"] = None
        super()._set_default_parameters()
        if self.final_config_dict.get("loss_type") == "BCE" and "MODEL_INPUT_TYPE" not in self.final_config_dict:
            # the official LLMEmb loss: one positive and one sampled negative per row, like BPR's input
            self.final_config_dict["MODEL_INPUT_TYPE"] = InputType.PAIRWISE
        self.final_config_dict["data_path"] = resolve_dataset_dir(self.dataset, data_path)
