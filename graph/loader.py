"""Build doit's view of the agent: DOIT_CONFIG and one task generator per area and group.

`dodo.py` and the `waagent` command both call `dodo_namespace()`, so the graph is the
same whichever way it is run. Nothing here imports networkx, requests or cryptography:
loading the graph is on the path of every boot.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from conf import ConfigError
from graph.context import Context, make_context
from system.redact import RedactingFilter
from tasks import AREAS, GROUPS, Area, Group, TaskDict

# Variables given as NAME=VALUE on the doit/waagent command line.
KNOWN_VARS = ("root", "conf", "chroot", "media", "wireserver", "hostplugin", "imds",
              "verbose", "force", "full", "user")
STATE_DB = "graph-state.sqlite3"


class LoaderState:
    """What the loader keeps in this process between loads of the graph (the class
    attributes are the defaults)."""

    # The Context of the graph loaded last in this process (commands read it).
    context: Context | None = None
    # Set by the plan command before the graph loads: actions then only record changes.
    plan_mode: bool = False
    # A Context made before doit loaded (`start_early_work`), for the graph to use.
    early_context: Context | None = None


PROCESS = LoaderState()


def command_line_vars() -> dict[str, str]:
    """The NAME=VALUE variables doit collected from the command line."""
    from doit import get_var

    found = {}
    for name in KNOWN_VARS:
        value = get_var(name)
        if value is not None:
            found[name] = value
    return found


def start_early_work(args: list[str]) -> None:
    """Start the boot's slowest independent work before doit loads (`waagent provision`).

    Generating the transport key pair (RSA) runs in a process of its own; started here,
    before the imports and the graph loading that precede gather:vm, it is more
    often done when the certificates need it. The Context made for it is the one the graph
    then uses (same command-line variables), so the work is collected by the tasks.
    """
    from tasks.inputs import start_transport_pair

    pairs = (arg.split("=", 1) for arg in args if "=" in arg)
    variables = {name: value for name, value in pairs if name in KNOWN_VARS}
    if PROCESS.plan_mode:
        return
    try:
        early = PROCESS.early_context = make_context(variables)
    except ConfigError:
        return  # the graph's loading reports it, as for any other command
    start_transport_pair(early)


def state_db_path(ctx: Context) -> Path:
    """doit's state database, kept in Lib.Dir so it moves with the VM's state."""
    return ctx.lib_dir / STATE_DB


def doit_config(ctx: Context) -> dict[str, Any]:
    """DOIT_CONFIG for this run: sqlite3 state under Lib.Dir, provision by default.

    Nothing is created here: every command loads this, and most only look (list, info,
    graph). A run makes Lib.Dir (graph.commands.Run); the state DB is created by its
    first write (graph.doit_private.AgentStateDB)."""
    # Imported here: the reporter imports doit, and `start_early_work` runs before doit loads.
    from graph.reporter import WaagentReporter

    return {
        "backend": "sqlite3",
        "dep_file": str(state_db_path(ctx)),
        "default_tasks": ["provision"],
        "verbosity": 2 if ctx.var("verbose") else 1,
        "reporter": WaagentReporter,
        "check_file_uptodate": "md5",
        # One failed area must not stop the others (a refused disk still lets users log in).
        "continue": True,
    }


def configure_logging(ctx: Context) -> None:
    """Agent log to stderr (journald reads it) and to /var/log/waagent.log in the root.

    The agent's modules log to children of the "waagent" logger; a command that loads
    the graph again in this process (the daemon) replaces the handlers."""
    verbose = bool(ctx.var("verbose")) or ctx.conf.flag("Logs.Verbose")
    log_file = None if PROCESS.plan_mode else _log_file(ctx)
    logger = logging.getLogger("waagent")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    if ctx.conf.flag("Logs.Console"):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        console.addFilter(RedactingFilter())
        logger.addHandler(console)
    if log_file is not None and log_file.parent.is_dir():
        # delay: the file is opened by the first record, so a command that logs
        # nothing (list, info) creates no log file.
        file_handler = logging.FileHandler(log_file, encoding="utf-8", delay=True)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        file_handler.addFilter(RedactingFilter())
        logger.addHandler(file_handler)


def _log_file(ctx: Context) -> Path | None:
    """/var/log/waagent.log as a chroot would open it: a link there is followed inside the
    root, never to the host's file (DESIGN rule 8); None when it would leave the root."""
    from system.errors import RootPathError

    try:
        return ctx.root.follow("var/log/waagent.log")
    except RootPathError as err:
        sys.stderr.write(f"WARNING no log file: {err}\n")
        return None


