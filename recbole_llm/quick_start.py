"""run_recbole_llm(): the one training entry point (RecBole's run_recbole, plugin-aware)."""

import logging
import sys
import time
from logging import getLogger

from recbole.utils import get_flops, init_logger, init_seed, set_color

from recbole_llm.compat import set_anomaly_detection
from recbole_llm.config import Config
from recbole_llm.data.cold import exclude_cold_items_from_loss
from recbole_llm.utils import create_dataset, data_preparation, get_model, get_trainer


def prepare_artifacts(config):
    """Build what the model reads and is missing (feature files, SCFT, teacher), once.

    A model class opts in with a ``prepare_artifacts(config)`` classmethod; it must skip (and say so)
    what is up to date. Called before the dataset is built and before any Ray Tune trial starts.
    """
    model_class = get_model(config["model"])
    hook = getattr(model_class, "prepare_artifacts", None)
    if hook is not None:
        hook(config)


def run_recbole_llm(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    callback_fn=None,
    config=None,
):
    """Train and evaluate ``model`` on ``dataset``; returns RecBole's result dict
    (best_valid_score, valid_score_bigger, best_valid_result, test_result) plus ``model_file``,
    ``train_seconds`` (per epoch, mean) and ``num_params``."""
    if config is None:
        config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    set_anomaly_detection(config["detect_anomaly"])
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    prepare_artifacts(config)
    set_anomaly_detection(config["detect_anomaly"])

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    exclude_cold_items_from_loss(model, train_data._dataset)
    logger.info(model)
    if config["log_flops"]:
        from recbole.data.transform import construct_transform

        flops = get_flops(model, dataset, config["device"], logger, construct_transform(config))
        logger.info(set_color("FLOPs", "blue") + f": {flops}")

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epoch_times = []
    original_train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        result = original_train_epoch(*args, **kwargs)
        epoch_times.append(time.perf_counter() - start)
        return result

    trainer._train_epoch = timed_train_epoch
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"], callback_fn=callback_fn
    )
    eval_start = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    eval_seconds = time.perf_counter() - eval_start

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "model_file": trainer.saved_model_file if saved else None,
        "train_seconds": sum(epoch_times) / len(epoch_times) if epoch_times else 0.0,
        "epochs_run": len(epoch_times),
        "eval_seconds": eval_seconds,
        "num_params": sum(p.numel() for p in model.parameters()),
        "item_tokens": [str(t) for t in dataset.field2id_token[dataset.iid_field]],
    }


def quiet_logging():
    """Silence RecBole's per-epoch logging on stdout (log files are still written)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def load_model_file(model_file, config_overrides=None):
    """(config, model, train_data, valid_data, test_data) rebuilt from a checkpoint this project wrote.

    ``config_overrides`` change evaluation-side keys (e.g. ``{"eval_args": {"mode": "uni100"}}``); keys
    that shape the model must stay as trained.
    """
    from recbole_llm.compat import load_checkpoint

    checkpoint = load_checkpoint(model_file)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "state_dict" not in checkpoint:
        from recbole_llm.errors import DataFileError

        raise DataFileError(f"'{model_file}' is not a RecBole checkpoint (no config and state_dict): pass the .pth a run wrote")
    config = checkpoint["config"]
    for key, value in (config_overrides or {}).items():
        if key == "eval_args" and isinstance(value, dict):
            value = {**config["eval_args"], **value}
            if isinstance(value.get("mode"), str):
                value["mode"] = {"valid": value["mode"], "test": value["mode"]}
        config[key] = value
    if "eval_args" in (config_overrides or {}):
        config._set_eval_neg_sample_args("valid")
        config._set_eval_neg_sample_args("test")
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, train_data, valid_data, test_data


def evaluate_model_file(model_file, config_overrides=None):
    """Test result of a saved checkpoint, e.g. under another eval mode than it was trained with."""
    config, model, train_data, _, test_data = load_model_file(model_file, config_overrides)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train_data)
    return trainer.evaluate(test_data, load_best_model=False)
