"""Running an official checkout on our exported inputs, and reading its results back.

The checkout is copied (without ``.git``) into a scratch folder made fresh for each run (``tempfile.mkdtemp``: owner
only, an unpredictable name, removed at the end); the exported inputs go into that copy; the official script runs
there through :mod:`recbole_llm.parity.shim`, in a child process whose output is logged. The folder the child runs in is
never on its import path implicitly and this package's root comes before their source folder, so nothing in the copy
can stand in for this package (:func:`child_command`).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from recbole_llm.parity.export import ParityError

# the official printouts (LLM-ESR / LLMEmb trainers/sequence_trainer.py) -> our metric names
SEQREC_METRICS = {
    "NDCG@10": "ndcg@10", "HR@10": "hit@10",
    "Tail NDCG@10": "ndcg_tail@10", "Tail HR@10": "hit_tail@10",
    "Popular NDCG@10": "ndcg_head@10", "Popular HR@10": "hit_head@10",
    "Short NDCG@10": "ndcg_short@10", "Short HR@10": "hit_short@10",
    "Long NDCG@10": "ndcg_long@10", "Long HR@10": "hit_long@10",
}
LEARN_METRICS = {"NDCG@10": "ndcg@10", "Recall@10": "recall@10"}
ENTRY = {"llmesr": "main.py", "llmemb": "main.py", "learn": os.path.join("src", "training", "main_amazon.py")}


def check_checkout(checkout, method):
    """The absolute checkout, or a ParityError when it lacks the method's entry script (checked before any work)."""
    checkout = os.path.abspath(checkout)
    if not os.path.isfile(os.path.join(checkout, ENTRY[method])):
        raise ParityError(f"--official '{checkout}' has no {ENTRY[method]}: give a checkout of the {method} repository")
    return checkout


def scratch_copy(checkout, parent, method, name=None):
    """A fresh private copy of ``checkout`` (``parent``/recbole_llm_parity_<name>-XXXXXXXX, mode 0700; ``parent``:
    the system temp folder when None); the checkout is never written. Remove it with :func:`remove_scratch`."""
    checkout = check_checkout(checkout, method)
    parent = os.path.abspath(parent) if parent else tempfile.gettempdir()
    if parent == checkout or parent.startswith(checkout + os.sep):
        raise ParityError(f"the scratch folder '{parent}' lies inside the official checkout: choose another --scratch")
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f"recbole_llm_parity_{name or method}-", dir=parent)
    try:
        shutil.copytree(checkout, scratch, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", "saved", "log", "exp"))
        os.chmod(scratch, 0o700)  # copytree gave it the checkout's mode
    except BaseException:
        remove_scratch(scratch)
        raise
    return scratch


def remove_scratch(scratch):
    shutil.rmtree(scratch, ignore_errors=True)


def as_flags(args):
    """``{key: value}`` -> ``--key value`` (True: a bare flag; False/None: left out)."""
    out = []
    for key, value in args.items():
        if value is True:
            out.append(f"--{key}")
        elif value is not False and value is not None:
            out += [f"--{key}", str(value)]
    return out


ROOT_ENV = "RECBOLE_LLM_PARITY_PACKAGE_ROOT"


def child_command(method, scratch, flags):
    """(argv, import path) of the official child. The shim runs as a script by its path in this package, so the folder
    the child runs in (the scratch copy) is never put on its path implicitly (``python -m`` would put it first, and a
    ``recbole_llm/`` there would be imported instead of ours; ``PYTHONSAFEPATH=1`` also drops the script's own folder);
    the path is this package's root first, then their source folder (their trainers/, models/, ...)."""
    here = os.path.dirname(os.path.abspath(__file__))
    package_root = os.path.dirname(os.path.dirname(here))
    source = os.path.join(scratch, "src") if method == "learn" else scratch
    path = [package_root, source] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [sys.executable, os.path.join(here, "shim.py")] + list(flags), path


def run_official(method, scratch, flags, log_path, times_path):
    """Run the official script in ``scratch`` (its output into ``log_path``); returns the exit code."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    from recbole_llm.parity.shim import METHOD_ENV, TIMES_ENV

    cmd, path = child_command(method, scratch, flags)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1", PYTHONSAFEPATH="1", PYTHONPATH=os.pathsep.join(path),
               **{METHOD_ENV: method, TIMES_ENV: os.path.abspath(times_path), ROOT_ENV: path[0]})
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"{METHOD_ENV}={method} PYTHONPATH={os.pathsep.join(path[:2])} " + " ".join(cmd) + "\n")
        log.flush()
        return subprocess.call(cmd, cwd=scratch, stdout=log, stderr=subprocess.STDOUT, env=env)


def parse_seqrec_log(text):
    """Test metrics, best epoch and parameter count from an LLM-ESR / LLMEmb log (the part after 'Running test')."""
    if "Running test" not in text:
        raise ParityError("the official run printed no test results (see its log)")
    test = text.rsplit("Running test", 1)[1]
    metrics = {}
    for name, value in re.findall(r"^\s*((?:Tail |Popular |Short |Long )?(?:NDCG|HR)@10): ([0-9.]+)\s*$", test, re.M):
        metrics[SEQREC_METRICS[name]] = float(value)
    best = re.findall(r"The best epoch is (\d+)", text)
    params = re.findall(r"# of model parameters: (\d+)", text)
    return metrics, (int(best[-1]) if best else None), (int(params[-1]) if params else None)


def read_times(times_path):
    if not os.path.isfile(times_path):
        return {"epoch_seconds": [], "evals": []}
    with open(times_path, encoding="utf-8") as f:
        return json.load(f)


def learn_result(times):
    """LEARN evaluates the test users after every epoch (no model selection): the last evaluation counts."""
    if not times["evals"]:
        raise ParityError("the official LEARN run finished no evaluation (see its log)")
    last = times["evals"][-1]
    return {ours: float(last[theirs]) for theirs, ours in LEARN_METRICS.items() if theirs in last}
