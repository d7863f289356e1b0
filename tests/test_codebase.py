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


def test_every_class_is_named_in_source():
    """No class is built at run time with type(name, bases, dict): a factory picks among classes defined with a class
    statement (issue 30), so every class a run uses can be found (and unpickled) by its name."""
    import ast

    offenders = []
    for path in python_files("recbole_llm"):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type" and len(node.args) == 3:
                offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not offenders, offenders


def recbole_names(tree):
    """Names a module binds to RecBole's modules and objects (import recbole..., from recbole... import ...)."""
    import ast

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "recbole"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "recbole":
            names |= {a.asname or a.name for a in node.names}
    return names


def test_recbole_is_patched_in_compat_only():
    """Every patch of RecBole (an assignment to an attribute or item of something imported from RecBole, setattr on
    it, or a replaced method of a RecBole trainer or model instance) lives in recbole_llm/compat.py (issue 30)."""
    import ast

    instance_patch = re.compile(r"^\s*(trainer|model)(\.\w+)+\s*=[^=]", re.M)
    offenders = []
    for path in python_files("recbole_llm"):
        if path.endswith(os.path.join("recbole_llm", "compat.py")):
            continue
        source = open(path).read()
        tree = ast.parse(source)
        imported = recbole_names(tree)
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" and node.args:
                targets = [ast.Attribute(value=node.args[0], attr="?")]
            for target in targets:
                root = target
                while isinstance(root, (ast.Attribute, ast.Subscript)):
                    root = root.value
                if root is not target and isinstance(root, ast.Name) and root.id in imported:
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
        if imported:  # a module that uses RecBole (llm/ sets attributes of Hugging Face models, not of RecBole's)
            offenders += [f"{os.path.relpath(path, ROOT)}: {m.group(0).strip()}" for m in instance_patch.finditer(source)]
    assert not offenders, offenders
