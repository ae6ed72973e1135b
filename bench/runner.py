"""The benchmark runner (src/pygomalloc/_bench.py) for the scripts in bench/.

Loaded by path from this checkout, so that they work whether or not the
package (whose compiled extension may not be built) is installed; from the
installed package otherwise.  ``from runner import bench``: the scripts run
from bench/ (python puts a script's folder on sys.path, pytest a test's).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    path = ROOT / "src" / "pygomalloc" / "_bench.py"
    if path.is_file():
        spec = importlib.util.spec_from_file_location("_pygomalloc_bench", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up here
        spec.loader.exec_module(mod)
        return mod
    from pygomalloc import _bench  # type: ignore[import-not-found]

    return _bench


bench = _load()
