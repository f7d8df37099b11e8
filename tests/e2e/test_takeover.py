"""This agent replacing waagent on a running VM: the published agent (waagent 2.7.3, Debian's
package) provisions the VM, an admin changes it, then our daemon starts as the service would
after the package swap. Nothing of provisioning is done again (tasks/once.py adopts the VM
that waagent's `provisioned` marker names): the host keys, the password, the admin's
hostname, authorized keys and sudoers stay; Ready is reported; the user still logs in; the
extension waagent installed is enabled, not installed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from fabric.scenario import default_scenario_path
from tests.e2e import harness
from tests.e2e.conftest import checked_lab, need_lab

pytestmark = [pytest.mark.e2e, pytest.mark.root]

WAIT = 300.0  # waagent 2.7.3 takes its time: IMDS, telemetry


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def handler_ready(blob: dict[str, Any]) -> bool:
    handlers = blob["status"].get("aggregateStatus", {}).get("handlerAggregateStatus", [])
    return bool(handlers) and all(h.get("status") == "Ready" for h in handlers)


def waagent_pids(lab: harness.Lab) -> list[int]:
    """waagent 2.7.3's processes in the VM: its daemon and its extension handler."""
    found = []
    for pid in harness.namespace_pids(lab.net.vm_ns):
        try:
            if b"/usr/sbin/waagent" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except FileNotFoundError:
            pass  # gone meanwhile
    return found


def stop_waagent(lab: harness.Lab) -> None:
    """The package swap stops the service: waagent's daemon and its extension handler."""
    for pid in waagent_pids(lab):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    harness.wait_until(lambda: not waagent_pids(lab), 30, "waagent 2.7.3 stopped")


def test_our_daemon_takes_over_a_vm_waagent_provisioned(tmp_path: Path) -> None:
    need_lab(harness.WAAGENT_PACKAGES)
    with checked_lab(tmp_path, default_scenario_path(), conf=None,
                     packages=harness.WAAGENT_PACKAGES, prepare=harness.prepare_both_agents) as lab:
        lab.vm.dhcp()
        root, user = lab.root, lab.scenario.username
        theirs = lab.vm.popen(["/usr/sbin/waagent", "-daemon"], tmp_path / "waagent.log")
        try:
            lab.fabric.wait_for_health("Ready", WAIT)
            marker = root / "var/lib/waagent/provisioned"
            harness.wait_until(marker.exists, 60, "waagent's provisioned marker")
            harness.wait_until(lambda: any(handler_ready(b) for b in lab.fabric.status_blobs()),
                               WAIT, "the extension enabled by waagent 2.7.3")
        finally:
            harness.stop(theirs)
            stop_waagent(lab)
        lab.vm.start_sshd()  # the lab has no init: sshd starts by hand, as in test_vm
        assert lab.ssh("true").returncode == 0, "waagent 2.7.3 provisioned a VM one logs into"

        # What the VM's admin owns from now on.
        host_keys = {p.name: digest(p) for p in (root / "etc/ssh").glob("ssh_host_*")}
        shadow = (root / "etc/shadow").read_text()
        keys_file = root / "home" / user / ".ssh/authorized_keys"
        kept_key = keys_file.read_text().splitlines()[0] + "\n"
        edits = {keys_file: kept_key,
                 root / "etc/hostname": "renamed-by-admin\n",
                 root / "etc/sudoers.d/waagent": f"{user} ALL=(ALL) /usr/bin/true\n"}
        for path, text in edits.items():
            path.write_text(text)
        readies = len([h for h in lab.fabric.health_reports() if h["state"] == "Ready"])

        ours = lab.vm.popen(["/" + harness.AGENT_LAUNCHER, "-daemon"], tmp_path / "ours.log")
        try:
            harness.wait_until(
                lambda: len([h for h in lab.fabric.health_reports()
                             if h["state"] == "Ready"]) > readies, WAIT, "Ready from ours")
            blobs = len(lab.fabric.status_blobs())
            harness.wait_until(
                lambda: any(handler_ready(b) for b in lab.fabric.status_blobs()[blobs:]),
                WAIT, "a status blob of ours with the extension Ready")
        finally:
            harness.stop(ours)
        said = (tmp_path / "ours.log").read_text(errors="replace")

        assert not [h for h in lab.fabric.health_reports()
                    if h.get("substatus") == "ProvisioningFailed"], said[-3000:]
        assert {p.name: digest(p) for p in (root / "etc/ssh").glob("ssh_host_*")} == host_keys
        assert (root / "etc/shadow").read_text() == shadow, "the password was set again"
        for path, text in edits.items():
            assert path.read_text() == text, f"{path} was reverted"
        assert "recorded as done, nothing done again" in said, said[-3000:]
        assert lab.ssh("true").returncode == 0, "the user no longer logs in"
        # The handler waagent installed is enabled again, as at any agent start, not
        # installed again.
        assert "Fabric.Demo.NoOp-1.0.0: enable exited with status 0" in said, said[-3000:]
        assert "install exited" not in said, said[-3000:]
