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
