"""The process that runs an official script: ``python -m recbole_llm.parity.shim ARGS`` (ARGS: the script's own).

It runs in the scratch copy of the checkout (the current folder: their scripts read ``./data`` and
``./amazon_2018``), started as a script by its path (:func:`recbole_llm.parity.official.child_command`: the current
folder is not on its import path; ``PYTHONPATH`` names this package's root, then their source folder);
``RECBOLE_LLM_PARITY_METHOD`` says which script and
``RECBOLE_LLM_PARITY_TIMES`` where the epoch times go (so that ``sys.argv`` is the script's own), and patches, in
this process only, what the official code needs to run here; none of their files is edited:

- LLM-ESR / LLMEmb: ``--dataset`` accepts any name (theirs: yelp|fashion|beauty; LEARN's ``--ft-data`` too); ``torch.autograd.set_detect_anomaly``
  is left off (their main.py switches it on: several times slower, the same numbers); every training epoch is
  timed into TIMES (JSON: seconds per epoch).
- LEARN: ``.cuda()`` of modules and tensors stays on the CPU, ``torch.cuda.set_device`` is a no-op, the process
  group is gloo with one process, DDP is a plain wrapper exposing ``.module``, ``clip.LEARN`` (their import) is their
  ``src/model/LEARN.py``, the bert-base-uncased config comes from transformers' defaults (the same values, no
  download), wandb is absent, one LMDB environment per path (they open theirs twice); TIMES gets the seconds of every training epoch and each evaluation's metrics.
"""

import argparse
import json
import os
import runpy
import sys
import time
import types

from recbole_llm.fileio import atomic_write_text


def _record(path, times, evals=None):
    atomic_write_text(path, json.dumps({"epoch_seconds": times, "evals": evals or []}))


def timed(function, times, path, evals=None):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        times.append(time.perf_counter() - start)
        _record(path, times, evals)
        return result

    return wrapper


def patch_dataset_choices(option="--dataset"):
    original = argparse.ArgumentParser.add_argument

    def add_argument(self, *names, **kwargs):
        if option in names:
            kwargs.pop("choices", None)
        return original(self, *names, **kwargs)

    argparse.ArgumentParser.add_argument = add_argument


def run_seqrec(checkout, times_path):
    """LLM-ESR's or LLMEmb's main.py (their trainers/ importable through PYTHONPATH)."""
    import torch

    patch_dataset_choices()
    torch.autograd.set_detect_anomaly = lambda *a, **k: None
    import trainers.sequence_trainer as st

    times = []
    st.SeqTrainer._train_one_epoch = timed(st.SeqTrainer._train_one_epoch, times, times_path)
    runpy.run_path(os.path.join(checkout, "main.py"), run_name="__main__")


class SharedEnv:
    """One LMDB environment per path for the whole process: their test-user and test-item datasets open the same
    store (py-lmdb >= 2 refuses a second open in one process); closing is left to the process end."""

    _open = {}

    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        return getattr(self._env, name)

    def close(self):
        pass

    @classmethod
    def patch(cls):
        import lmdb

        original = lmdb.open

        def shared_open(path, *args, **kwargs):
            key = os.path.abspath(path)
            if key not in cls._open:
                cls._open[key] = cls(original(path, *args, **kwargs))
            return cls._open[key]

        lmdb.open = shared_open


class PlainParallel:
    """DistributedDataParallel on one CPU process: the module itself, reachable as ``.module``."""

    def __new__(cls, module, *args, **kwargs):
        object.__setattr__(module, "module", module)  # not a registered submodule: no cycle in state_dict
        return module


def patch_cpu():
    import torch
    import torch.distributed as dist
    from transformers import BertConfig

    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.cuda.set_device = lambda *a, **k: None
    init = dist.init_process_group
    dist.init_process_group = lambda *a, **k: init(backend="gloo", world_size=1, rank=0)
    torch.nn.parallel.DistributedDataParallel = PlainParallel
    BertConfig.from_pretrained = classmethod(lambda cls, *a, **k: cls())
    os.environ.update({"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))


def run_learn(checkout, times_path):
    """LEARN's src/training/main_amazon.py (finetune stage) on the CPU (their src/ importable through PYTHONPATH)."""
    patch_cpu()
    patch_dataset_choices("--ft-data")
    SharedEnv.patch()
    import model as model_package
    import model.LEARN as learn_module

    sys.modules["clip"], sys.modules["clip.LEARN"] = model_package, learn_module
    # main_amazon imports wandb (not installed here; no --wandb_project: never called); after transformers, which
    # probes for it with find_spec
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    import training.train_amazon as train_module

    times, evals = [], []
    evaluate = train_module.evaluate_amazon

    def evaluate_and_keep(*args, **kwargs):
        metrics = evaluate(*args, **kwargs)
        evals.append({k: float(v) for k, v in metrics.items()})
        _record(times_path, times, evals)
        return metrics

    train_module.train_amazon = timed(train_module.train_amazon, times, times_path, evals)
    train_module.evaluate_amazon = evaluate_and_keep
    import training.main_amazon as main_module

    main_module.main()  # reads sys.argv[1:]: the script's arguments


METHOD_ENV, TIMES_ENV = "RECBOLE_LLM_PARITY_METHOD", "RECBOLE_LLM_PARITY_TIMES"


def main():
    method, times_path = os.environ.get(METHOD_ENV), os.environ.get(TIMES_ENV)
    if method not in ("llmesr", "llmemb", "learn") or not times_path:
        raise SystemExit(f"set {METHOD_ENV} (llmesr|llmemb|learn) and {TIMES_ENV}; run it in the scratch checkout")
    root = os.environ.get("RECBOLE_LLM_PARITY_PACKAGE_ROOT")
    import recbole_llm

    if root and os.path.realpath(os.path.dirname(os.path.dirname(recbole_llm.__file__))) != os.path.realpath(root):
        raise SystemExit(f"recbole_llm was imported from {recbole_llm.__file__}, not from {root}: not running the official code")
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # their checkpoints hold optimizer states
    (run_learn if method == "learn" else run_seqrec)(os.getcwd(), os.path.abspath(times_path))


if __name__ == "__main__":
    main()
