"""run_recbole_llm(): the one training entry point (RecBole's run_recbole, plugin-aware)."""

import os
import sys
import time
from logging import getLogger

import torch
from recbole.utils import get_flops, init_logger, init_seed, set_color

from recbole_llm.compat import set_anomaly_detection, time_epochs
from recbole_llm.config import Config
from recbole_llm.data.cold import exclude_cold_items_from_loss
from recbole_llm.utils import create_dataset, data_preparation, get_model, get_trainer


def prepare_artifacts(config):
    """Build what the model reads and is missing (feature files, SCFT, teacher), once.

    A model class opts in with a ``prepare_artifacts(config)`` classmethod; it must skip (and say so)
    what is up to date. A ``teacher_width(config)`` classmethod that returns a width gets the LLMEmb teacher. Called before the dataset is built and before any Ray Tune trial starts.
    """
    model_class = get_model(config["model"])
    hook = getattr(model_class, "prepare_artifacts", None)
    if hook is not None:
        hook(config)
    width = getattr(model_class, "teacher_width", lambda config: None)(config)
    if width:  # the LLMEmb alignment teacher: a nested run of this entry point, handed down to the model layer
        from recbole_llm.model.teacher import ensure_teacher

        config["teacher_checkpoint"] = ensure_teacher(config, width, run=run_recbole_llm)
    if config["pretrain_datasets"] or config["pretrained_checkpoint"]:  # transfer from other datasets
        from recbole_llm.model.pretrained import check_pretrainable, ensure_pretrained, handed_pretrained

        check_pretrainable(config, model_class)
        if config["pretrain_datasets"] and not handed_pretrained(config):  # pre-training first: a nested run of
            # this entry point on their corpus (a run handed the weights built for it checks their key below instead)
            config["pretrained_checkpoint"] = ensure_pretrained(config, model_class, run=run_recbole_llm)
    if config["artifact_keys"]:  # handed by the process that built them: the files must still be those
        from recbole_llm.model.pretrained import check_handed_pretrained
        from recbole_llm.model.teacher import check_handed_teacher

        check_handed_teacher(config)
        check_handed_pretrained(config)


# the config keys prepare_artifacts resolves: what a run started elsewhere (a DDP process, a Tune trial, a benchmark
# worker) needs to find the artifacts built before it instead of checking or building them again
ARTIFACT_KEYS = ("llm_features", "llm_feature", "llm_feature_base", "teacher_checkpoint", "pretrained_checkpoint")


