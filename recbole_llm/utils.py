"""Model, trainer and dataset resolution: the plugin first, RecBole as the fallback."""

import glob
import importlib
import inspect
import os
import pkgutil

from recbole.data import create_dataset as recbole_create_dataset
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_llm.errors import UserError
from recbole_llm.trainer.trainer import with_plugin_trainer

_MODEL_PACKAGES = ["recbole_llm.model.sequential_recommender", "recbole_llm.model.general_recommender"]


class UnknownNameError(UserError, ValueError):
    """An unknown model or dataset name; the message is one line that lists what exists."""


def _plugin_model_modules():
    for package_name in _MODEL_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.iter_modules(package.__path__):
            yield importlib.import_module(f"{package_name}.{info.name}")


def plugin_models():
    """{name: class} of the recommenders defined in the plugin's model packages."""
    models = {}
    for module in _plugin_model_modules():
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and issubclass(obj, AbstractRecommender):
                models[name] = obj
    return models


def recbole_model_names():
    recbole_props = os.path.join(os.path.dirname(importlib.import_module("recbole").__file__), "properties", "model")
    return sorted(os.path.splitext(os.path.basename(f))[0] for f in glob.glob(os.path.join(recbole_props, "*.yaml")))


def get_model(model_name):
    """Model class by name: a plugin model if one has that name, else RecBole's."""
    models = plugin_models()
    if model_name in models:
        return models[model_name]
    try:
        return recbole_get_model(model_name)
    except (ValueError, AttributeError, ModuleNotFoundError):
        raise UnknownNameError(
            f"Unknown model '{model_name}'. Plugin models: {', '.join(sorted(models)) or '(none)'}. "
            f"RecBole models: {', '.join(recbole_model_names())}."
        ) from None


def get_trainer(model_type, model_name):
    """Trainer class: ``recbole_llm.trainer.<Model>Trainer`` if it exists, else RecBole's choice;
    always with the plugin's checkpoint and long-tail collection fixes."""
    trainer_module = importlib.import_module("recbole_llm.trainer")
    trainer_class = getattr(trainer_module, model_name + "Trainer", None)
    if trainer_class is None:
        trainer_class = recbole_get_trainer(model_type, model_name)
    return with_plugin_trainer(trainer_class)


def create_dataset(config):
    """Dataset: ``recbole_llm.data.dataset.<Model>Dataset`` if it exists; ``LLMFeatureDataset`` when
    ``llm_features`` is set; else the class RecBole would pick. In front of it: a warning about interactions
    RecBole drops (recbole_llm.data.atomic) and, with ``cold_item_ratio`` > 0, the cold-start protocol
    (recbole_llm.data.cold)."""
    from recbole_llm.data.cold import cold_item_settings

    dataset_module = importlib.import_module("recbole_llm.data.dataset")
    dataset_class = getattr(dataset_module, config["model"] + "Dataset", None)
    if dataset_class is None and config["llm_features"]:
        dataset_class = dataset_module.LLMFeatureDataset
    if dataset_class is None:
        if config["dataset_save_path"]:  # RecBole's saved-dataset loading
            return recbole_create_dataset(config)
        dataset_class = getattr(importlib.import_module("recbole.data.dataset"), recbole_dataset_class_name(config))
    return dataset_module.plugin_dataset_class(dataset_class, cold=cold_item_settings(config)[0] > 0)(config)


def recbole_dataset_class_name(config):
    """The class RecBole's create_dataset would build for ``config`` (a model's own, else by model type)."""
    from recbole.utils import ModelType

    recbole_module = importlib.import_module("recbole.data.dataset")
    if hasattr(recbole_module, config["model"] + "Dataset"):
        return config["model"] + "Dataset"
    by_type = {ModelType.SEQUENTIAL: "SequentialDataset", ModelType.KNOWLEDGE: "KnowledgeBasedDataset"}
    return by_type.get(config["MODEL_TYPE"], "Dataset")


def data_preparation(config, dataset):
    """Split and build dataloaders (RecBole's ``data_preparation``; plugin train modes hook in here)."""
    from recbole_llm.data.utils import data_preparation as _data_preparation

    return _data_preparation(config, dataset)
