"""The few fixes RecBole 1.2.1 needs on today's stack, and every patch of RecBole the plugin applies, in one place.

Every RecBole patch here targets RecBole :data:`RECBOLE_VERSION` (1.2.1, what requirements.txt installs); at import
this module checks the installed RecBole (:func:`check_recbole_version`): without one, an ImportError in one line;
with another version, one warning line naming both versions and the fix (``pip install --no-deps recbole==1.2.1``).

1. Importing ``recbole.model.sequential_recommender`` imports ``sine.py``, which calls
   ``torch.autograd.set_detect_anomaly(True)`` at module level: every backward of the process becomes
   several times slower. :func:`import_recbole_models` imports that package once and switches the
   flag back off; :func:`set_anomaly_detection` applies the ``detect_anomaly`` config key.
2. torch>=2.6 loads with ``weights_only=True`` by default, and RecBole's checkpoints pickle the whole
   ``Config``: ``Trainer.evaluate(load_best_model=True)`` and ``resume_checkpoint`` fail.
   :func:`load_own_checkpoint` loads a checkpoint *this run wrote itself* with ``weights_only=False``;
   :class:`recbole_llm.trainer.CheckpointMixin` routes RecBole's trainers through it. Files given by a
   user are loaded by :func:`load_checkpoint`, which says what it trusts.
3. RecBole's ``Config.compatibility_settings`` restores numpy's removed aliases by reading ``np.float_``,
   ``np.complex_`` and ``np.unicode_``, which numpy 2 removed as well: the Config cannot be built there.
   :func:`numpy_compatibility_settings` sets the same aliases from names every numpy has; the plugin's
   ``Config`` calls it instead.
4. Ray Tune moved its function-trainable API between 2.6 (``ray.air.session.report``, ``ray.air.RunConfig(local_dir)``)
   and 2.40+ (``ray.tune.report``, ``ray.tune.get_context()``, ``ray.tune.RunConfig(storage_path)``).
   :func:`tune_report`, :func:`tune_trial_dir` and :func:`tune_run_config` use whichever this Ray has.
5. RecBole reads atomic files with pandas' default quoting: a field that begins with a double quote (real
   Amazon titles and descriptions do) swallows tabs and lines until the next quote, or fails with
   ``ParserError: '\t' expected after '"'``. Atomic files have no quoting (tab-separated, one line per row):
   :func:`install_atomic_reader` makes RecBole's reader read them so (``quoting=QUOTE_NONE``) and turns its
   number errors and empty files into one line naming the file, the line and the fix (the encoding is
   checked before, by recbole_llm.data.atomic.AtomicFilesMixin).
6. RecBole's distributed training (``nproc`` > 1) hard-codes the ``nccl`` backend, CUDA devices and
   ``DistributedDataParallel(device_ids=[local_rank])``, so it cannot run without GPUs.
   :func:`init_distributed_device` starts the process group with ``gloo`` on CPU (``nccl`` on GPUs, as
   RecBole) and :func:`install_ddp_wrapper` gives CPU modules ``device_ids=None``.
7. Ray 2.6's Ray Data imports ``pkg_resources._vendor.packaging`` (gone in setuptools >= 70) and pandas
   internals gone in pandas 2.1: with requirements.txt's set (ray 2.6.3, pandas 2.2, setuptools 80) it cannot be
   imported. :func:`import_ray_data` says so in one line; requirements-modern.txt (ray 2.60) runs it.
8. RecBole's sequential models accept only the loss types BPR and CE: :func:`stand_in_loss_type` builds one with a
   stand-in for the plugin's (SSM, BCE), then restores it.
9. RecBole's metric registry is three module dicts: :func:`register_recbole_metrics` adds the long-tail metrics.
10. Instance patches of RecBole's trainer and models, each named for what it reads: :func:`time_epochs` (the seconds
    of every ``Trainer._train_epoch``), :func:`capture_data_struct` (the ``DataStruct`` an evaluation scores),
    :func:`replace_loss_fct` (the ``loss_fct`` RecBole's CE models call; the cold-start protocol masks it).
"""

import contextlib
import os
import pickle
import sys
import time
import warnings

import torch

RECBOLE_VERSION = "1.2.1"  # the RecBole every patch in this module targets
RECBOLE_FIX = f"pip install --no-deps recbole=={RECBOLE_VERSION}"


def installed_recbole_version():
    """The installed RecBole's ``__version__``, or None when RecBole cannot be imported (its package, not its models)."""
    try:
        import recbole
    except ImportError:
        return None
    return str(getattr(recbole, "__version__", "unknown"))


