"""Atomic file writes: a temp file in the target folder, renamed into place only when complete."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """``open``-like context manager; readers never see a half-written ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_torch_save(obj, path):
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_savefig(fig, path, **kwargs):
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format=os.path.splitext(path)[1].lstrip(".") or "png", **kwargs)
