"""doit commands as the agent uses them.

`run` takes the agent's lock and turns SIGTERM into KeyboardInterrupt so doit saves
the state of finished tasks; `reset-dep` and `strace` are refused: the first marks
tasks done without doing them, the second runs actions outside the agent's rules.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from typing import Any

from doit.cmd_base import DoitCmdBase
from doit.cmd_run import Run as DoitRun
from doit.plugin import PluginDict

from graph import loader
from graph.lock import LOCK_FILE
from graph.statedb import AgentStateDB


class AgentBusy(RuntimeError):
    """Another agent run holds the lock."""


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def disable_entry_point_plugins() -> None:
    """doit lets any installed package's entry points replace its commands, reporters and
    backends, ahead of our own; an agent running as root must not. (Each scan of the
    installed packages' metadata is also ~1-2 ms of every boot.)"""
    PluginDict._from_entry_points = lambda self, category: {}


class Run(DoitRun):
    """Run tasks (the default command) under the agent's lock."""

    def __init__(self, **kwargs: Any) -> None:
        # Plain `doit` from a checkout has scanned for commands before loading this one;
        # the reporters and backends it looks up next are the agent's own.
        disable_entry_point_plugins()
        super().__init__(**kwargs)

    def get_backends(self) -> Any:
        backends = super().get_backends()
        backends["sqlite3"] = AgentStateDB
        return backends

    def execute(self, params: Any, args: Any) -> Any:
        # The loader reads the namespace (dodo.py's, or the waagent command's) in execute;
        # a run of groups, such as the boot's, then needs only those groups' areas.
        task_loader = self.loader
        load_all = task_loader.load_tasks

        def load_needed(cmd: Any, pos_args: list[str]) -> Any:
            loader.start_run_work(task_loader.namespace, cmd.name, pos_args)
            task_loader.namespace = loader.for_groups_only(task_loader.namespace, cmd.name,
                                                           pos_args)
            return load_all(cmd, pos_args)

        task_loader.load_tasks = load_needed
        try:
            return super().execute(params, args)
        finally:
            del task_loader.load_tasks

    def _execute(self, **params: Any) -> Any:
        ctx = loader.CURRENT
        lock_fd = None
        if ctx is not None and ctx.lib_dir.is_dir():
            lock_fd = os.open(ctx.lib_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                sys.stderr.write(f"waiting for another agent run ({ctx.lib_dir / LOCK_FILE})\n")
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return super()._execute(**params)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if lock_fd is not None:
                os.close(lock_fd)


    # doit passes options by the names in _execute's signature: show it doit's own.
    _execute.__wrapped__ = DoitRun._execute  # type: ignore[attr-defined]


class _Refused(DoitCmdBase):
    reason = ""

    def execute(self, params: Any, args: Any) -> int:
        sys.stderr.write(f"{self.name}: not available in this agent: {self.reason}\n")
        return 3


class ResetDep(_Refused):
    """Refused: it would mark tasks done that never ran."""

    name = "reset-dep"
    doc_purpose = "refused: would mark tasks done without running them"
    reason = "it marks tasks up to date without doing their work; use `forget` and `run`"


class Strace(_Refused):
    """Refused: it bypasses the agent's system boundary."""

    name = "strace"
    doc_purpose = "refused: runs actions outside the agent's rules"
    reason = "it runs actions under strace outside the agent's Runner"


# The agent's own doit commands, as "module:Class" so each loads only when used
# (pyproject.toml's [tool.doit.plugins.command] lists the same for plain `doit`).
EXTRA_COMMANDS = {
    "plan": "graph.plan:Plan",
    "graph": "graph.render:Graph",
    "status": "graph.status:Status",
    "facts": "graph.factscmd:Facts",
}


def extra_commands() -> dict[str, str]:
    """Our commands whose module exists in this tree (areas land one issue at a time)."""
    from importlib.util import find_spec

    return {name: where for name, where in EXTRA_COMMANDS.items()
            if find_spec(where.split(":")[0]) is not None}
