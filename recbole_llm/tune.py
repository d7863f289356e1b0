"""Ray Tune driver behind run_hyper.py.

Parameter files use RecBole's hyper format, one parameter a line::

    learning_rate loguniform -8,0        # exp(uniform(-8, 0)), as RecBole/hyperopt
    hidden_size choice [64,128]
    dropout_prob uniform 0.1,0.5
    n_layers quniform 1,3,1

Every trial runs the normal pipeline (:func:`recbole_llm.quick_start.run_recbole_llm`) in its own
checkpoint folder and reports the validation metric after every epoch (ASHA can stop it early; RecBole's
early stopping stays on). Artifacts (feature files, teacher) are built once in the driver before any trial
starts. At the end: a table of all trials (params, best valid, test metric of the best epoch, status) as
CSV and Markdown, and the best configuration as a YAML for ``run_recbole_llm.py --config_files``.
"""

import ast
import csv
import math
import os
import time

import yaml

from recbole_llm.errors import UserError
from recbole_llm.fileio import atomic_open, atomic_write_text

WIDTH_KEYS = ("hidden_size", "embedding_size")


class HyperFileError(UserError, ValueError):
    pass


def parse_hyper_file(path):
    """{name: (kind, values)} from a RecBole hyper file; kinds: choice, uniform, loguniform, quniform."""
    if not os.path.isfile(path):
        raise HyperFileError(f"params file '{path}' not found (see hyper/*.hyper for examples)")
    space = {}
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 2)
            if len(parts) != 3:
                raise HyperFileError(f"{path}:{number}: expected '<name> <choice|uniform|loguniform|quniform> <values>', got '{line}'")
            name, kind, values = parts
            try:
                if kind == "choice":
                    parsed = ast.literal_eval(values.strip())
                    if not isinstance(parsed, (list, tuple)) or not parsed:
                        raise ValueError("choice needs a non-empty list")
                    space[name] = ("choice", list(parsed))
                elif kind in ("uniform", "loguniform", "quniform"):
                    numbers = [float(v) for v in values.split(",")]
                    if len(numbers) != (3 if kind == "quniform" else 2):
                        raise ValueError(f"{kind} needs {'low,high,q' if kind == 'quniform' else 'low,high'}")
                    space[name] = (kind, numbers)
                else:
                    raise ValueError(f"unknown kind '{kind}'")
            except (ValueError, SyntaxError) as err:
                raise HyperFileError(f"{path}:{number}: {err} in '{line}'") from None
    if not space:
        raise HyperFileError(f"params file '{path}' defines no parameter")
    return space


def check_space_keys(space, path):
    """Every parameter of the params file must be a config key some code reads (else every trial fails): one line
    naming the file, the key and the nearest known name."""
    import difflib

    from recbole_llm.config import known_config_keys

    known = known_config_keys()
    for name in space:
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise HyperFileError(f"params file '{path}': unknown config key '{name}'{hint}: no RecBole or recbole-llm code reads it; "
                                 "fix its name or drop the line")


def to_ray_space(space, search="random"):
    from ray import tune

    result = {}
    for name, (kind, values) in space.items():
        if search == "grid":
            if kind != "choice":
                raise HyperFileError(f"grid search needs 'choice' parameters; '{name}' is {kind}")
            result[name] = tune.grid_search(values)
        elif kind == "choice":
            result[name] = tune.choice(values)
        elif kind == "uniform":
            result[name] = tune.uniform(*values)
        elif kind == "loguniform":  # RecBole/hyperopt: the bounds are exponents
            result[name] = tune.loguniform(math.exp(values[0]), math.exp(values[1]))
        elif all(float(v).is_integer() for v in values):  # n_layers quniform 1,3,1: integers (2.0 is not an integer key)
            result[name] = tune.qrandint(*(int(v) for v in values))
        else:
            result[name] = tune.quniform(*values)
    return result


def _plain(value):
    """YAML/CSV-friendly python value (numpy scalars -> python)."""
    return value.item() if hasattr(value, "item") else value