def recbole_version_problem(installed):
    """One line about RecBole ``installed`` (a version, or None for none), or None when it is the targeted one."""
    if installed is None:
        return f"recbole_llm needs RecBole {RECBOLE_VERSION}: {RECBOLE_FIX} (see the README)"
    if installed != RECBOLE_VERSION:
        return (f"warning: RecBole {installed} is installed, but recbole_llm's patches of RecBole (recbole_llm/compat.py) "
                f"target RecBole {RECBOLE_VERSION}: {RECBOLE_FIX}")
    return None


def check_recbole_version(installed):
    """Run at import: ImportError (one line) without RecBole, one warning line on stderr with another version."""
    problem = recbole_version_problem(installed)
    if installed is None:
        raise ImportError(problem)
    if problem:
        print(problem, file=sys.stderr)


check_recbole_version(installed_recbole_version())


def set_anomaly_detection(enabled=False):
    """Set torch's global anomaly detection (RecBole's ``sine.py`` turns it on at import)."""
    torch.autograd.set_detect_anomaly(bool(enabled))


def import_recbole_models():
    """Import RecBole's model packages, then undo the global side effect of ``sine.py`` (RecBole 1.2.1)."""
    import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py)

    set_anomaly_detection(False)
    # RecBole 1.2.1 on pandas 2.2 / torch 2.13 warns about its own chained fillna and GradScaler calls at
    # every run; they are harmless and drown the training log
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    install_atomic_reader()


class _AtomicPandas:
    """Stands for ``pandas`` inside ``recbole.data.dataset.dataset``: ``read_csv`` reads atomic files as they
    are written (no quoting) and reports a bad file in one line; everything else is pandas itself."""

    def __init__(self, pandas):
        self._pandas = pandas

    def __getattr__(self, name):
        return getattr(self._pandas, name)

    def read_csv(self, filepath, *args, **kwargs):
        import csv

        kwargs.setdefault("quoting", csv.QUOTE_NONE)
        try:
            frame = self._pandas.read_csv(filepath, *args, **kwargs)
        except ValueError as err:  # a float column with a word in it
            line = _first_bad_number(self._pandas, filepath, kwargs)
            raise atomic_file_error(filepath, f"cannot be read ({str(err).splitlines()[0][:120]})", line,
                                    "fix that value (float columns hold numbers only)") from None
        if len(frame) == 0:
            raise atomic_file_error(filepath, "has a header but no rows", None, "write at least one row per interaction/item")
        return frame


def atomic_file_error(path, problem, line, fix):
    from recbole_llm.errors import DataFileError

    where = f" on line {line}" if line else ""
    return DataFileError(f"atomic file '{path}' {problem}{where}: {fix}")


def _first_bad_number(pandas, path, kwargs):
    """Line number (1 = header) of the first value of a float column that is not a number, or None."""
    dtype = kwargs.get("dtype") or {}
    floats = [c for c, t in dtype.items() if t is not str]
    if not floats:
        return None
    try:
        raw = pandas.read_csv(path, sep=kwargs.get("delimiter") or kwargs.get("sep") or "\t", usecols=floats, dtype=str,
                              quoting=kwargs.get("quoting", 3), encoding=kwargs.get("encoding"), keep_default_na=False)
    except Exception:
        return None
    for column in floats:
        numbers = pandas.to_numeric(raw[column].replace("", "nan"), errors="coerce")
        bad = numbers.isna() & (raw[column] != "")
        if bad.any():
            return int(bad.to_numpy().argmax()) + 2
    return None


def install_atomic_reader():
    """Route RecBole's atomic-file reading (``recbole.data.dataset.dataset.pd``, RecBole 1.2.1) through
    :class:`_AtomicPandas` (idempotent)."""
    import recbole.data.dataset.dataset as recbole_dataset

    if not isinstance(recbole_dataset.pd, _AtomicPandas):
        recbole_dataset.pd = _AtomicPandas(recbole_dataset.pd)


