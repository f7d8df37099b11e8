"""Every use of doit's private API, in one place, for the one doit version it was written for.

doit documents tasks, commands, reporters, loaders and backends; the agent also relies on
what doit 0.37 does underneath: names of its modules and attributes that start with `_`,
attributes of Task it sets for its own use, and how it calls what it is given. Each such
use is a small, named function here (callers never touch those names themselves: a unit
test checks it), and importing this module checks doit's version, so an upgrade of doit
fails at once with a message saying where to look, not later in a boot.

Importing this module also imports doit itself, without the standard-library modules doit
loads for features the agent never uses (see `_import_doit_lean`). Import it before any
other `doit` module (graph/main.py does).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sqlite3
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

# doit versions whose internals this module knows (pyproject.toml pins doit to 0.37.x).
KNOWN_DOIT = (0, 37)

# --- importing doit -------------------------------------------------------------------------

# Module -> the names doit uses from it (imported with `from MODULE import NAME`, or
# `import MODULE` then called as `MODULE.NAME`), for features the agent turns off or a
# command that is not a run:
# - `importlib.metadata` (with email, zipfile, csv, ...) only to scan entry points, a scan
#   the agent turns off (`disable_entry_point_plugins`: an installed package must not
#   replace commands in a root process);
# - `multiprocessing` (`Process`, `Queue`) only for the parallel runner (`-n N`);
# - `configparser` only to read doit.cfg files, which the agent reads none of
#   (graph.main: no config files);
# - `pdb` (with cmd, bdb, code, pprint, glob) only for `--pdb`, a post-mortem debugger;
# - `pprint` only for the `info` and `dumpdb` commands' output;
# - `pickle` and `queue` only for the parallel runners; `dbm` only for the dbm backends and
#   `dumpdb`;
# - `gettext`, which getopt (doit's command-line parser) imports to translate the errors
#   of a command line it rejects.
# All are paid on every boot otherwise (bench/README.md has the figures).
DEFERRED = {
    "importlib.metadata": ("entry_points",),
    "multiprocessing": ("Process", "Queue"),
    "configparser": ("ConfigParser",),
    "pdb": ("Pdb",),
    "pprint": ("PrettyPrinter", "pformat"),
    "pickle": ("dumps", "loads"),
    "queue": ("Queue",),
    "dbm": ("whichdb",),
    "gettext": ("gettext",),
}


def _deferred(module: str, name: str) -> Callable[..., Any]:
    def call_real(*args: Any, **kwargs: Any) -> Any:
        """Calls the real function or class, importing its module now."""
        real = importlib.import_module(module)
        return getattr(real, name)(*args, **kwargs)

    call_real.__name__ = call_real.__qualname__ = name
    return call_real


def _stand_in(module: str, names: tuple[str, ...]) -> types.ModuleType:
    stand_in = types.ModuleType(module, "stand-in while doit loads (graph/doit_private.py)")
    for name in names:
        setattr(stand_in, name, _deferred(module, name))

    def real_attribute(name: str) -> Any:
        """Any other attribute (an exception class doit names in an `except` clause) is the
        real module's, imported when first asked for (a module's __getattr__, PEP 562)."""
        real = importlib.import_module(module)
        if real is stand_in:
            raise AttributeError(f"{module}.{name} asked for while doit loads: add it to "
                                 "DEFERRED (graph/doit_private.py)")
        return getattr(real, name)

    stand_in.__getattr__ = real_attribute  # type: ignore[method-assign]
    return stand_in


def _import_doit_lean() -> None:
    """Import doit with a stand-in module for each of DEFERRED, whose names import the real
    module when first *called* (any other name: when first asked for). The stand-ins are
    gone before anything else runs, so a later `import multiprocessing` anywhere gets the
    real module, and doit's parallel runners, entry-point scan, debugger and the rest still
    work if ever used."""
    if "doit" in sys.modules:
        return  # too late: doit has its modules already (plain `doit` from a checkout)
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


class UnknownDoitVersion(ImportError):
    """The installed doit is not a version whose internals graph/doit_private.py knows."""


def check_doit_version() -> None:
    """Fail unless the installed doit is one this module was written for."""
    import doit

    version = tuple(doit.__version__)
    if version[:len(KNOWN_DOIT)] != KNOWN_DOIT:
        shown = ".".join(str(part) for part in version)
        known = ".".join(str(part) for part in KNOWN_DOIT)
        raise UnknownDoitVersion(
            f"doit {shown} is installed, but this agent relies on internals of doit {known}.x "
            f"(graph/doit_private.py); install doit {known}.x, as pyproject.toml asks, or "
            "check every function of graph/doit_private.py against the new doit first")


_import_doit_lean()
check_doit_version()

# doit's own modules: imported only now, after the lean import and the version check.
from doit.control import TaskControl  # noqa: E402
from doit.dependency import DatabaseException, SqliteDB  # noqa: E402
from doit.exceptions import InvalidDodoFile  # noqa: E402
from doit.loader import TASK_STRING, task_params  # noqa: E402
from doit.plugin import PluginDict  # noqa: E402

F = TypeVar("F", bound=Callable[..., Any])

# --- loading tasks --------------------------------------------------------------------------


def _task_creators(namespace: Mapping[str, Any],
                   command_names: Iterable[str]) -> list[tuple[str, Any, int]]:
    """doit's creator discovery (`doit.loader._get_task_creators`) without tokenizing
    sources: `inspect.getsourcelines` reads and tokenizes each creator's module on every
    boot; the definition line comes from the code object instead."""
    found = []
    for name, ref in namespace.items():
        if ref is task_params:
            continue
        if name.startswith(TASK_STRING) and callable(ref) and hasattr(ref, "__code__"):
            task_name = name[len(TASK_STRING):]
        elif hasattr(ref, "create_doit_tasks"):
            ref = ref.create_doit_tasks
            task_name = getattr(ref, "basename", name)
        else:
            continue
        if task_name in command_names:
            raise InvalidDodoFile(f"Task can't be called '{task_name}' because this is a "
                                  "command name. Please choose another name.")
        code = getattr(ref, "__code__", None) or ref.__func__.__code__
        found.append((task_name, ref, code.co_firstlineno))
    return found


def install_task_creators() -> None:
    """Make doit's loader find task creators with `_task_creators`, and expand task_dep
    wildcards with `_wild_tasks`."""
    import doit.loader

    doit.loader._get_task_creators = _task_creators
    TaskControl._get_wild_tasks = _wild_tasks


# doit's own expansion, for the patterns `_wild_tasks` leaves to it.
_doit_wild_tasks = TaskControl._get_wild_tasks


def _wild_tasks(control: Any, pattern: str) -> list[str]:
    """doit's expansion of a task_dep wildcard (`TaskControl._get_wild_tasks`), in the order
    the tasks were defined. doit calls fnmatch for every task and pattern, compiling a regex
    for each pattern on every boot; the agent's groups only use `PREFIX*` (tasks.Group), a
    prefix test. Any other pattern goes to doit's own expansion."""
    prefix = pattern[:-1]
    if not pattern.endswith("*") or any(char in prefix for char in "*?["):
        found: list[str] = _doit_wild_tasks(control, pattern)
        return found
    return [name for name in control._def_order if name.startswith(prefix)]


