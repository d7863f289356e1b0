"""Rules of the codebase that a change can break (issue 20): short functions, no sys.argv/sys.path edits."""

import ast
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_files(*folders):
    return [f for folder in folders for f in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)]


def test_no_function_in_the_package_is_over_60_lines():
    long = []
    for path in python_files("recbole_llm"):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_nothing_assigns_sys_argv_or_edits_sys_path():
    pattern = re.compile(r"sys\.argv\s*=[^=]|sys\.path\.(insert|append)")
    offenders = [os.path.relpath(p, ROOT) for p in python_files("recbole_llm", "benchmarks") + glob.glob(os.path.join(ROOT, "*.py"))
                 if pattern.search(open(p).read())]
    assert not offenders, offenders


def test_no_test_loads_a_script_by_file_path():
    offenders = [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tests", "*.py"))
                 if "spec_from_file_location" in open(p).read() and not p.endswith("test_codebase.py")]
    assert not offenders, offenders


def test_lower_layers_never_import_the_entry_points():
    """model/, llm/, data/, evaluator/, trainer/ sit below the run entry points (quick_start, benchmark, suite, tune):
    what they need from above is handed down (the teacher's run function), never imported."""
    names = "quick_start|benchmark|suite|tune|features|scft|export"
    above = re.compile(rf"^\s*(from recbole_llm\.({names})\b|import recbole_llm\.({names})\b|from recbole_llm import )", re.M)
    offenders = [os.path.relpath(p, ROOT) for p in python_files(*(f"recbole_llm/{d}" for d in ("model", "llm", "data", "evaluator", "trainer")))
                 if above.search(open(p).read())]
    assert not offenders, offenders


def test_no_binaries_are_tracked():
    """Packages, checkpoints and arrays stay out of git (a pyflakes wheel was once committed at the root by accident);
    plots and small JSON records are fine."""
    import subprocess

    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    binary = (".whl", ".tar.gz", ".zip", ".pth", ".pt", ".npy", ".pkl", ".gguf", ".safetensors", ".bin")
    offenders = [p for p in tracked if p.endswith(binary) or (os.path.isfile(os.path.join(ROOT, p))
                                                               and os.path.getsize(os.path.join(ROOT, p)) > 2_000_000)]
    assert not offenders, offenders
