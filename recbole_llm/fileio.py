"""Atomic file writes: a temp file in the target folder, renamed into place only when complete."""

import contextlib
import hashlib
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


_FINGERPRINTS = {}


def file_fingerprint(path):
    """``[size, sha1 prefix]`` of a file's content, or None when it does not exist.

    Caches keyed by this are stable across copies, checkouts and re-extractions of the same data
    (mtime is not: a dataset copied again would otherwise rebuild every feature file and teacher).
    Hashed once per process for an unchanged (path, size, mtime).
    """
    if not os.path.isfile(path):
        return None
    stat = os.stat(path)
    memo = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _FINGERPRINTS:
        digest = hashlib.sha1()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _FINGERPRINTS[memo] = [stat.st_size, digest.hexdigest()[:16]]
    return list(_FINGERPRINTS[memo])


@contextlib.contextmanager
def build_lock(path, what=None):
    """Hold an exclusive lock on ``<path>.lock`` while building ``path``.

    Two runs started together (parallel benchmark queues, two shells) that both miss a cached artifact
    would otherwise both build it; with the lock the second one waits, then finds the artifact and reuses
    it (callers re-check their cache after acquiring). POSIX ``flock``; where it is unavailable the lock is
    a no-op. The lock file is left in place (empty): removing it would race with a waiting process.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path = path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is building {what or path} (lock {lock_path})", flush=True)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build_once(path, is_current, build, what=None):
    """Run ``build()`` unless ``is_current()``, holding ``build_lock(path)`` and re-checking once the lock
    is held, so that runs started together build a cached artifact once. True when this call built it."""
    if is_current():
        return False
    with build_lock(path, what):
        if is_current():  # built meanwhile by the run that held the lock
            return False
        build()
        return True