def disable_entry_point_plugins() -> None:
    """doit lets any installed package's entry points replace its commands, reporters and
    backends, ahead of our own; an agent running as root must not. (It also spares every
    boot a scan of the installed packages' metadata.)"""
    PluginDict._from_entry_points = lambda self, category: {}


def takes_options_of(doit_execute: Callable[..., Any]) -> Callable[[F], F]:
    """Decorate a command's `_execute(self, **params)` override so that doit passes it the
    options of `doit_execute`: doit picks the options it passes by the names in
    `inspect.signature(cmd._execute)`, which follows `__wrapped__`."""
    def decorate(method: F) -> F:
        method.__wrapped__ = doit_execute  # type: ignore[attr-defined]  # a function attribute inspect reads
        return method

    return decorate


def make_dep_manager(cmd: Any, dep_class: type[Any], params: Mapping[str, Any],
                     dep_file: str) -> Any:
    """A `dep_class` (doit's Dependency or a subclass) over `dep_file`, with the backend,
    file checker and codec `params` choose, as doit's DoitCmdBase.execute makes its own.
    Set as `cmd.dep_manager` before doit's execute makes one, doit uses it instead."""
    return dep_class(cmd._backends.get(params["backend"]), dep_file,
                     checker_cls=cmd.get_checker_cls(params["check_file_uptodate"]),
                     codec_cls=cmd.get_codec_cls(params["codec_cls"]))


# --- tasks and their state ------------------------------------------------------------------