def distributed_world():
    """(rank, world size) of the running process group; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_device(final, recbole_init_device):
    """RecBole 1.2.1's ``Config._init_device`` for a DDP process (``local_rank`` set by the launcher) without CUDA: the
    ``gloo`` backend on CPU. A single process, or GPUs, go through RecBole's own code (``nccl``); CUDA is looked at
    only after ``CUDA_VISIBLE_DEVICES`` is set from ``gpu_id``, as RecBole does, so the chosen GPUs are the ones used."""
    if "local_rank" not in final:
        return recbole_init_device()
    gpu_id = final.get("gpu_id", "")
    final["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
    os.environ["CUDA_VISIBLE_DEVICES"] = final["gpu_id"]
    install_ddp_wrapper()
    if torch.cuda.is_available() and final.get("use_gpu", True) and final["gpu_id"].strip() != "":
        return recbole_init_device()
    import torch.distributed as dist

    if not dist.is_initialized():
        avoid_detail_debug_crash(final["local_rank"] == 0)
        dist.init_process_group(
            backend="gloo",
            rank=int(final["local_rank"]) + int(final["offset"]),
            world_size=int(final["world_size"]),
            init_method=f"tcp://{final['ip']}:{final['port']}",
        )
    final["device"] = torch.device("cpu")
    final["single_spec"] = False
    if final["local_rank"] != 0:
        final["state"] = "error"
        final["show_progress"] = False
        final["verbose"] = False


def avoid_detail_debug_crash(warn=True):
    """``TORCH_DISTRIBUTED_DEBUG=DETAIL`` wraps a gloo group in torch's ProcessGroupWrapper, and with it (torch 2.13.0
    CPU) ``DistributedDataParallel(...)`` dies with SIGSEGV in its construction logging, in plain torch as well
    (docs/distributed.md): such a process runs at INFO instead, with one line saying so (idempotent)."""
    import sys

    import torch.distributed as dist

    if dist.get_debug_level() == dist.DebugLevel.DETAIL:
        dist.set_debug_level(dist.DebugLevel.INFO)
        if warn:
            print("warning: TORCH_DISTRIBUTED_DEBUG=DETAIL crashes torch's DDP on a gloo (CPU) group (SIGSEGV): running "
                  "with INFO instead (docs/distributed.md)", file=sys.stderr)


def install_ddp_wrapper():
    """RecBole 1.2.1 wraps every model in ``DistributedDataParallel(model, device_ids=[local_rank])``. torch accepts device
    ids for CUDA modules only: CPU modules get ``device_ids=None``. Non-persistent buffers (the frozen LLM tables,
    the teacher: the same files on every rank) are left out of DDP's start-up and per-step buffer broadcasts, which
    would otherwise send whole tables from rank 0 at every step (idempotent)."""
    import recbole.trainer.trainer as recbole_trainer
    from torch.nn.parallel import DistributedDataParallel

    if getattr(recbole_trainer.DistributedDataParallel, "_recbole_llm", False):
        return

    def ddp(module, device_ids=None, **kwargs):
        if next(module.parameters()).device.type == "cpu":
            device_ids = None
        local = [f"{prefix}.{name}" if prefix else name for prefix, sub in module.named_modules()
                 for name in getattr(sub, "_non_persistent_buffers_set", ())]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, local)
        return DistributedDataParallel(module, device_ids=device_ids, **kwargs)

    ddp._recbole_llm = True
    recbole_trainer.DistributedDataParallel = ddp


def import_ray_data():
    """``ray.data``, or one line saying why this Ray's Ray Data cannot run here."""
    import ray
    import ray.data
    from packaging.version import Version

    try:
        if Version(ray.__version__) < Version("2.10"):  # what its map_batches imports (moved in later Rays)
            import ray.air.util.tensor_extensions.arrow  # noqa: F401
            import ray.air.util.tensor_extensions.pandas  # noqa: F401
    except ImportError as err:
        from recbole_llm.errors import ConfigError

        raise ConfigError(
            f"llm_ray: Ray Data of ray {ray.__version__} cannot be imported with this stack ({err}); ray 2.6's Ray Data "
            "predates pandas 2.1 and setuptools 70: install requirements-modern.txt (ray 2.60), or extract without --ray"
        ) from None
    return ray.data


