"""Gather the facts provisioning decides from: this VM, its OVF data, the goal state.

gather:vm        VM id and distribution; a new VM id (a VM from a captured image)
                 clears the previous VM's state so everything provisions again
gather:ovf       ovf-env.xml from the DVD (or `media=` image), kept without password
gather:goalstate the goal state: runs every time, it is how changes reach the VM; for a
                 VM not provisioned yet it also tells the platform NotReady/Provisioning
                 (first, before any provisioning work). Its certificates are installed by
                 the `certificates` area.
gather:extensions the extensions goal state (ExtensionsConfig or FastTrack vmSettings, the
                 newer), for a new goal state or when the daemon saw a new vmSettings ETag.
                 A task of its own so that the provision group can read it after Ready:
                 nothing on the way to Ready needs the extensions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from facts.store import GoalStateFacts, VmFacts
from graph.context import Context, RunState
from graph.uptodate import Inputs, Probe
from tasks import TaskDict, inputs

if TYPE_CHECKING:
    from wire.documents import GoalState

log = logging.getLogger("waagent.gather")

# Per-VM files in Lib.Dir that a new VM must not inherit.
PER_VM_PATTERNS = ("*.crt", "*.prv", "ovf-env.xml", "CustomData", "published_hostname",
                   inputs.PROVISIONED_FILE, "WireServerEndpoint", "facts", "disable_agent")


def generate(ctx: Context) -> Iterator[TaskDict]:
    """The gather tasks; the OVF is read only when this agent provisions."""
    if inputs.mode(ctx) == "scvmm":
        return  # System Center VMM provisions: no Azure platform to ask (tasks/scvmm.py)
    provisioning = inputs.mode(ctx) == "waagent"
    yield {
        "name": "vm",
        "doc": "VM id and distribution; clear per-VM state when the VM id changed",
        "actions": [(gather_vm, [ctx])],
        "uptodate": [Inputs("vm", lambda: vm_summary(ctx))],
    }
    if provisioning:
        yield {
            "name": "ovf",
            "doc": "read ovf-env.xml from the DVD and keep a copy without the password",
            "actions": [(gather_ovf, [ctx])],
            "task_dep": ["gather:vm"],
            "uptodate": [Probe("ovf", lambda: ovf_missing(ctx))],
        }
    yield {
        "name": "goalstate",
        "doc": "fetch the goal state from the WireServer (NotReady for a new VM)",
        "actions": [(gather_goal_state, [ctx])],
        "task_dep": ["gather:vm"],
    }
    # Its own check, so that the action can tell a new goal state (both documents are
    # read) from a new vmSettings ETag alone (vmSettings only).
    new_goal_state = Inputs("extensions-goal-state", lambda: {
        "goal_state": inputs.handled_goal_state(ctx)})
    yield {
        "name": "extensions",
        "doc": "the extensions goal state: ExtensionsConfig or FastTrack vmSettings, the newer",
        "actions": [(gather_extensions_of, [ctx, new_goal_state])],
        "task_dep": ["gather:goalstate"],
        "uptodate": [new_goal_state, Inputs("extensions-source", lambda: extensions_source(ctx))],
    }


def extensions_source(ctx: Context) -> dict[str, Any]:
    """What the extensions goal state comes from (tasks/extensions.py)."""
    from tasks.extensions import source_inputs

    return source_inputs(ctx)


def gather_extensions_of(ctx: Context, new_goal_state: Inputs) -> None:
    """gather:extensions: with the goal state when it is not the one last gathered from
    (its check gave a reason to run), else for a new vmSettings alone (tasks/extensions.py)."""
    from tasks.extensions import gather_extensions

    gather_extensions(ctx, inputs.goal_state(ctx) if new_goal_state.reason else None)


def vm_summary(ctx: Context) -> dict[str, Any]:
    """The VM facts a rerun depends on."""
    found = inputs.distro(ctx)
    return {"vm_id": inputs.vm_id(ctx), "family": found.family, "distro": found.id,
            "version": found.version}


def gather_vm(ctx: Context) -> None:
    """Store VM facts; a marker of another VM means this root was captured: start afresh."""
    current = inputs.vm_id(ctx)
    previous = inputs.provisioned_vm_id(ctx)
    if previous is not None and not inputs.marker_names_this_vm(previous, current):
        clear_per_vm_state(ctx, previous, current)
    inputs.start_transport_pair(ctx)
    found = inputs.distro(ctx)
    facts: VmFacts = {
        "vm_id": current, "family": found.family, "distro": found.id, "version": found.version,
        "init_system": found.init_system, "dhcp_client": found.dhcp_client,
        "sshd_service": found.sshd_service, "cloud_init_enabled": found.cloud_init_enabled,
    }
    inputs.keep_facts(ctx, "vm", facts)


def clear_per_vm_state(ctx: Context, previous: str, current: str) -> None:
    """Remove the previous VM's certificates, OVF copy, custom data and markers."""
    log.info(
        "VM id changed (%s -> %s): this is a new VM from a captured image; "
        "clearing the previous VM's state", previous, current)
    for pattern in PER_VM_PATTERNS:
        for path in sorted(ctx.lib_dir.glob(pattern)):
            ctx.fs.remove(path, why=f"state of the previous VM {previous}")
    # Facts read so far may be the old VM's; a transport key pair being made is this VM's.
    # In a plan the removals were only recorded: the plan must not read those files.
    fresh = RunState()
    fresh.transport_pair, fresh.planned_clear = ctx.state.transport_pair, ctx.run.plan
    ctx.state = fresh