class UptodateCallable:
    """Base of uptodate callable classes whose `__call__` takes (task, values).

    doit reads each uptodate callable's signature at every check to pass `task` and
    `values`; computed from `__call__`, it would be worked out again at every check."""

    __signature__ = inspect.Signature([
        inspect.Parameter("task", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("values", inspect.Parameter.POSITIONAL_OR_KEYWORD)])


def declared_actions(task: Any) -> list[Any]:
    """The task's actions as given. doit's `actions` property would build an action object
    (bound back to its task) for every task of a boot, run or not."""
    return list(task._actions)


def save_values(task: Any, values: Mapping[str, Any]) -> None:
    """Have doit store `values` with the task once it succeeded (what uptodate callables
    read back as `values` at the next check)."""
    task.value_savers.append(lambda: dict(values))


def changed_file_deps(task: Any) -> list[str]:
    """The task's file dependencies doit found changed at its last check."""
    return list(getattr(task, "dep_changed", None) or [])


def ran_before(dep_manager: Any, task_name: str) -> bool:
    """True when doit's state holds a successful run of the task: doit saves "deps:" for
    every task it ran (its `_in` is also true for values only looked up)."""
    return dep_manager._get(task_name, "deps:") is not None


# --- the state database ---------------------------------------------------------------------

IN_MEMORY = ":memory:"


class AgentStateDB(SqliteDB):
    """doit's sqlite3 state backend, reading all rows at once and writing only what changed.

    doit rewrites the row of every task it executed, and a boot always executes the
    goal-state check: an unchanged row still meant a transaction and four fsyncs of the
    state database per boot (milliseconds each on a cloud disk). Rows whose content is
    unchanged are left alone, so a boot with nothing to do commits nothing, and a DB that
    does not exist is created by the first write, so commands that only look create none.
    It reads every row in one query (doit would run one query per task: ~25 on every boot).
    The file format is doit's own: `doit` and the other commands read it with doit's
    SqliteDB. Every method overrides one of SqliteDB's, private ones included.
    """

    _conn: Any  # doit's sqlite3 connection (to memory until the first write, see dump)

    def __init__(self, name: str, codec: Any, **kwargs: Any) -> None:
        # A DB that does not exist yet is created by the first write, not by opening it:
        # the commands that only look (list, info, graph, a cancelled run) create nothing.
        self._create_on_write = name != IN_MEMORY and not os.path.exists(name)
        super().__init__(name, codec, **kwargs)
        # Each task's row as stored, in the codec's encoding; decoded when doit asks.
        # (An expression has no declared type, so sqlite3 hands over the text undecoded.)
        rows = self._conn.execute(
            "select task_id, cast(task_data as text) as stored from doit").fetchall()
        self._as_read: dict[str, str] = {row["task_id"]: row["stored"] for row in rows}

    def _sqlite3(self, name: str) -> Any:
        return super()._sqlite3(IN_MEMORY if self._create_on_write else name)

    def _get_task_data(self, task_id: str) -> dict[str, Any]:
        stored = self._as_read.get(task_id)
        return {} if stored is None else dict(self.codec.decode(stored))

    def in_(self, task_id: str) -> bool:
        return task_id in self._cache or task_id in self._as_read

    def remove(self, task_id: str) -> None:
        self._as_read.pop(task_id, None)  # the row is gone: whatever is set next is new
        super().remove(task_id)

    def remove_all(self) -> None:
        self._as_read.clear()
        super().remove_all()

    def dump(self) -> None:
        encode = self.codec.encode
        self._dirty: set[str] = {task_id for task_id in self._dirty
                                 if encode(self._cache[task_id]) != self._as_read.get(task_id)}
        try:
            if self._create_on_write and self._dirty:
                # The first rows: now the file is made (and Lib.Dir, private, if need be).
                os.makedirs(os.path.dirname(os.path.abspath(self.name)), mode=0o700,
                            exist_ok=True)
                self._conn.close()
                self._create_on_write = False
                self._conn = self._sqlite3(self.name)
            super().dump()
        except (DatabaseException, sqlite3.Error, OSError) as err:
            # A full or read-only Lib.Dir (the crash campaign). The state is a cache (DESIGN
            # rule 5): not saving it costs rework at the next run, never repeated one-shot work.
            import logging

            logging.getLogger("waagent.graph").error(
                "cannot save the run's state in %s (%s): the next run redoes what it cannot "
                "tell is done; make room in Lib.Dir", self.name, err)
