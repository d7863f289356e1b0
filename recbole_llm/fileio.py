"""Atomic file writes (a temp file in the target folder, renamed into place only when complete), and the one
loader of torch files that other people can hand a user (:func:`load_plain`: nothing in them runs code)."""

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


def plain(value):
    """``value`` with only what ``torch.load(weights_only=True)`` and JSON accept: tensors, str, int, float, bool,
    None, lists and str-keyed dicts (numpy scalars and arrays become numbers and lists, tuples lists, anything
    else its ``str``). Artifacts store this, so that loading them never needs to unpickle an object."""
    import torch

    if value is None or type(value) in (str, bool, int, float) or isinstance(value, torch.Tensor):
        return value  # exact types: numpy.float64 and numpy.str_ subclass float and str but pickle as numpy objects
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return plain(value.tolist())
    for kind in (bool, int, float, str):  # other subclasses of the plain types
        if isinstance(value, kind):
            return kind(value)
    return str(value)


def load_plain(path, what, fix):
    """The dict a torch file holds, loaded with ``weights_only=True``: tensors, numbers, strings, lists and dicts,
    never an object whose unpickling runs code. Every file that can travel with a dataset or come from another
    person (the teacher cache and ``teacher_checkpoint``, UniSRec's ``pretrained_checkpoint``, SCFT states, the
    similar users) is read through here; only the user's own RecBole checkpoints are unpickled
    (:func:`recbole_llm.compat.load_checkpoint`). A file that does not match is refused in one line naming it,
    ``what`` it should be and the ``fix``."""
    import pickle

    import torch

    from recbole_llm.errors import DataFileError, MissingFileError, UnsafeFileError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"{what} '{path}' does not exist: {fix}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever a foreign file makes torch raise, one line
        if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
            raise UnsafeFileError(
                f"{what} '{path}' holds pickled Python objects, which can run code when loaded, so it is not loaded: {fix}"
            ) from None
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise DataFileError(f"{what} '{path}' is not a readable torch checkpoint ({first}): {fix}") from None
    if not isinstance(obj, dict):
        raise DataFileError(f"{what} '{path}' holds a {type(obj).__name__}, not a dict of tensors: {fix}")
    return obj


def link_or_copy(source, path):
    """``path`` made the same file as ``source``, atomically: a hard link (free, same folder tree), else a copy
    (another file system, a read-only source folder). A later atomic write to either name replaces only that name."""
    import shutil

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-link-{os.getpid()}-{os.path.basename(path)}")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


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
    a no-op. The holder removes the lock file before it lets go, whether the build finished or failed (no empty
    ``.lock`` is left behind); a waiter that then gets the lock of the removed file sees that the name no longer
    points at it and locks the file under the name again, so two holders never overlap.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path = path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    waited = False
    while True:
        handle = open(lock_path, "a")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    print(f"waiting for another process that is building {what or path} (lock {lock_path})", flush=True)
                    waited = True
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_path))
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed it while this process waited: lock the current file
                continue
            try:
                yield
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock_path)  # while still held: a waiter on this file retries on a fresh one
            return
        finally:
            handle.close()  # releases the flock


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


def read_yaml(path, what, fix, missing_error=None):
    """The YAML of ``path`` (``{}`` when empty). An unreadable file raises ``missing_error`` (default ConfigError)
    and invalid YAML a ConfigError, each one line naming ``what`` and the file, with ``fix`` for the first."""
    import yaml

    from recbole_llm.errors import ConfigError

    try:
        with open(path) as handle:
            return yaml.safe_load(handle) or {}
    except OSError as err:
        raise (missing_error or ConfigError)(f"{what} '{path}' cannot be read ({err.strerror}): {fix}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} '{path}' is not valid YAML ({str(err).splitlines()[0]})") from None
