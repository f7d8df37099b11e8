"""Import doit without the standard-library modules it loads for features the agent never uses.

doit's module imports pull in:
- `importlib.metadata` (with email, zipfile, csv, ...) only to scan entry points, a scan
  the agent turns off (graph/main.py: an installed package must not replace commands in
  a root process);
- `multiprocessing` (`Process`, `Queue`) only for the parallel runner (`-n N`).
Both are paid on every boot (bench/README.md has the figures). So while doit loads, each of them is a stand-in module
whose names import the real module when first *called*; the stand-ins are gone before
anything else runs, so a later `import multiprocessing` anywhere gets the real module,
and doit's parallel runner and entry-point scan still work if ever used.

Import this module before any `doit` module (graph/main.py does).
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

# Module -> the names doit imports from it with `from MODULE import NAME`.
DEFERRED = {
    "importlib.metadata": ("entry_points",),
    "multiprocessing": ("Process", "Queue"),
}


def _deferred(module: str, name: str) -> Callable[..., Any]:
    def call_real(*args: Any, **kwargs: Any) -> Any:
        """Calls the real function or class, importing its module now."""
        real = importlib.import_module(module)
        return getattr(real, name)(*args, **kwargs)

    call_real.__name__ = call_real.__qualname__ = name
    return call_real


def _stand_in(module: str, names: tuple[str, ...]) -> types.ModuleType:
    stand_in = types.ModuleType(module, "stand-in while doit loads (graph/lean_doit.py)")
    for name in names:
        setattr(stand_in, name, _deferred(module, name))
    return stand_in


def _import_doit() -> None:
    if "doit" in sys.modules:
        return  # too late: doit has its modules already
    installed = {}
    for module, names in DEFERRED.items():
        if module not in sys.modules:  # a real module already loaded stays in use
            installed[module] = sys.modules[module] = _stand_in(module, names)
    try:
        import doit.doit_cmd  # noqa: F401 - loads doit against the stand-ins
    finally:
        for module, stand_in in installed.items():
            if sys.modules.get(module) is stand_in:
                del sys.modules[module]


_import_doit()