def _area_creator(area: Area, ctx: Context) -> Callable[[], Iterator[TaskDict]]:
    def create() -> Iterator[TaskDict]:
        for task in _generator(area)(ctx):
            task.setdefault("verbosity", 2 if ctx.var("verbose") else 1)
            yield task

    create.__doc__ = area.doc
    if area.after:
        if not _in_graph(area.after, ctx):
            # What it waits for is not in this configuration's graph (when System Center
            # VMM provisions, nothing is gathered): so neither is the area.
            def create_nothing() -> Iterator[TaskDict]:
                yield from ()

            create_nothing.__doc__ = area.doc
            return create_nothing
        # doit creates the area's tasks once `area.after` ran, in the same run.
        from doit import create_after

        delayed: Callable[[], Iterator[TaskDict]] = create_after(executed=area.after)(create)
        return delayed
    return create


def _generator(area: Area) -> Callable[[Context], Iterator[TaskDict]]:
    """The area's task generator (importing its module)."""
    generate: Callable[[Context], Iterator[TaskDict]] = getattr(
        importlib.import_module(area.module), area.function)
    return generate


def _in_graph(task_name: str, ctx: Context) -> bool:
    """True when `AREA:TASK` is generated with this configuration (generators only read
    the configuration and a few files: cheap)."""
    area_name, _, name = task_name.partition(":")
    area = next(a for a in AREAS if a.name == area_name)
    return any(task.get("name") == name for task in _generator(area)(ctx))


def _group_creator(group: Group) -> Callable[[], TaskDict]:
    def create() -> TaskDict:
        return {"actions": None, "task_dep": group.task_dep, "doc": group.doc}

    create.__doc__ = group.doc
    return create


def dodo_namespace(variables: dict[str, str] | None = None) -> dict[str, Any]:
    """The names doit loads: DOIT_CONFIG and task_<area>/task_<group> creators."""
    from graph.doit_private import install_task_creators

    install_task_creators()
    wanted = variables if variables is not None else command_line_vars()
    try:
        early = PROCESS.early_context
        ctx = early if early is not None and early.vars == wanted and not PROCESS.plan_mode \
            else make_context(wanted, plan=PROCESS.plan_mode)
    except ConfigError as err:
        from doit.exceptions import InvalidDodoFile

        # doit prints it as one line, "ERROR: <file>:<line>: ...", and exits 3.
        raise InvalidDodoFile(str(err)) from None
    PROCESS.context, PROCESS.early_context = ctx, None
    configure_logging(ctx)
    namespace: dict[str, Any] = {"DOIT_CONFIG": doit_config(ctx)}
    for area in AREAS:
        namespace[f"task_{area.name}"] = _area_creator(area, ctx)
    for group in GROUPS:
        namespace[f"task_{group.name}"] = _group_creator(group)
    return namespace


def _run_groups(namespace: dict[str, Any], command: str,
                targets: list[str]) -> tuple[list[str], set[str]] | None:
    """The groups a `run` names (or runs by default) and their areas; None when the
    command is not a run of groups only."""
    names = [t for t in targets if "=" not in t and not t.startswith("-")]
    names = names or list(namespace.get("DOIT_CONFIG", {}).get("default_tasks", []))
    groups = {group.name: group for group in GROUPS}
    if command != "run" or not names or any(name not in groups for name in names):
        return None
    return names, {entry.split(":")[0] for name in names for entry in groups[name].areas}


def for_groups_only(namespace: dict[str, Any], command: str,
                    targets: list[str]) -> dict[str, Any]:
    """The namespace a `run` of groups needs (the boot's `run provision`): the creators of
    the areas those groups name, not the others. Generating an area imports its module,
    and a boot needs neither deprovision nor the serial console. Any other command or
    target (a task, an area: its dependencies may lie in other areas) gets every area."""
    found = _run_groups(namespace, command, targets)
    if found is None:
        return namespace
    names, areas = found
    keep = {f"task_{name}" for name in [*areas, *names]}
    return {key: value for key, value in namespace.items()
            if not key.startswith("task_") or key in keep}