def load_checkpoint(path, map_location="cpu"):
    """Load a RecBole checkpoint file (``.pth`` with ``config`` and ``state_dict``, as RecBole 1.2.1 writes them).

    RecBole pickles its ``Config`` object into every checkpoint, which torch>=2.6 refuses under
    ``weights_only=True``. Only call this for files you trust (written by this project's runs):
    unpickling can run code.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        from recbole_llm.errors import MissingFileError

        raise MissingFileError(
            f"checkpoint file '{path}' does not exist: pass the .pth file a run wrote "
            f"(see 'Saving current' in its log, under checkpoint_dir)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as err:
        from recbole_llm.errors import DataFileError

        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise DataFileError(f"'{path}' is not a readable torch checkpoint ({first}): pass the .pth file a run wrote") from None


def load_own_checkpoint(path, own_files, map_location="cpu"):
    """Load a checkpoint only if ``path`` is one of ``own_files`` (files the running trainer wrote);
    anything else goes through torch's safe loader (``weights_only=True``, explicit: torch < 2.6 and
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` would unpickle otherwise) and fails loudly if it needs pickles."""
    real = os.path.realpath(os.fspath(path))
    if real in {os.path.realpath(f) for f in own_files}:
        return load_checkpoint(path, map_location=map_location)
    return torch.load(path, map_location=map_location, weights_only=True)


# RecBole 1.2.1's aliases (np.float = np.float_, ...), each taken from a name that numpy 1.x and 2.x both have
NUMPY_ALIASES = {
    "bool": "bool_",
    "int": "int_",
    "float": "float64",
    "complex": "complex128",
    "object": "object_",
    "str": "str_",
    "long": "int_",
    "unicode": "str_",
}


def numpy_compatibility_settings():
    """What RecBole 1.2.1's ``Config.compatibility_settings`` does, on numpy 1.x and 2.x alike."""
    import numpy as np

    for alias, name in NUMPY_ALIASES.items():
        setattr(np, alias, getattr(np, name))


def _new_tune_api():
    from ray import tune

    return hasattr(tune, "get_context") and hasattr(tune, "RunConfig")


def tune_report(metrics):
    """Report ``metrics`` from inside a function trainable (Ray 2.6 and 2.40+)."""
    if _new_tune_api():
        from ray import tune

        tune.report(metrics)
    else:
        from ray.air import session

        session.report(metrics)


def tune_trial_dir():
    """The running trial's own folder (Ray 2.6 and 2.40+)."""
    if _new_tune_api():
        from ray import tune

        return tune.get_context().get_trial_dir()
    from ray.air import session

    return session.get_trial_dir()


def tune_run_config(name, out_dir, max_failures=0, verbose=1):
    """A Tune ``RunConfig`` that writes the trials under ``out_dir/name`` (Ray 2.6 and 2.40+)."""
    if _new_tune_api():
        from ray import tune

        failure = tune.FailureConfig(max_failures=max_failures, fail_fast=False)
        return tune.RunConfig(name=name, storage_path=out_dir, failure_config=failure, verbose=verbose)
    from ray.air import FailureConfig, RunConfig

    failure = FailureConfig(max_failures=max_failures, fail_fast=False)
    return RunConfig(name=name, local_dir=out_dir, failure_config=failure, verbose=verbose)


# ---- patches of RecBole 1.2.1's classes and registries that the plugin's modules apply (each called from there) ----
@contextlib.contextmanager
def stand_in_loss_type(config, stand_ins):
    """RecBole 1.2.1's sequential models accept only BPR and CE: build one with the stand-in of the plugin's loss type
    (``{"SSM": "CE", "BCE": "BPR"}``), then restore the real one. Yields the real loss type."""
    loss_type = config["loss_type"]
    if loss_type in stand_ins:
        config["loss_type"] = stand_ins[loss_type]
    try:
        yield loss_type
    finally:
        config["loss_type"] = loss_type


def register_recbole_metrics(metrics):
    """Add ``metrics`` ({name: metric class}) to RecBole 1.2.1's metric registry, the dicts of
    ``recbole.evaluator.register`` that its Config and Evaluator read (idempotent)."""
    from recbole.evaluator.register import metric_information, metric_types, metrics_dict

    for name, cls in metrics.items():
        metrics_dict[name] = cls
        metric_information[name] = cls.metric_need
        metric_types[name] = cls.metric_type


def time_epochs(trainer):
    """A list that receives the seconds of every ``trainer._train_epoch`` call from now on (RecBole 1.2.1's
    ``Trainer.fit`` calls it once per epoch; this trainer only is wrapped)."""
    epoch_times = []
    original_train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        result = original_train_epoch(*args, **kwargs)
        epoch_times.append(time.perf_counter() - start)
        return result

    trainer._train_epoch = timed_train_epoch
    return epoch_times


def capture_data_struct(trainer):
    """A dict whose ``"struct"`` receives the ``DataStruct`` that ``trainer``'s next evaluations score (RecBole 1.2.1's
    ``Trainer.evaluate`` calls ``eval_collector.get_data_struct()`` once, after the batches)."""
    captured = {}
    original = trainer.eval_collector.get_data_struct

    def capture():
        struct = original()
        captured["struct"] = struct
        return struct

    trainer.eval_collector.get_data_struct = capture
    return captured


def replace_loss_fct(model, loss_fct):
    """Make ``loss_fct`` the loss ``model`` computes its CE with: RecBole 1.2.1's SASRec and GRU4Rec call
    ``self.loss_fct(logits, targets)`` (the plugin's BERT4Rec too; RecBole's calls ``F.cross_entropy``)."""
    model.loss_fct = loss_fct.to(next(model.parameters()).device)
    return model.loss_fct
