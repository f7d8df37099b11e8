"""doit commands as the agent uses them.

`run` takes the agent's lock; SIGTERM lets the running task finish, then stops the run
(the reporter raises KeyboardInterrupt before the next task) so doit saves the state of
finished tasks; `reset-dep` and `strace` are refused: the first marks
tasks done without doing them, the second runs actions outside the agent's rules.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from typing import Any

from doit.cmd_base import DoitCmdBase
from doit.cmd_info import Info as DoitInfo
from doit.cmd_run import Run as DoitRun

from graph import doit_private, loader
from graph.context import Context
from graph.doit_private import AgentStateDB
from graph.lock import LOCK_FILE

# Every command opens doit's state through the agent's backend (it creates no DB file to
# look at one); pyproject.toml says the same for plain `doit`.
PLUGINS = {"BACKEND": {"sqlite3": "graph.doit_private:AgentStateDB"}}
# Exit status of a command naming a task the graph does not hold (doit's for a bad command).
NOT_IN_GRAPH = 3


class AgentBusy(RuntimeError):
    """Another agent run holds the lock."""


def _stop_after_running_task(previous: Any) -> Any:
    """A SIGTERM handler for a run: the reporter stops the run before its next task; a
    handler installed before (the daemon's) hears of it too."""
    def on_sigterm(signum: int, frame: Any) -> None:
        from graph.reporter import request_stop

        request_stop(f"signal {signum}")
        if callable(previous):
            previous(signum, frame)

    return on_sigterm


class Run(DoitRun):
    """Run tasks (the default command) under the agent's lock."""

    def __init__(self, **kwargs: Any) -> None:
        # Plain `doit` from a checkout has scanned for commands before loading this one;
        # the reporters and backends it looks up next are the agent's own.
        doit_private.disable_entry_point_plugins()
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
            task_loader.namespace = loader.for_groups_only(task_loader.namespace, cmd.name,
                                                           pos_args)
            return load_all(cmd, pos_args)

        task_loader.load_tasks = load_needed
        try:
            return super().execute(params, args)
        finally:
            del task_loader.load_tasks

    # doit passes options by the names in _execute's signature: show it doit's own.
    @doit_private.takes_options_of(DoitRun._execute)
    def _execute(self, **params: Any) -> Any:
        ctx = loader.PROCESS.context
        lock_fd = None
        if ctx is not None and not ctx.lib_dir.exists() and not self._deprovision_only():
            ctx.fs.mkdir(ctx.lib_dir, why="agent state directory", mode=0o700)
        if ctx is not None and ctx.lib_dir.is_dir():
            lock_fd = os.open(ctx.lib_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                sys.stderr.write(f"waiting for another agent run ({ctx.lib_dir / LOCK_FILE})\n")
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _stop_after_running_task(previous))
        try:
            return super()._execute(**params)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if lock_fd is not None:
                os.close(lock_fd)

    def _deprovision_only(self) -> bool:
        """True for a run of deprovision tasks only: it empties the agent's state, and a
        cancelled one must leave the root as it was, so it creates no state directory."""
        selected = list(getattr(self, "sel_tasks", None) or [])
        return bool(selected) and all(name.split(":")[0] == "deprovision" for name in selected)


# Provisioning areas that only exist when this agent provisions (tasks.inputs.mode), and
# what cloud-init (or nobody) then does in their place.
PROVISIONING_WORK = {"gather": "reads the OVF", "hostname": "sets the hostname",
                     "publish": "publishes the hostname", "user": "provisions the user",
                     "ssh": "sets up SSH", "customdata": "handles custom data"}
# Tasks generated only when a waagent.conf flag is set.
FLAG_TASKS = {"user:rootpw": "Provisioning.DeleteRootPassword",
              "ssh:hostkeys": "Provisioning.RegenerateSshHostKeyPair",
              "customdata:run": "Provisioning.ExecuteCustomData"}
# Tasks generated only in one provisioning mode (gather:vm and gather:goalstate always are).
MODE_TASKS = {"gather:ovf": "waagent", "report:standdown": "waagent",
              "report:cloudinit": "cloud-init"}
ALWAYS = ("gather:vm", "gather:goalstate")


def absent_task_reason(ctx: Context, name: str) -> str:
    """Why the graph of this configuration holds no task `name`, from the decisions the
    generators make (tasks.inputs.mode, conf flags)."""
    from tasks import AREAS, GROUPS
    from tasks.inputs import mode

    area_name = name.split(":")[0]
    area = next((a for a in AREAS if a.name == area_name), None)
    if area is None:
        return (f"{name} is not in this graph: there is no area {area_name!r} (areas: "
                f"{', '.join(a.name for a in AREAS)}; groups: "
                f"{', '.join(g.name for g in GROUPS)})")
    head = f"{name} is not in this graph: "
    who = mode(ctx)
    needed = MODE_TASKS.get(name)
    if who != "waagent" and name not in ALWAYS and (
            area_name in PROVISIONING_WORK or needed == "waagent"):
        work = PROVISIONING_WORK.get(area_name, "provisions")
        return head + f"{_mode_setting(ctx, who)}, so " + (
            f"cloud-init {work}" if who == "cloud-init" else
            f"System Center VMM's installer {work}" if who == "scvmm" else f"nothing {work}")
    if needed is not None and who != needed:
        return head + f"it runs only when {needed} provisions, and {_mode_setting(ctx, who)}"
    if name in FLAG_TASKS and not ctx.conf.flag(FLAG_TASKS[name]):
        return head + f"{FLAG_TASKS[name]}=n"
    return (head + f"not generated with this configuration (area {area_name}: {area.doc}); "
            f"`waagent list {area_name}` shows the tasks it has")


def _mode_setting(ctx: Context, who: str) -> str:
    """The waagent.conf setting (or fact) that made `who` the provisioning agent."""
    conf = ctx.conf
    agent = conf.text("Provisioning.Agent") or "auto"
    if who == "scvmm":
        return "DetectScvmmEnv=y and the DVD holds System Center VMM's linuxosconfiguration.xml"
    if who == "disabled":
        return ("Provisioning.Enabled=n" if not conf.flag("Provisioning.Enabled")
                else "Provisioning.Agent=disabled")
    if who == "cloud-init" and agent != "cloud-init" and conf.flag("Provisioning.UseCloudInit"):
        return "Provisioning.UseCloudInit=y"
    if who == "cloud-init" and agent == "auto":
        return "Provisioning.Agent=auto and cloud-init is enabled in this root"
    return f"Provisioning.Agent={agent}"


def missing_tasks(task_list: Any, names: Any) -> list[str]:
    """The names (not wildcards) that name no task of the loaded graph."""
    known = {task.name for task in task_list}
    return [name for name in names or [] if "*" not in name and name not in known]


def explain_missing(names: list[str]) -> int:
    """Say on stderr why each task is absent; the exit status of such a command."""
    ctx = loader.PROCESS.context
    for name in names:
        reason = (absent_task_reason(ctx, name) if ctx is not None
                  else f"{name} is not in this graph")
        sys.stderr.write(f"ERROR: {reason}\n")
    return NOT_IN_GRAPH


class Info(DoitInfo):
    """doit's `info`; a task this configuration does not generate is explained."""

    def _execute(self, pos_args: Any, hide_status: bool = False) -> Any:
        missing = missing_tasks(self.task_list, pos_args[:1])
        if missing:
            return explain_missing(missing)
        return super()._execute(pos_args, hide_status)


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
