"""Tell the platform how provisioning goes: NotReady/Provisioning, then Ready.

report:cloudinit     (cloud-init provisions) wait for its ovf-env.xml and host keys
report:provisioned   `<Lib.Dir>/provisioned` holds this VM's id
report:ready         Ready, once per VM and goal state incarnation
report:standdown     ProvisionGuestAgent=false: the agent stands down after Ready
report:hostkey       the SSH host key's fingerprint (a role property), after Ready as the
                     platform's agent sends it: Ready does not wait for it

NotReady/Provisioning goes out with the first goal state of a VM that is not
provisioned yet (`report_provisioning`, called by gather:goalstate), before any
provisioning work. A failure in a critical area is reported as
NotReady/ProvisioningFailed by `report_failure`, which the run's reporter calls at
the end of the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from graph.context import Context
from graph.uptodate import Inputs, Probe
from system.errors import AgentError
from tasks import AREAS, TaskDict, inputs

log = logging.getLogger("waagent.report")

DISABLE_AGENT_FILE = "disable_agent"
CLOUD_INIT_WAIT = 300.0


class CloudInitTimeout(AgentError):
    """cloud-init did not provision in time."""


def critical_areas() -> list[str]:
    """The tasks of the critical areas, by wildcard: naming the groups themselves would
    make doit wait for the group nodes and run later areas (the disk) first."""
    return [f"{a.name}:*" for a in AREAS if a.critical and a.name not in ("gather", "report")]


def generate(ctx: Context) -> Iterator[TaskDict]:
    mode = inputs.mode(ctx)
    if mode == "scvmm":
        return  # System Center VMM provisions: no Azure platform to report to
    before_marker = ["gather:goalstate"]
    if mode == "waagent":
        before_marker += critical_areas()
    elif mode == "cloud-init":
        yield {
            "name": "cloudinit",
            "doc": "wait for cloud-init's ovf-env.xml and SSH host keys",
            "actions": [(wait_for_cloud_init, [ctx])],
            "task_dep": ["gather:goalstate"],
            "uptodate": [Probe("cloudinit", lambda: None if inputs.is_provisioned(ctx)
                               else "cloud-init has not been seen to finish")],
        }
        before_marker.append("report:cloudinit")
    yield {
        "name": "provisioned",
        "doc": "mark this VM provisioned (<Lib.Dir>/provisioned holds its id)",
        "actions": [(mark_provisioned, [ctx])],
        "task_dep": before_marker,
        "uptodate": [Probe("provisioned", lambda: None if inputs.is_provisioned(ctx)
                           else "provisioned marker does not hold this VM's id")],
    }
    yield {
        "name": "ready",
        "doc": "report Ready to the platform",
        "actions": [(report_ready, [ctx])],
        "task_dep": ["report:provisioned"],
        "uptodate": [Inputs("ready", lambda: {
            "vm_id": inputs.vm_id(ctx),
            "incarnation": inputs.goal_facts(ctx)["incarnation"]})],
    }
    if mode == "waagent":
        yield {
            "name": "standdown",
            "doc": "stand the agent down when the OVF says ProvisionGuestAgent=false",
            "actions": [(stand_down_if_asked, [ctx])],
            "task_dep": ["report:ready"],
            "uptodate": [Inputs("standdown", lambda: {
                "vm_id": inputs.vm_id(ctx),
                "provision_guest_agent": inputs.ovf_facts(ctx)["provision_guest_agent"]})],
        }
        yield {
            "name": "hostkey",
            "doc": "report the SSH host key fingerprint to the platform",
            "actions": [(report_host_key, [ctx])],
            "task_dep": ["report:ready", "ssh:reload"],
            "uptodate": [Inputs("hostkey-report", lambda: {
                "vm_id": inputs.vm_id(ctx), "thumbprint": _host_key_thumbprint(ctx)})],
        }


def _post(ctx: Context, report: Any, *, patient: bool = False) -> None:
    from wire.http import READY_REPORT_RETRY

    state = inputs.goal_state(ctx)
    label = report.state + (f"/{report.substatus}" if report.substatus else "")
    # Recorded in a run too: a report is a change (the run report counts changes).
    ctx.run.record("report", f"health {label}", "to the platform")
    if ctx.run.plan:
        return
    inputs.wireserver(ctx).report_health(state, report,
                                         retry=READY_REPORT_RETRY if patient else None)


def report_provisioning(ctx: Context) -> None:
    """NotReady/Provisioning: the platform sees the agent at work."""
    from wire.reports import HealthReport

    _post(ctx, HealthReport.provisioning("Provisioning"))


def wait_for_cloud_init(ctx: Context) -> None:
    """cloud-init writes ovf-env.xml to Lib.Dir and makes host keys; wait for both."""
    ssh_dir = ctx.root / ctx.conf.required_path("OS.SshDir")
    deadline = time.monotonic() + CLOUD_INIT_WAIT
    while True:
        ovf = (ctx.lib_dir / "ovf-env.xml").exists()
        keys = any(ssh_dir.glob("ssh_host_*_key.pub"))
        if ovf and keys:
            return
        if ctx.run.plan:
            ctx.run.record("wait", "cloud-init's ovf-env.xml and host keys", "cloud-init")
            return
        if time.monotonic() > deadline:
            missing = [x for x, ok in (("ovf-env.xml", ovf), ("host keys", keys)) if not ok]
            raise CloudInitTimeout(f"cloud-init provisions this VM (Provisioning.Agent) but "
                                   f"after {CLOUD_INIT_WAIT:.0f} s there is no "
                                   f"{' and no '.join(missing)}")
        time.sleep(1)


def mark_provisioned(ctx: Context) -> None:
    ctx.fs.write(ctx.lib_dir / inputs.PROVISIONED_FILE, inputs.vm_id(ctx) + "\n", mode=0o600,
                 why="this VM is provisioned")


def report_ready(ctx: Context) -> None:
    from wire.reports import HealthReport

    # The platform waits up to 40 minutes for Ready: retry for minutes, not seconds.
    _post(ctx, HealthReport.ready(), patient=True)


def stand_down_if_asked(ctx: Context) -> None:
    marker = ctx.lib_dir / DISABLE_AGENT_FILE
    try:
        asked = inputs.ovf_facts(ctx)["provision_guest_agent"]
    except inputs.NotProvisionable:
        if not inputs.is_provisioned(ctx):
            raise
        return  # a provisioned VM whose OVF data is gone (gather:ovf): nothing new to obey
    if asked:
        ctx.fs.remove(marker, why="ProvisionGuestAgent is true")
        return
    ctx.fs.write(marker, "", mode=0o600, why="ProvisionGuestAgent=false: agent stands down")


def _host_key_thumbprint(ctx: Context) -> str:
    from tasks.ssh import host_key_thumbprint

    return host_key_thumbprint(ctx)


def report_host_key(ctx: Context) -> None:
    """Tell the platform the host key fingerprint (shown to the VM's owner)."""
    state = inputs.goal_state(ctx)
    # Recorded in a run too: a report is a change (the run report counts changes).
    ctx.run.record("report", "role property CertificateThumbprint", "host key fingerprint")
    if ctx.run.plan:
        return
    inputs.wireserver(ctx).report_role_properties(
        state, {"CertificateThumbprint": _host_key_thumbprint(ctx)})


def report_failure(ctx: Context, message: str) -> None:
    """NotReady/ProvisioningFailed with the first failure's message; never raises."""
    from wire.reports import HealthReport

    try:
        _post(ctx, HealthReport.failed(message))
    except Exception as err:  # the run already failed; say why the report did too
        log.error("could not report ProvisioningFailed to the platform: %s", err)
