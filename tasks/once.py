"""Provisioning happens once per VM (DESIGN rule 5): what was done is kept on disk.

A provisioning task is done for a VM when `<Lib.Dir>/provisioning/<vm id>.json` records it,
with the inputs it was done with. Its up-to-date check reads that record and never the
live system: from then on the admin owns the user, keys, sudoers, sshd config and
hostname, and only a change of the task's declared inputs (a conf option it uses, new
platform data, a new VM id) makes it run again.

The action itself writes the record, atomically and durably, right after its work, or
right before it for work that must never be repeated (running custom data). So deleting
doit's state DB, or a SIGKILL before doit saves it, costs no repeated one-shot work:
doit's DB stays a cache.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from graph.context import Context
from graph.uptodate import Check, describe_changes, mask
from system.errors import AgentError
from tasks import TaskDict, call_action, inputs

RECORD_DIR = "provisioning"
_SAFE_ID = frozenset(string.ascii_letters + string.digits + "-")


def record_path(ctx: Context) -> Path:
    """This VM's record: one JSON file per VM id under Lib.Dir."""
    vm = inputs.vm_id(ctx)
    if not vm or not set(vm) <= _SAFE_ID:
        vm = "vm-" + "".join(c if c in _SAFE_ID else "_" for c in vm)[:64]
    return ctx.lib_dir / RECORD_DIR / f"{vm}.json"


def records(ctx: Context) -> dict[str, Any]:
    """Task -> the inputs it was done with, for this VM (empty before its first task)."""
    found = ctx.state.once_records  # this VM's record, read once a run
    if found is None:
        path = record_path(ctx)
        try:
            found = json.loads(path.read_text())
        except FileNotFoundError:
            found = {}
        except (ValueError, UnicodeDecodeError) as err:
            # A record we cannot read cannot say what was done: provisioning would repeat
            # one-shot work (a new password, a second run of custom data). Stop instead.
            raise OnceRecordError(f"{ctx.root.system_path(path)} is unreadable ({err}): it "
                                  "says which provisioning work was done for this VM; restore "
                                  "it, or delete it to provision this VM again") from None
        if not isinstance(found, dict):
            raise OnceRecordError(f"{ctx.root.system_path(path)} does not hold a JSON object")
        ctx.state.once_records = found
    return found


def remember(ctx: Context, task: str, done_with: Mapping[str, Any]) -> None:
    """Record, durably, that `task` was done for this VM with these inputs."""
    if ctx.run.plan:
        return
    updated = {**records(ctx), task: dict(done_with)}
    path = record_path(ctx)
    ctx.fs.mkdir(path.parent, why="per-VM provisioning record", mode=0o700)
    ctx.fs.write(path, json.dumps(updated, sort_keys=True, indent=1) + "\n", mode=0o600,
                 quiet=True, why=f"{task} done for this VM")
    ctx.state.once_records = updated


class OnceRecordError(AgentError):
    """The per-VM provisioning record cannot be read."""


class Done(Check):
    """Up to date while this VM's record says the task was done with the current inputs."""

    def __init__(self, ctx: Context, task: str, compute: Callable[[], Mapping[str, Any]]):
        self.ctx = ctx
        self.name = task
        self.compute = compute
        # The inputs of the last check, which the action records once it has done its work.
        self.current: dict[str, Any] | None = None

    def inputs_now(self) -> dict[str, Any]:
        """The inputs as the record keeps them (secrets as digests)."""
        return dict(mask(dict(self.compute())))

    def __call__(self, task: Any, values: Mapping[str, Any]) -> bool:
        try:
            current = self.current = self.inputs_now()
            done_with = records(self.ctx).get(self.name)
            vm = inputs.vm_id(self.ctx)
        except Exception as err:  # noqa: BLE001 - see Check._cannot_check
            return self._cannot_check(err)
        if done_with == current:
            self.reason = ""
            self.kept = f"provisioned for VM id {vm}; inputs unchanged"
            return True
        self.kept = ""
        self.reason = (f"not done yet for VM id {vm}" if done_with is None
                       else "changed " + describe_changes(done_with, current))
        return False

    def __repr__(self) -> str:
        return f"Done({self.name})"


def once(ctx: Context, area: str, task: TaskDict,
         compute: Callable[[], Mapping[str, Any]], *, record_first: bool = False,
         ) -> TaskDict:
    """The task dict made a once-per-VM task: checked against, and recorded in, the record.

    Its actions are wrapped so that the record is written after them, or before them with
    `record_first` (work that must run at most once even if the agent dies in it).
    """
    name = f"{area}:{task['name']}"
    check = Done(ctx, name, compute)
    work = task["actions"]

    def run_and_record() -> None:
        records(ctx)  # an unreadable record stops the task before any work
        done_with = check.current if check.current is not None else check.inputs_now()
        if record_first:
            remember(ctx, name, done_with)
        for action in work or ():
            call_action(action)
        if not record_first:
            remember(ctx, name, done_with)

    return {**task, "actions": [(run_and_record, [])],
            "uptodate": [check, *task.get("uptodate", [])]}
