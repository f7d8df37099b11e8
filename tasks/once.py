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

A VM whose `<Lib.Dir>/provisioned` marker says it is provisioned while this agent has no
record of it was provisioned before this agent ran on it: by waagent, which this agent
replaced on a running VM. Its provisioning tasks are then adopted: their current inputs
are recorded as done, without their work (no new host keys, no password set again, custom
data not run again), as waagent does nothing of provisioning for a provisioned VM. The
record says so (`adopted`) before the first task's entry, so a SIGKILL halfway through the
adoption adopts the rest at the next start. From then on an adopted task is like any
other done task: a change of its inputs runs it again. This agent's own provisioning
writes records before the marker, so it never adopts.
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from graph.context import Context
from graph.uptodate import Check, describe_changes, mask
from system.errors import AgentError
from tasks import TaskDict, call_action, inputs

log = logging.getLogger("waagent.once")

RECORD_DIR = "provisioning"
ADOPTED = "adopted"  # a record's entry: this VM was provisioned before the record began
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


def provisioned_before_record(ctx: Context) -> bool:
    """Whether this VM was provisioned before this agent kept a record of it (see the
    module): the record says it adopted the VM, or it is empty and the marker says
    provisioned."""
    found = records(ctx)
    return ADOPTED in found or (not found and inputs.is_provisioned(ctx))


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
        # The last check found the task done before this record existed (see the module).
        self.adopting = False

    def inputs_now(self) -> dict[str, Any]:
        """The inputs as the record keeps them (secrets as digests)."""
        return dict(mask(dict(self.compute())))

    def __call__(self, task: Any, values: Mapping[str, Any]) -> bool:
        self.adopting = False
        try:
            current = self.current = self.inputs_now()
            done_with = records(self.ctx).get(self.name)
            vm = inputs.vm_id(self.ctx)
            self.adopting = done_with is None and provisioned_before_record(self.ctx)
        except inputs.NotProvisionable as err:
            if not inputs.is_provisioned(self.ctx):
                return self._cannot_check(err)
            # No OVF data left to compare with (gather:ovf said so): no new platform data.
            self.reason = ""
            self.kept = "this VM is provisioned; no OVF data left to compare its inputs with"
            return True
        except Exception as err:  # noqa: BLE001 - see Check._cannot_check
            return self._cannot_check(err)
        if done_with == current:
            self.reason = ""
            self.kept = f"provisioned for VM id {vm}; inputs unchanged"
            return True
        self.kept = ""
        if self.adopting:
            self.reason = (f"VM id {vm} was provisioned before this agent kept a record "
                           "(the provisioned marker says so): recorded as done, not done again")
        elif done_with is None:
            self.reason = f"not done yet for VM id {vm}"
        else:
            self.reason = "changed " + describe_changes(done_with, current)
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
        if check.adopting:
            marker = ctx.lib_dir / inputs.PROVISIONED_FILE
            if ADOPTED not in records(ctx):
                remember(ctx, ADOPTED, {"marker": inputs.provisioned_vm_id(ctx)})
            log.info("%s: this VM was provisioned before this agent kept a record of it "
                     "(%s): recorded as done, nothing done again", name,
                     ctx.root.system_path(marker))
            remember(ctx, name, done_with)
            return
        if record_first:
            remember(ctx, name, done_with)
        for action in work or ():
            call_action(action)
        if not record_first:
            remember(ctx, name, done_with)

    return {**task, "actions": [(run_and_record, [])],
            "uptodate": [check, *task.get("uptodate", [])]}
