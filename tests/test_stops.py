"""Stops: SIGTERM / SIGINT to an entry point end its children, keep what finished, leave no half-written file, print
one line, and the same command resumes (recbole_llm/errors.cli_entry, recbole_llm/workers.py)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from conftest import ROOT


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def sigint_default():  # a process started in the background inherits SIGINT ignored; a terminal's Ctrl-C is not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


# the suite's workers: row A finishes at once with a record, the others write their pid and train "forever"
WORKER = textwrap.dedent('''
    import json, os, sys, time
    job = json.load(open(sys.argv[1]))
    suite, (dataset, row, seed) = job["suite"], job["run"]
    if row != "A":
        open(os.path.join(os.environ["PIDS"], str(os.getpid())), "w").close()
        time.sleep(300)
    from recbole_llm.bench import execute as engine
    from recbole_llm.bench.spec import DEFAULT_METRICS
    engine.write_record(engine.run_path(suite, dataset, row, seed), {
        "dataset": dataset, "row": row, "model": "SASRec", "seed": seed, "status": "ok", "run_id": job["run_id"],
        "spec": engine.run_spec(suite, dataset, row, seed), "modes": {"full": {m: 0.1 for m in DEFAULT_METRICS}},
        "sec_per_epoch": 1.0, "epochs": 3, "params": 10})
''')

DRIVER = textwrap.dedent('''
    import sys
    from recbole_llm.bench import execute as engine
    from recbole_llm import benchmark
    engine.prepare_runs = lambda suite, pending: [(*run, {}) for run in pending]
    engine.worker_command = lambda job_file: [sys.executable, "-c", WORKER, job_file]
    sys.exit(benchmark.main(["--suite=" + SUITE]))
''')


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_stopped_suite_ends_its_workers_and_keeps_finished_records(tmp_path, how):
    out, pids = tmp_path / "out", tmp_path / "pids"
    pids.mkdir()
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"datasets": ["d"], "seeds": [1], "workers": 2, "out": str(out),
                                     "rows": {name: {"model": "SASRec", "hidden_size": 8 + i} for i, name in enumerate("ABC")}}))
    env = dict(os.environ, PIDS=str(pids), PYTHONPATH=ROOT)
    driver = subprocess.Popen([sys.executable, "-c", f"WORKER = {WORKER!r}\nSUITE = {str(suite)!r}\n" + DRIVER], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        assert wait_for(lambda: len(os.listdir(pids)) == 2, 120), "the two long workers did not start"
        driver.send_signal(getattr(signal, how))
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    workers = [int(p) for p in os.listdir(pids)]
    assert wait_for(lambda: not any(alive(p) for p in workers), 20), f"workers left running after {how}"
    record = json.load(open(out / "runs" / "d" / "A" / "1.json"))
    assert record["status"] == "ok"  # the finished run is kept ...
    assert not (out / "runs" / "d" / "B" / "1.json").exists()  # ... and no record for the stopped ones
    files = [f for _, _, names in os.walk(out) for f in names]
    assert [f for f in files if f.startswith(".tmp-")] == []  # no half-written file
    if how == "SIGKILL":  # no chance to clean up (job files stay, the next run rewrites them); the workers still end
        return  # with their driver (PR_SET_PDEATHSIG)
    assert [f for f in files if f.endswith(".job.json")] == []
    signum = getattr(signal, how)
    assert driver.returncode == 128 + signum
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == (f"stopped by {how}: finished results are kept and nothing is half-written; "
                         "run the same command again to resume")
    assert "Traceback" not in err
    assert "Stopped with 1 of 3 runs finished" in (out / "results.md").read_text()


def test_a_stopped_cli_prints_one_line(tmp_path):
    script = textwrap.dedent('''
        import sys, time
        from recbole_llm.errors import cli_entry
        @cli_entry
        def main(argv):
            try:
                print("ready", flush=True)
                time.sleep(60)
            finally:
                print("cleaned up", flush=True)
        sys.exit(main([]))
    ''')
    for how in ("SIGTERM", "SIGINT"):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=ROOT), preexec_fn=sigint_default)
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(getattr(signal, how))
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + getattr(signal, how)
        assert "cleaned up" in out and err.count("\n") == 1 and err.startswith(f"stopped by {how}: "), (out, err)


def test_a_stop_that_lands_in_a_finaliser_is_not_lost():
    """A signal handled inside ``__del__`` (regex and tokenizer finalisers) is only printed as "Exception ignored" by
    Python; cli_entry raises it again outside (the features command used to run to its end after SIGTERM)."""
    script = textwrap.dedent('''
        import os, signal, sys, time
        from recbole_llm.errors import cli_entry
        class Finaliser:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)  # handled here, inside the finaliser
                sum(range(1000))
        @cli_entry
        def main(argv):
            Finaliser()
            for _ in range(100):
                time.sleep(0.1)
            print("ran to the end", flush=True)
        sys.exit(main([]))
    ''')
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 128 + signal.SIGTERM and "ran to the end" not in proc.stdout
    assert proc.stderr.startswith("stopped by SIGTERM: ") and proc.stderr.count("\n") == 1, proc.stderr
