"""`waagent -daemon` on a sandbox root against the fabric: provision, then the loop.

Short periods (1 s) so that a test sees several loops in a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric import Fabric, default_scenario
from tests.conftest import need_root, need_tools
from tests.integration.provisioning import BASE_CONF, Harness

pytestmark = pytest.mark.root

FAST = BASE_CONF + ("Extensions.GoalStatePeriod=1\nExtensions.InitialGoalStatePeriod=1\n"
                    "Provisioning.MonitorHostName=n\n")
MONITORED = FAST + "Provisioning.MonitorHostName=y\nProvisioning.MonitorHostNamePeriod=1\n"
DAEMON = "import sys\nfrom graph.cli import main\nsys.exit(main())\n"


class DaemonHarness(Harness):
    def start(self, *extra: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-c", DAEMON, "-daemon", f"root={self.root}",
                f"conf={self.conf}", f"wireserver={self.fabric.wire_url}",
                f"hostplugin={self.fabric.hostplugin_url}", f"media={self.media}", *extra]
        log = open(self.tmp / "daemon.log", "a")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)

    def state(self) -> dict[str, object]:
        path = self.root / "var/lib/waagent/daemon.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def output(self) -> str:
        return (self.tmp / "daemon.log").read_text()

    def wait(self, what: str, predicate: object, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-3000:]}")


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    need_root()
    need_tools("useradd", "chpasswd", "ssh-keygen", "visudo", "sshd", "unshare")
    with Fabric(default_scenario()) as fabric:
        yield DaemonHarness(tmp_path, fabric, FAST)


@pytest.fixture
def daemon(harness: DaemonHarness) -> Iterator[subprocess.Popen[str]]:
    process = harness.start()
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def blobs(harness: Harness) -> list[dict[str, object]]:
    return harness.fabric.record.status_blobs()


def test_provisions_then_uploads_a_status_blob_every_loop(
        harness: DaemonHarness, daemon: subprocess.Popen[str]) -> None:
    harness.wait("Ready", lambda: harness.fabric.record.wait_for_health("Ready", timeout=0.1))
    harness.wait("three status blobs", lambda: len(blobs(harness)) >= 3)
    status = blobs(harness)[-1]["status"]
    assert isinstance(status, dict)
    assert status["version"] == "1.1"
    aggregate = status["aggregateStatus"]
    assert aggregate["guestAgentStatus"]["status"] == "Ready"
    assert aggregate["handlerAggregateStatus"] == []
    goal = aggregate["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]
    assert goal["status"] == "Success"
    assert status["guestOSInfo"]["osName"] == "debian"
    # The loop itself does no graph work while nothing changes.
    runs = harness.state()["graph_runs"]
    harness.wait("two more loops", lambda: harness.state()["loops"] >= 4)
    assert harness.state()["graph_runs"] == runs
    copies = list((harness.root / "var/lib/waagent/history").glob("*/waagent_status.json"))
    assert copies, "a copy of the status is kept in Lib.Dir"


def test_a_new_goal_state_is_picked_up_within_a_period(
        harness: DaemonHarness, daemon: subprocess.Popen[str]) -> None:
    harness.wait("a status blob", lambda: len(blobs(harness)) >= 1)
    incarnation = harness.fabric.bump_incarnation(add_certificates=["later-cert"])
    harness.wait("the new incarnation in the status", lambda: any(
        blob["status"]["aggregateStatus"]["vmArtifactsAggregateStatus"]
        ["goalStateAggregateStatus"]["inSvdSeqNo"] == str(incarnation)
        for blob in blobs(harness)), timeout=10)
    harness.wait("the graph run", lambda: "incarnation" in str(harness.state()["last_run"]))
    report = harness.last_report()
    assert report["tasks"]["certificates:install"]["result"] == "changed"


def test_sigterm_stops_cleanly_and_a_second_daemon_refuses(
        harness: DaemonHarness, daemon: subprocess.Popen[str]) -> None:
    harness.wait("a loop", lambda: harness.state().get("loops", 0) >= 1)
    second = subprocess.run([sys.executable, "-c", DAEMON, "-daemon", f"root={harness.root}",
                             f"conf={harness.conf}", f"wireserver={harness.fabric.wire_url}"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode != 0
    assert f"running as PID {daemon.pid}" in second.stdout + second.stderr
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert harness.state()["running"] is False
    assert not (harness.root / "var/run/waagent.pid").exists()


def test_sigkill_then_a_restart_converges(harness: DaemonHarness) -> None:
    first = harness.start()
    harness.wait("a loop", lambda: harness.state().get("loops", 0) >= 1)
    first.kill()
    first.wait(10)
    second = harness.start()
    try:
        harness.wait("loops of the new daemon", lambda: harness.state().get("pid") == second.pid
                     and harness.state().get("loops", 0) >= 1)
        assert harness.state()["last_run"]["result"] == "ok"
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0


def test_conf_edit_and_sighup_rerun_what_the_edit_touches(
        harness: DaemonHarness, daemon: subprocess.Popen[str]) -> None:
    harness.wait("a loop", lambda: harness.state().get("loops", 0) >= 1)
    harness.set_conf(FAST + "OS.SshClientAliveInterval=120\n")
    os.kill(daemon.pid, signal.SIGHUP)
    harness.wait("the reload", lambda: harness.state().get("conf_reloads", 0) >= 1)
    harness.wait("the graph run", lambda: "conf" in str(harness.state()["last_run"]))
    dropin = harness.root / "etc/ssh/sshd_config.d/00-waagent.conf"
    assert "ClientAliveInterval 120" in dropin.read_text()
    assert "ssh:config" in harness.ran()


def test_an_admin_rename_is_published_never_reverted(harness: DaemonHarness) -> None:
    harness.set_conf(MONITORED)
    daemon = harness.start()
    harness.wait("the monitor's first check", lambda: "hostname" in harness.state().get(
        "monitors", {}))
    # Nothing changes: the monitor's checks pass without a doit run.
    runs, loops = harness.state()["graph_runs"], harness.state()["loops"]
    harness.wait("three more loops", lambda: harness.state()["loops"] >= loops + 3)
    assert harness.state()["graph_runs"] == runs
    (harness.root / "etc/hostname").write_text("renamed-by-admin\n")
    published = harness.root / "var/lib/waagent/published_hostname"
    harness.wait("the rename published",
                 lambda: published.read_text().strip() == "renamed-by-admin")
    assert (harness.root / "etc/hostname").read_text() == "renamed-by-admin\n"
    harness.wait("the monitor's record", lambda: "hostname" in harness.state()["monitors"])
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def waagent(harness: DaemonHarness, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", DAEMON, *args, f"root={harness.root}", f"conf={harness.conf}",
            f"wireserver={harness.fabric.wire_url}",
            f"hostplugin={harness.fabric.hostplugin_url}", f"media={harness.media}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_register_service_installs_the_distro_named_unit_and_logrotate(
        harness: DaemonHarness) -> None:
    done = waagent(harness, "-register-service")
    assert done.returncode == 0, done.stdout + done.stderr
    unit = harness.root / "etc/systemd/system/walinuxagent.service"  # the sandbox is Debian
    text = unit.read_text()
    assert "-daemon" in text and "CPUQuota=75%" in text and "MemoryHigh=" in text
    wants = harness.root / "etc/systemd/system/multi-user.target.wants/walinuxagent.service"
    assert os.readlink(wants) == "/etc/systemd/system/walinuxagent.service"
    assert "/var/log/waagent.log" in (harness.root / "etc/logrotate.d/waagent").read_text()
    again = waagent(harness, "-register-service")
    assert again.returncode == 0 and "changed:" not in again.stderr, "a second run changes nothing"


def test_start_runs_the_daemon_in_the_background(harness: DaemonHarness) -> None:
    started = waagent(harness, "-start")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int((harness.root / "var/run/waagent.pid").read_text())
    assert f"PID {pid}" in started.stdout
    try:
        harness.wait("a loop", lambda: harness.state().get("loops", 0) >= 1)
    finally:
        os.kill(pid, signal.SIGTERM)
    harness.wait("the daemon's end", lambda: not (harness.root / "var/run/waagent.pid").exists())


def test_run_exthandlers_does_one_goal_state_pass(harness: DaemonHarness) -> None:
    harness.run(check=True)
    before = len(blobs(harness))
    done = waagent(harness, "-run-exthandlers")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status sent via HostGAPlugin" in done.stdout
    assert len(blobs(harness)) == before + 1
    assert not harness.ran() & {"user:account", "ssh:config"}, "no provisioning"


def test_status_shows_the_daemon(harness: DaemonHarness,
                                 daemon: subprocess.Popen[str]) -> None:
    harness.wait("two loops and an upload", lambda: harness.state().get("loops", 0) >= 2
                 and "via" in str(harness.state().get("status")))
    shown = harness.run(command="status", check=True).stdout
    assert f"Daemon: running (PID {daemon.pid}) since " in shown
    assert "status upload: " in shown and "via HostGAPlugin (incarnation 1)" in shown
    assert "goal state:    incarnation 1" in shown
