"""The default model's recipe scripts (recipes/default_model/*.py) as modules, for tests of their parts."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "default_model"


def recipe_module(name: str) -> ModuleType:
    """recipes/default_model/<name>.py, imported as `python <script>` runs it: its folder first on
    the path, where its sibling modules (debian_packages) are."""
    spec = importlib.util.spec_from_file_location(name, RECIPE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(RECIPE))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(RECIPE))
    return module
