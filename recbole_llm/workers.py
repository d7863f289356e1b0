"""Worker processes of the benchmark engine: one fresh process per job, at most N at a time, none left behind.

:func:`run_workers` is the one pool of the benchmark (``--dataset --models --workers=N``) and of suites
(``workers: N``). Each job is a JSON-able dict with a ``name``; it is written to ``<log_dir>/<name>.job.json``,
its worker runs ``command(job_file)`` with its output in ``<log_dir>/<name>.log`` and writes its own result
record. When the driver stops, for whatever reason (SIGTERM, Ctrl-C, an error in the driver), the running workers
are terminated (SIGTERM, then SIGKILL after ``grace`` seconds) before the exception goes on; on Linux a worker
also gets SIGTERM when its driver dies without a chance to clean up (``PR_SET_PDEATHSIG``), so ``kill -9`` of the
driver does not leave orphans training either. Finished records stay; records are written atomically, so a stop
never leaves half a file, and a rerun resumes.
"""

import json
import os
import signal
import subprocess
import threading
import time

from recbole_llm.errors import Stopped


def available_cores():
    """Cores this process may run on (its CPU affinity, e.g. under ``taskset``), else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_env(threads, package_root=None):
    """Environment of a worker: ``threads`` BLAS/OpenMP threads; ``package_root`` first on PYTHONPATH."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if package_root:
        env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _die_with_parent():  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(command, job, log_dir, env):
    """(process, job_file, log_path, log_handle) of a worker started for ``job``."""
    os.makedirs(log_dir, exist_ok=True)
    job_file = os.path.join(log_dir, f"{job['name']}.job.json")
    with open(job_file, "w") as handle:
        json.dump(job, handle)
    log_path = os.path.join(log_dir, f"{job['name']}.log")
    log_handle = open(log_path, "w")
    preexec = _die_with_parent if os.name == "posix" else None
    proc = subprocess.Popen(command(job_file), stdout=log_handle, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)
    return proc, job_file, log_path, log_handle


def _alive(proc):
    return proc.poll() is None if hasattr(proc, "poll") else proc.is_alive()


def stop_all(procs, grace=30):
    """SIGTERM every process still running (``subprocess.Popen`` or ``multiprocessing.Process``), then SIGKILL what
    has not ended after ``grace`` seconds."""
    for proc in procs:
        if _alive(proc):
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        while _alive(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(proc):
            proc.kill()
        proc.wait() if hasattr(proc, "wait") else proc.join()


def run_workers(jobs, workers, log_dir, command, on_exit, env=None, grace=30):
    """Run ``jobs`` first in first out, at most ``workers`` at a time, each in its own process ``command(job_file)``;
    ``on_exit(job, returncode, log_path, seconds)`` is called here as each ends. Anything that ends this call early
    (a signal, an exception) terminates the running workers first. Called on the main thread, a SIGTERM that would
    otherwise kill this process at once is turned into :class:`recbole_llm.errors.Stopped` for that."""
    queue, running = list(jobs), {}
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, Stopped.raise_for)
    try:
        while queue or running:
            while queue and len(running) < workers:
                job = queue.pop(0)
                proc, job_file, log_path, log_handle = start(command, job, log_dir, env)
                print(f"{job['name']}: started (pid {proc.pid}, log {log_path})", flush=True)
                running[proc] = (job, job_file, log_path, log_handle, time.perf_counter())
            finished = [proc for proc in running if proc.poll() is not None]
            if not finished:
                time.sleep(0.2)
                continue
            for proc in finished:
                job, job_file, log_path, log_handle, started = running.pop(proc)
                log_handle.close()
                os.remove(job_file)
                on_exit(job, proc.returncode, log_path, time.perf_counter() - started)
    except BaseException:
        stop_all(list(running), grace)
        for _, job_file, _, log_handle, _ in running.values():
            log_handle.close()
            if os.path.exists(job_file):
                os.remove(job_file)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
