"""Import doit without importlib.metadata, which the agent never uses.

doit's plugin module imports `importlib.metadata` (with email, zipfile, csv, ...) only to
scan entry points, and the agent turns that scan off (graph/main.py: an installed package
must not replace commands in a root process). The import alone is ~20 ms and ~2.4 MB of
every boot. So while doit loads, `importlib.metadata` is a stand-in whose `entry_points`
imports the real module when called; the stand-in is gone before anything else runs, so
a later `import importlib.metadata` anywhere gets the real module.

Import this module before any `doit` module (graph/main.py does).
"""

from __future__ import annotations

import sys
import types
from typing import Any

_NAME = "importlib.metadata"


def _entry_points(**selection: Any) -> Any:
    """The real `importlib.metadata.entry_points`, imported on first use."""
    if sys.modules.get(_NAME) is _STAND_IN:
        del sys.modules[_NAME]
    from importlib.metadata import entry_points

    return entry_points(**selection)


_STAND_IN = types.ModuleType(_NAME, "stand-in while doit loads (graph/lean_doit.py)")
_STAND_IN.entry_points = _entry_points  # type: ignore[attr-defined]


def _import_doit() -> None:
    if "doit.plugin" in sys.modules or _NAME in sys.modules:
        return  # doit is loaded already, or the real module is: nothing to save
    sys.modules[_NAME] = _STAND_IN
    try:
        import doit.doit_cmd  # noqa: F401 - loads doit.plugin against the stand-in
    finally:
        if sys.modules.get(_NAME) is _STAND_IN:
            del sys.modules[_NAME]


_import_doit()
