"""The few fixes RecBole 1.2.1 needs on today's stack, in one place.

1. Importing ``recbole.model.sequential_recommender`` imports ``sine.py``, which calls
   ``torch.autograd.set_detect_anomaly(True)`` at module level: every backward of the process becomes
   several times slower. :func:`import_recbole_models` imports that package once and switches the
   flag back off; :func:`set_anomaly_detection` applies the ``detect_anomaly`` config key.
2. torch>=2.6 loads with ``weights_only=True`` by default, and RecBole's checkpoints pickle the whole
   ``Config``: ``Trainer.evaluate(load_best_model=True)`` and ``resume_checkpoint`` fail.
   :func:`load_own_checkpoint` loads a checkpoint *this run wrote itself* with ``weights_only=False``;
   :class:`recbole_llm.trainer.CheckpointMixin` routes RecBole's trainers through it. Files given by a
   user are loaded by :func:`load_checkpoint`, which says what it trusts.
"""

import os
import warnings

import torch


def set_anomaly_detection(enabled=False):
    """Set torch's global anomaly detection (RecBole's ``sine.py`` turns it on at import)."""
    torch.autograd.set_detect_anomaly(bool(enabled))


def import_recbole_models():
    """Import RecBole's model packages, then undo the global side effect of ``sine.py``."""
    import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py)

    set_anomaly_detection(False)
    # RecBole 1.2.1 on pandas 2.2 / torch 2.13 warns about its own chained fillna and GradScaler calls at
    # every run; they are harmless and drown the training log
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")


def load_checkpoint(path, map_location="cpu"):
    """Load a RecBole checkpoint file (``.pth`` with ``config`` and ``state_dict``).

    RecBole pickles its ``Config`` object into every checkpoint, which torch>=2.6 refuses under
    ``weights_only=True``. Only call this for files you trust (written by this project's runs):
    unpickling can run code.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint file '{path}' does not exist: pass the .pth file a run wrote "
            f"(see 'Saving current' in its log, under checkpoint_dir)"
        )
    return torch.load(path, map_location=map_location, weights_only=False)


def load_own_checkpoint(path, own_files, map_location="cpu"):
    """Load a checkpoint only if ``path`` is one of ``own_files`` (files the running trainer wrote);
    anything else goes through torch's safe default loader and fails loudly if it needs pickles."""
    real = os.path.realpath(os.fspath(path))
    if real in {os.path.realpath(f) for f in own_files}:
        return load_checkpoint(path, map_location=map_location)
    return torch.load(path, map_location=map_location)