def make_trainable(model, dataset, config_file_list, base_config):
    def trainable(params):
        from recbole_llm.compat import tune_report, tune_trial_dir

        from recbole_llm.quick_start import run_recbole_llm

        config_dict = dict(base_config)
        params = {k: _plain(v) for k, v in params.items()}
        if any(k in params and params[k] != base_config.get(f"_built_{k}") for k in WIDTH_KEYS):
            config_dict.pop("teacher_checkpoint", None)  # the shared teacher has the base width
        config_dict = {k: v for k, v in config_dict.items() if not k.startswith("_built_")}
        config_dict.update(params)
        config_dict["checkpoint_dir"] = os.path.abspath(os.path.join(tune_trial_dir(), "saved"))

        def report(epoch_idx, valid_score):
            tune_report({"valid_score": float(valid_score), "epoch": epoch_idx + 1})

        result = run_recbole_llm(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict, callback_fn=report)
        test = dict(result["test_result"] or {})
        tune_report(
            {
                "valid_score": float(result["best_valid_score"]),
                "epoch": result["epochs_run"] + 1,
                "best_valid_score": float(result["best_valid_score"]),
                "test_result": {k: float(v) for k, v in test.items()},
                "finished": True,
            }
        )

    return trainable


def prepare_shared_artifacts(model, dataset, config_file_list, base_config):
    """Build features/teacher once in the driver; returns the config keys trials should reuse."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import shared_artifact_keys

    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=dict(base_config))
    shared = shared_artifact_keys(config)
    for key in WIDTH_KEYS:
        if config[key] is not None:
            shared[f"_built_{key}"] = config[key]
    return shared, config


def trial_rows(result_grid, valid_metric, test_metric):
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        params = {k: _plain(v) for k, v in (result.config or {}).items()}
        history = result.metrics_dataframe
        best = None
        if history is not None and "valid_score" in history:
            best = float(history["valid_score"].max())
        if result.error is not None:
            status = "ERROR"
        elif metrics.get("finished"):
            status = "TERMINATED"
        else:
            status = "STOPPED_EARLY"
        error = ""
        if result.error is not None:
            error = str(result.error).strip().splitlines()[-1][:200]
        rows.append(
            {
                "trial": os.path.basename(result.path or "") or metrics.get("trial_id", ""),
                "status": status,
                "epochs": int(metrics.get("epoch", 0) or 0) - (1 if metrics.get("finished") else 0),
                f"best_valid_{valid_metric}": round(best, 4) if best is not None else "",
                f"test_{test_metric}": round(metrics.get("test_result", {}).get(test_metric.lower(), float("nan")), 4)
                if metrics.get("finished")
                else "",
                "params": params,
                "error": error,
            }
        )
    return rows


def write_table(rows, out_dir, space_names):
    columns = ["trial", "status", "epochs"] + [k for k in rows[0] if k.startswith(("best_valid_", "test_"))] + list(space_names) + ["error"]
    flat = [{**{k: r[k] for k in r if k != "params"}, **{n: r["params"].get(n, "") for n in space_names}} for r in rows]
    csv_path = os.path.join(out_dir, "trials.csv")
    with atomic_open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in flat:
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "/") for c in columns) + " |")
    md = "\n".join(lines)
    atomic_write_text(os.path.join(out_dir, "trials.md"), md + "\n")
    return md


def keep_our_stop_handler():
    """ray.init installs Ray's C++ SIGTERM handler (a stack dump, then abort: exit -6); Tune's own graceful stop is
    SIGINT / SIGUSR1 (it ends the trials and returns what finished). A SIGTERM is handed to that stop and noted, so the
    finished trials' table is written and the command then ends with the one stop line and exit 143."""
    import signal
    import threading

    from recbole_llm.errors import Stopped, note_stop

    def graceful(signum, frame):
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):  # Tune has not started yet
            raise Stopped(signum)
        note_stop(signum)
        os.kill(os.getpid(), signal.SIGUSR1)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, graceful)


