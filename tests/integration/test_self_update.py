"""Self-update on a sandbox root: the fabric offers this checkout, packaged with a higher
version, as the agent family's newest; the daemon downloads it (HostGAPlugin first),
installs it in Lib.Dir and the launcher runs it in the same process. A version that
crashes at start is run three times, then blacklisted and the installed agent runs
again. With AutoUpdate.Enabled=n nothing changes.

Nothing restarts a daemon that exits here: `restart_until_up` plays systemd's
`Restart=always` (the unit's) by starting it again.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric import Fabric, default_scenario
from graph.agent_package import build_package
from graph.version import AGENT_NAME, AGENT_VERSION
from tests.conftest import need_root, need_tools
from tests.integration.test_daemon import FAST, DaemonHarness

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
NEWER = f"{AGENT_VERSION}.1"
CONF = FAST + "Autoupdate.Frequency=1\n"


def offer(harness: DaemonHarness, package: bytes, offered: str = NEWER, **rsm: object) -> None:
    path = harness.tmp / f"agent-{offered}.zip"
    path.write_bytes(package)
    harness.fabric.set_agent_family(versions=[{"version": offered, "package": str(path)}], **rsm)


def agent_versions(harness: DaemonHarness) -> list[str]:
    """guestAgentStatus.version of every status blob so far."""
    return [blob["status"]["aggregateStatus"]["guestAgentStatus"]["version"]
            for blob in harness.fabric.record.status_blobs()]


def agent_downloads(harness: DaemonHarness) -> list[dict[str, object]]:
    return [r for r in harness.fabric.record.requests()
            if "WALinuxAgent-" in json.dumps([r.get("path"), r.get("headers")])]


def version_dir(harness: DaemonHarness, version: str = NEWER) -> Path:
    return harness.root / f"var/lib/waagent/{AGENT_NAME}-{version}"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    need_root()
    need_tools("useradd", "chpasswd", "ssh-keygen", "visudo", "sshd", "unshare")
    with Fabric(default_scenario()) as fabric:
        yield DaemonHarness(tmp_path, fabric, CONF)


def stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


def test_the_daemon_switches_to_a_newer_version_and_reports_it(harness: DaemonHarness) -> None:
    offer(harness, build_package(REPO, NEWER))
    daemon = harness.start()
    try:
        harness.wait(f"a status blob saying {NEWER}", lambda: NEWER in agent_versions(harness),
                     timeout=90)
        state = harness.state()
        assert state["version"] == NEWER and state["pid"] == daemon.pid  # exec: the same PID
        assert (version_dir(harness) / "graph/cli.py").is_file()
        # Downloaded through the HostGAPlugin, as extension packages are.
        assert any(r["route"] == "artifact" for r in agent_downloads(harness))
        assert harness.fabric.record.status_blob_problems() == []
    finally:
        assert stop(daemon) == 0
    record = json.loads((version_dir(harness) / "error.json").read_text())
    assert [launch["ended"] is not None for launch in record["launches"]] == [True]
    assert record["blacklisted"] is None

    # A restart (systemd's) runs the new version straight away, with nothing downloaded.
    downloads = len(agent_downloads(harness))
    blobs = len(agent_versions(harness))
    again = harness.start()
    try:
        harness.wait("a status blob of the restarted daemon",
                     lambda: len(agent_versions(harness)) > blobs + 1, timeout=60)
        assert set(agent_versions(harness)[blobs:]) == {NEWER}
        assert not any(r["route"] == "artifact" for r in agent_downloads(harness)[downloads:])
    finally:
        assert stop(again) == 0


def restart_until_up(harness: DaemonHarness, starts: int) -> tuple[list[int], subprocess.Popen[str]]:
    """Start the daemon again each time it exits (systemd's Restart=always); the exit
    statuses, and the daemon that stayed up."""
    def exited_or_up(process: subprocess.Popen[str]) -> bool:
        state = harness.state()
        return process.poll() is not None or (
            state.get("pid") == process.pid and bool(state.get("running"))
            and int(state.get("loops", 0)) >= 2)  # type: ignore[call-overload]

    statuses: list[int] = []
    for _ in range(starts):
        process = harness.start()
        harness.wait("the daemon to exit or to loop", lambda p=process: exited_or_up(p),
                     timeout=90)
        if process.poll() is None:
            return statuses, process
        statuses.append(process.returncode)
    raise AssertionError(f"the daemon never stayed up: {statuses}\n{harness.output()[-3000:]}")


def test_a_version_that_crashes_at_start_is_rolled_back_and_blacklisted(
        harness: DaemonHarness) -> None:
    broken = build_package(REPO, NEWER, overrides={
        "graph/daemon.py": "raise SystemExit(3)  # a version that cannot start\n"})
    offer(harness, broken)
    statuses, daemon = restart_until_up(harness, starts=6)
    try:
        # The first start installs it and hands over; it and two restarts crash; the
        # fourth start blacklists it and runs the installed agent.
        assert statuses == [3, 3, 3], harness.output()[-3000:]
        record = json.loads((version_dir(harness) / "error.json").read_text())
        assert len(record["launches"]) == 3
        assert "3 crashes within 5 minutes" in record["blacklisted"]["reason"]
        assert harness.state()["version"] == AGENT_VERSION
        blobs = len(agent_versions(harness))
        downloads = len([r for r in agent_downloads(harness) if r["route"] == "artifact"])
        harness.wait("more loops", lambda: len(agent_versions(harness)) >= blobs + 3)
        assert set(agent_versions(harness)[blobs:]) == {AGENT_VERSION}
        # Offered still, blacklisted for good: never downloaded or run again.
        assert len([r for r in agent_downloads(harness) if r["route"] == "artifact"]) == downloads
    finally:
        assert stop(daemon) == 0


def test_auto_update_disabled_changes_nothing(harness: DaemonHarness) -> None:
    harness.conf.write_text(CONF + "AutoUpdate.Enabled=n\n")
    offer(harness, build_package(REPO, NEWER))
    daemon = harness.start()
    try:
        harness.wait("four status blobs", lambda: len(agent_versions(harness)) >= 4, timeout=90)
        assert set(agent_versions(harness)) == {AGENT_VERSION}
        assert agent_downloads(harness) == []
        assert not version_dir(harness).exists()
        assert daemon.poll() is None
    finally:
        assert stop(daemon) == 0


def test_a_version_pinned_by_the_platform_is_reported_in_update_status(
        harness: DaemonHarness) -> None:
    pinned = f"{AGENT_VERSION}.2"
    offer(harness, build_package(REPO, pinned), pinned, version=pinned,
          is_version_from_rsm=True, is_vm_enabled_for_rsm_upgrades=True)
    daemon = harness.start()
    try:
        harness.wait(f"a status blob saying {pinned}", lambda: pinned in agent_versions(harness),
                     timeout=90)
        agent = harness.fabric.record.status_blobs()[-1]["status"]["aggregateStatus"][
            "guestAgentStatus"]
        assert agent["updateStatus"]["expectedVersion"] == pinned
        assert agent["updateStatus"]["status"] == "Success"
        assert harness.fabric.record.status_blob_problems() == []
    finally:
        assert stop(daemon) == 0