def shared_artifact_keys(config):
    """Build ``config``'s artifacts (:func:`prepare_artifacts`) and return the config keys that name them, with the
    (absolute) feature folder they live in and ``artifact_keys``: {file name: the key it records} of every feature
    file in ``llm_features`` and of the teacher file (by its base name), which the run checks before it trains
    (recbole_llm.artifacts.check_handed_key: a file rebuilt meanwhile with other settings is refused by name)."""
    prepare_artifacts(config)
    shared = {k: config[k] for k in ARTIFACT_KEYS if config[k] not in (None, "auto")}
    keys = {}
    if shared.get("llm_features"):
        from recbole_llm.llm.features import feature_dirs, recorded_key

        shared["feature_dir"] = feature_dirs(config)[0]  # absolute: runs may start in another working folder
        keys.update({name: recorded_key(config, name) for name in shared["llm_features"]})
    if shared.get("teacher_checkpoint") and os.path.isfile(str(shared["teacher_checkpoint"])):
        from recbole_llm.model.teacher import recorded_teacher_key

        keys[os.path.basename(str(shared["teacher_checkpoint"]))] = recorded_teacher_key(shared["teacher_checkpoint"])
    if config["pretrain_datasets"] and shared.get("pretrained_checkpoint"):
        from recbole_llm.model.pretrained import recorded_pretrained_key

        keys[os.path.basename(str(shared["pretrained_checkpoint"]))] = recorded_pretrained_key(shared["pretrained_checkpoint"])
    keys = {name: key for name, key in keys.items() if key is not None}
    if keys:
        shared["artifact_keys"] = {**(config["artifact_keys"] or {}), **keys}
    return shared


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
    ``train_seconds`` (per epoch, mean) and ``num_params``.

    With ``nproc`` > 1 (or ``world_size`` > 1) the artifacts are built here, once, and ``nproc`` processes train
    with RecBole's DDP (:func:`run_distributed`); the result is global rank 0's (None on the other machines)."""
    if config is None:
        config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    if config["single_spec"] and (config["nproc"] > 1 or config["world_size"] > 1):
        return run_distributed(config, model, dataset, config_file_list, config_dict, saved)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    set_anomaly_detection(config["detect_anomaly"])
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    if config["single_spec"]:  # a DDP process: built before the processes started
        prepare_artifacts(config)
        set_anomaly_detection(config["detect_anomaly"])
    dataset, model, (train_data, valid_data, test_data) = build_dataset_and_model(config, logger)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epoch_times = time_epochs(trainer)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"], callback_fn=callback_fn
    )
    if config["epochs"] == 0 and valid_data:  # zero-shot: the model as built (e.g. pre-trained elsewhere), never trained here
        best_valid_result = trainer.evaluate(valid_data, load_best_model=False, show_progress=config["show_progress"])
        best_valid_score = best_valid_result[config["valid_metric"].lower()]
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


def build_dataset_and_model(config, logger):
    """(dataset, model, (train, valid, test) loaders) of a config whose artifacts exist; the model on its device,
    cold-start items excluded from its loss."""
    dataset = create_dataset(config)
    logger.info(dataset)
    loaders = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, loaders[0]._dataset).to(config["device"])
    exclude_cold_items_from_loss(model, loaders[0]._dataset)
    logger.info(model)
    if config["log_flops"]:
        from recbole.data.transform import construct_transform

        flops = get_flops(model, dataset, config["device"], logger, construct_transform(config))
        logger.info(set_color("FLOPs", "blue") + f": {flops}")
    return dataset, model, loaders


def run_distributed(config, model, dataset, config_file_list, config_dict, saved=True):
    """``nproc`` DDP processes on this machine (RecBole's ``run``: ``torch.multiprocessing.spawn``), each building
    the dataset and model; the artifacts (features, SCFT, teacher) are built before, once."""
    nproc = int(config["nproc"])
    world_size = int(config["world_size"]) if config["world_size"] > 0 else nproc
    if config["offset"] + nproc > world_size:
        from recbole_llm.errors import ConfigError

        raise ConfigError(f"config keys offset ({config['offset']}) + nproc ({nproc}) exceed world_size ({world_size}): "
                          "set world_size to the processes of all machines together")
    resolved = shared_artifact_keys(config)  # the processes get the names of what was built, not the work
    # RecBole's ensure_dir (exists? then makedirs) races between processes started together: make its folders now
    for folder in (os.path.join("log", str(config["model"])), config["checkpoint_dir"]):
        os.makedirs(folder, exist_ok=True)
    rank_dict = {**(config_dict or {}), **resolved, "nproc": nproc, "world_size": world_size, "ip": config["ip"],
                 "port": config["port"], "offset": config["offset"]}
    return spawn_ranks(_run_rank, nproc, model or config["model"], dataset or config["dataset"], config_file_list, rank_dict, saved)


def spawn_ranks(function, nproc, *args):
    """``torch.multiprocessing.spawn(function, (*args, result_file))`` and global rank 0's result, read from the file
    it wrote (a pipe would block a result larger than its buffer, e.g. a big catalogue's item tokens); None when this
    machine has no rank 0."""
    import pickle
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        result_file = os.path.join(folder, "result.pkl")
        context = mp.spawn(function, args=(*args, result_file), nprocs=nproc, join=False)
        try:
            while not context.join():
                pass
        except BaseException:  # a stop (SIGTERM, Ctrl-C) or a failed rank: no rank is left training
            from recbole_llm.workers import stop_all

            stop_all(context.processes, grace=10)
            raise
        if not os.path.isfile(result_file):
            return None
        with open(result_file, "rb") as handle:
            return pickle.load(handle)  # written by our own rank 0 just now


def _rank_result(compute, result_file):
    """Run ``compute()`` in a DDP process; global rank 0 writes its result for the launcher; the group is left.

    The trainer's DDP wrapper sits in reference cycles (RecBole's trainer and model), so it outlives ``compute()``
    until a garbage collection; left to the interpreter's shutdown, its reducer releases the gloo group while the
    interpreter is being torn down, and a rank that finished first could abort ("terminate called without an
    active exception", SIGABRT: 1 run in about 20 under load). It is collected here, before the group is left."""
    import gc
    import pickle

    import torch.distributed as dist

    try:
        result = compute()
        if dist.get_rank() == 0:
            with open(result_file, "wb") as handle:
                pickle.dump(result, handle)
    finally:
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()


def _run_rank(local_rank, model, dataset, config_file_list, config_dict, saved, result_file):
    """One DDP process (module level: spawn pickles it by name)."""
    _rank_result(lambda: run_recbole_llm(model=model, dataset=dataset, config_file_list=config_file_list,
                                         config_dict={**config_dict, "local_rank": local_rank}, saved=saved), result_file)


def load_model_file(model_file, config_overrides=None):
    """(config, model, train_data, valid_data, test_data) rebuilt from a checkpoint this project wrote.

    The checkpoint is unpickled (RecBole stores its Config object in it), which can run code: pass only your own
    checkpoints. Weights to hand to someone else: ``python -m recbole_llm.export --weights`` (docs/data.md).

    ``config_overrides`` change evaluation-side keys (e.g. ``{"eval_args": {"mode": "uni100"}}``); keys
    that shape the model must stay as trained.
    """
    from recbole_llm.compat import load_checkpoint, numpy_compatibility_settings

    numpy_compatibility_settings()  # a pickled Config does not run RecBole's start-up (its metrics read np.float)
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
    if "local_rank" in (config_overrides or {}):  # a DDP process (evaluate_model_file with nproc > 1)
        config._init_device()
    elif not config["single_spec"]:  # trained with DDP, rebuilt in this one process
        for key, value in {"single_spec": True, "local_rank": 0, "nproc": 1, "world_size": -1, "offset": 0}.items():
            config[key] = value
        if config["device"].type == "cuda":
            config["device"] = torch.device("cuda")
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, train_data, valid_data, test_data


def evaluate_model_file(model_file, config_overrides=None, nproc=1, port=5678):
    """Test result of a saved checkpoint, e.g. under another eval mode than it was trained with; with ``nproc`` > 1
    evaluated by that many DDP processes on this machine (the metrics are those of one process)."""
    if nproc > 1:
        return spawn_ranks(_evaluate_rank, nproc, model_file, config_overrides, nproc, port)
    return _test_checkpoint(model_file, config_overrides)


def _test_checkpoint(model_file, config_overrides):
    config, model, train_data, _, test_data = load_model_file(model_file, config_overrides)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train_data)
    return trainer.evaluate(test_data, load_best_model=False)


def _evaluate_rank(local_rank, model_file, config_overrides, nproc, port, result_file):
    rank_keys = {"local_rank": local_rank, "nproc": nproc, "world_size": nproc, "ip": "localhost", "port": port, "offset": 0}
    _rank_result(lambda: _test_checkpoint(model_file, {**(config_overrides or {}), **rank_keys}), result_file)