def run_search(args):
    """Run the search described by run_hyper.py's arguments; returns (rows, best_yaml_path)."""
    import ray

    space = parse_hyper_file(args.params_file)
    config_file_list = [os.path.abspath(f) for f in args.config_files.split()] if args.config_files else None
    from recbole_llm.config import parse_overrides

    base_config = {"state": "WARNING", "show_progress": False, **parse_overrides(args.extra or [])}
    check_space_keys(space, args.params_file)  # before the base config builds any artifact, and before Ray starts
    shared, config = prepare_shared_artifacts(args.model, args.dataset, config_file_list, base_config)
    base_config.update(shared)
    base_config["data_path"] = os.path.dirname(os.path.abspath(config["data_path"]))
    out_dir = os.path.abspath(args.output or os.path.join("ray_results", f"{args.model}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"))
    os.makedirs(out_dir, exist_ok=True)
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    keep_our_stop_handler()
    try:
        tuner = build_tuner(args, to_ray_space(space, args.search), config, config_file_list, base_config, out_dir)
        results = tuner.fit()
    finally:
        ray.shutdown()
    rows = trial_rows(results, config["valid_metric"], config["valid_metric"])
    print(write_table(rows, out_dir, list(space)))
    best_yaml = write_best_config(args, rows, config, base_config, out_dir)
    print(f"trials: {os.path.join(out_dir, 'trials.csv')} and trials.md")
    return rows, best_yaml


def build_tuner(args, param_space, config, config_file_list, base_config, out_dir):
    """The Ray Tune ``Tuner`` of a search: scheduler (ASHA | FIFO), search algorithm, resources, run config."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from recbole_llm.compat import tune_run_config

    max_epochs = int(config["epochs"])
    scheduler = (
        # max_t one past the epoch budget: the trial's closing report (epoch = epochs run + 1) still lands
        ASHAScheduler(max_t=max_epochs + 1, grace_period=args.grace_period, reduction_factor=2, time_attr="epoch")
        if args.scheduler == "asha"
        else FIFOScheduler()
    )
    search_alg = None
    if args.search == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        search_alg = HyperOptSearch(random_state_seed=int(config["seed"] or 0))
    if args.max_concurrent and search_alg is not None:
        from ray.tune.search import ConcurrencyLimiter

        search_alg = ConcurrencyLimiter(search_alg, max_concurrent=args.max_concurrent)
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    trainable = tune.with_resources(make_trainable(args.model, args.dataset, config_file_list, base_config), resources)
    tune_config = tune.TuneConfig(
        metric="valid_score",
        mode="max" if config["valid_metric_bigger"] else "min",
        scheduler=scheduler,
        search_alg=search_alg,
        num_samples=1 if args.search == "grid" else args.num_samples,
        max_concurrent_trials=args.max_concurrent or None,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=tune_run_config("trials", out_dir))


def write_best_config(args, rows, config, base_config, out_dir):
    """best_config.yaml of the best scored trial (None when no trial scored); prints how to run it."""
    valid_metric, bigger = config["valid_metric"], config["valid_metric_bigger"]
    scored = [r for r in rows if r[f"best_valid_{valid_metric}"] != ""]
    if not scored:
        return None
    best = (max if bigger else min)(scored, key=lambda r: r[f"best_valid_{valid_metric}"])
    best_params = dict(best["params"])
    public = {k: v for k, v in base_config.items() if k not in ("state", "show_progress") and not k.startswith("_built_")}
    best_yaml = os.path.join(out_dir, "best_config.yaml")
    atomic_write_text(best_yaml, yaml.safe_dump({**public, **best_params}, sort_keys=True))
    print(f"best trial {best['trial']} ({valid_metric} {best[f'best_valid_{valid_metric}']}): {best_params}")
    print(f"best config: {best_yaml}  (python run_recbole_llm.py --model={args.model} --dataset={args.dataset} --config_files={best_yaml})")
    return best_yaml