def ovf_missing(ctx: Context) -> str | None:
    """Up to date when this VM is provisioned and its OVF facts are stored."""
    if inputs.stored_facts(ctx, "ovf") is None:
        return "no OVF facts stored"
    if not inputs.is_provisioned(ctx):
        return "this VM is not provisioned yet"
    return None


def gather_ovf(ctx: Context) -> None:
    """Read the provisioning data; store its public facts when read from real media."""
    data = inputs.provisioning_data(ctx)
    if data is None and inputs.is_provisioned(ctx):
        # Provisioned already (perhaps by waagent, before this agent replaced it): there is
        # nothing to provision from, and nothing that needs it (tasks/once.py).
        log.warning("no provisioning data (no DVD with ovf-env.xml, no kept copy in "
                    "Lib.Dir); this VM is provisioned: its provisioning is left as it is")
        return
    if data is None:
        raise inputs.NotProvisionable(
            "no provisioning data: no DVD with ovf-env.xml (looked for /dev/sr0, hd[c-z], "
            "cdrom*, cd[0-9], vd[b-z]) and no kept copy in Lib.Dir; attach the provisioning "
            "media or set Provisioning.Enabled=n")
    if data.from_cache and inputs.stored_facts(ctx, "ovf") is not None:
        # The copy has no password: keep the facts of the boot that read the DVD.
        return
    facts = data.env.public_facts()
    facts["source"] = data.source
    inputs.keep_facts(ctx, "ovf", facts)
    ctx.state.ovf_facts = None


def gather_goal_state(ctx: Context) -> None:
    """Fetch the goal state and store its facts; NotReady/Provisioning for a new VM.

    The document the stored facts came from is not parsed again. Its certificates are
    the `certificates` area's: they wait for the transport key pair; its extensions are
    gather:extensions'.
    """
    state = None if inputs.goal_state_unchanged(ctx) else inputs.goal_state(ctx)
    if not inputs.is_provisioned(ctx) and inputs.mode(ctx) != "disabled":
        from tasks.report import report_provisioning

        report_provisioning(ctx)
    if state is not None:
        store_goal_facts(ctx, state)


def store_goal_facts(ctx: Context, state: GoalState) -> None:
    """The goal state's facts the other tasks fingerprint."""
    facts: GoalStateFacts = {
        "incarnation": state.incarnation,
        "container_id": state.container_id,
        "role_instance_id": state.role_instance_id,
        "has_certificates": bool(state.certificates_url),
        "sha256": inputs.goal_state_digest(state.xml),
    }
    inputs.keep_facts(ctx, "goalstate", facts)
