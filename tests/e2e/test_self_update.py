"""End to end: self-update (AutoUpdate) with `waagent -daemon` in the VM (Debian 12).

The fabric offers this checkout, packaged with a higher version (graph/agent_package.py),
as the newest of the agent family `Prod`: a GAFamily manifest and a zip in its storage.
The VM's agent is the one the lab installs (/opt/waagent-graph, its dependencies beside
it, /usr/local/sbin/waagent); downloaded versions go to /var/lib/waagent/waagent-graph-X/.

One VM, one life, in order (the tests share it and run in file order):
- with AutoUpdate.Enabled=n the offer changes nothing: no manifest or package is fetched,
  the installed version runs and reports itself;
- with AutoUpdate.Enabled=y the daemon downloads the newer version, installs it and execs
  it in its own process: the VM's process runs the new code (its PYTHONPATH, its bytecode
  written in the version's directory) and `guestAgentStatus` says the new version;
- a still newer version that crashes at start is taken, crashes, is started again three
  times in all and then blacklisted: the version below (the one of the test before) runs
  again and keeps running, the broken one is never fetched again;
- AutoUpdate.Enabled=n set afterwards: the installed agent runs again, the downloaded
  versions stay on disk untouched.

The VM has no systemd: `restart_until_up` plays the unit's `Restart=always`, starting the
daemon again each time it exits. See tests/e2e/harness.py for the lab.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.scenario import default_scenario_path
from graph.agent_package import build_package
from graph.version import AGENT_NAME, AGENT_VERSION
from tests.e2e import harness
from tests.e2e.conftest import checked_lab, need_lab

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NEWER = f"{AGENT_VERSION}.1"
BROKEN = f"{AGENT_VERSION}.2"
LIB = "var/lib/waagent"
CONF = """\
Provisioning.Agent=waagent
Provisioning.SshHostKeyPairType=ed25519
ResourceDisk.Format=n
Extensions.GoalStatePeriod=1
Extensions.InitialGoalStatePeriod=1
Autoupdate.Frequency=1
AutoUpdate.Enabled=n
"""
WAIT = 180.0  # generous: the VM shares the machine with whatever else runs


class VmDaemon:
    """`waagent -daemon` in the VM, started as its unit would (and restarted as
    Restart=always would), watched through Lib.Dir and the fabric's record."""

    def __init__(self, lab: harness.Lab) -> None:
        self.lab = lab
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def log(self, start: int | None = None) -> Path:
        return self.lab.work / f"daemon-{self.starts if start is None else start}.log"

    def start(self) -> subprocess.Popen[bytes]:
        """Start it; returned at once (a crashing version never takes Pid.File)."""
        self.starts += 1
        self.started_at = time.time()
        self.process = self.lab.vm.popen(["waagent", "-daemon"], self.log())
        return self.process

    def state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.lab.root / LIB / "daemon.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def up(self, loops: int = 2) -> dict[str, Any] | None:
        """daemon.json once the daemon started last is running and has looped `loops`
        times (it may be a version it exec'd: same PID, a later `since`)."""
        state = self.state()
        if state.get("running") and state.get("since", 0) >= self.started_at - 1 \
                and state.get("loops", 0) >= loops and state.get("pid") == self.pid_file():
            return state
        return None

    def pid_file(self) -> int | None:
        done = self.lab.vm.run(["cat", "/var/run/waagent.pid"], check=False)
        return int(done.stdout) if done.returncode == 0 and done.stdout.strip() else None

    def stop(self) -> int:
        """SIGTERM, as systemd stops the unit: the exit status."""
        assert self.process is not None
        pid = self.pid_file()
        if self.process.poll() is None and pid is not None:
            self.lab.vm.run(["kill", "-TERM", str(pid)], check=False)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the daemon ignored SIGTERM:\n{self.output()[-3000:]}") \
                from None

    def wait(self, what: str, predicate: Any, timeout: float = WAIT) -> Any:
        try:
            return harness.wait_until(predicate, timeout, what, interval=0.2)
        except AssertionError as err:
            raise AssertionError(f"{err}; the daemon said:\n{self.output()[-4000:]}") from None

    def output(self) -> str:
        return "".join(self.log(n).read_text(errors="replace")
                       for n in range(1, self.starts + 1) if self.log(n).exists())

    def restart_until_up(self, starts: int) -> list[int]:
        """systemd's Restart=always: start again each time it exits; the exit statuses
        until one start stayed up."""
        statuses: list[int] = []
        for _ in range(starts):
            process = self.start()
            self.wait("the daemon to exit or to loop",
                      lambda p=process: p.poll() is not None or self.up())
            if process.poll() is None:
                return statuses
            statuses.append(process.returncode)
        raise AssertionError(f"the daemon never stayed up: {statuses}\n{self.output()[-4000:]}")


def offer(lab: harness.Lab, *packages: tuple[str, bytes]) -> int:
    """Publish an agent family whose manifest offers these (version, zip): the incarnation."""
    versions = []
    for version, data in packages:
        path = lab.work / f"{AGENT_NAME}-{version}.zip"
        path.write_bytes(data)
        versions.append({"version": version, "package": str(path)})
    return int(lab.fabric.control("set-agent-family", versions=versions)["result"])


def agent_versions(lab: harness.Lab) -> list[str]:
    """guestAgentStatus.version of every status blob so far."""
    return [blob["status"]["aggregateStatus"]["guestAgentStatus"]["version"]
            for blob in lab.fabric.status_blobs()]


def agent_requests(lab: harness.Lab) -> list[dict[str, Any]]:
    """Requests for the agent family's manifest or an agent package (directly or through
    the HostGAPlugin, whose target is in a header)."""
    return [r for r in lab.fabric.record().get("requests", [])
            if "WALinuxAgent" in target(r)]


def target(request: dict[str, Any]) -> str:
    """What a request fetches: its path, or through the HostGAPlugin the artifact's URL."""
    return str((request.get("headers") or {}).get("x-ms-artifact-location") or request["path"])


def package_downloads(lab: harness.Lab, version: str) -> list[dict[str, Any]]:
    return [r for r in agent_requests(lab) if f"WALinuxAgent-{version}.zip" in target(r)]


def version_dir(lab: harness.Lab, version: str) -> Path:
    return lab.root / LIB / f"{AGENT_NAME}-{version}"


def launch_record(lab: harness.Lab, version: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((version_dir(lab, version) / "error.json").read_text())
    return data


def process_of(lab: harness.Lab, pid: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a VM process, read in the VM."""
    argv = lab.vm.run(["cat", f"/proc/{pid}/cmdline"]).stdout.split("\0")
    env = lab.vm.run(["cat", f"/proc/{pid}/environ"]).stdout.split("\0")
    return [a for a in argv if a], dict(e.split("=", 1) for e in env if "=" in e)


def daemons_in_vm(lab: harness.Lab) -> list[str]:
    """Command lines of the agent daemons running in the VM."""
    lines = lab.vm.run(["sh", "-c", "for p in /proc/[0-9]*; do tr '\\0' ' ' "
                        "< $p/cmdline 2>/dev/null; echo; done"]).stdout.splitlines()
    return [line for line in lines if "graph.cli" in line and "-daemon" in line]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Lab]:
    """The default scenario's VM on Debian 12, its DHCP done as the boot does."""
    need_lab()
    work = tmp_path_factory.mktemp("e2e-self-update")
    with checked_lab(work, default_scenario_path(), conf=CONF) as booted:
        booted.vm.dhcp()
        yield booted


@pytest.fixture(scope="module")
def daemon(lab: harness.Lab) -> Iterator[VmDaemon]:
    running = VmDaemon(lab)
    yield running
    if running.process is not None and running.process.poll() is None:
        running.process.kill()
        running.process.wait(30)


def test_auto_update_disabled_changes_nothing(lab: harness.Lab, daemon: VmDaemon) -> None:
    offer(lab, (NEWER, build_package(harness.REPO, NEWER)))
    process = daemon.start()
    lab.fabric.wait_for_health("Ready", WAIT)
    daemon.wait("the daemon looping", daemon.up)
    blobs = len(agent_versions(lab))
    daemon.wait("four more status blobs", lambda: len(agent_versions(lab)) >= blobs + 4)
    assert set(agent_versions(lab)) == {AGENT_VERSION}
    assert agent_requests(lab) == []  # not even the manifest
    assert not version_dir(lab, NEWER).exists()
    state = daemon.state()
    assert state["version"] == AGENT_VERSION and process.poll() is None
    _, env = process_of(lab, state["pid"])
    assert env["PYTHONPATH"] == f"/{harness.AGENT_DIR}"
    assert daemon.stop() == 0, daemon.output()[-3000:]


def test_the_daemon_switches_to_the_newer_version_and_reports_it(
        lab: harness.Lab, daemon: VmDaemon) -> None:
    harness.set_conf_options(lab.root, {"AutoUpdate.Enabled": "y"})
    process = daemon.start()
    daemon.wait(f"a status blob saying {NEWER}", lambda: NEWER in agent_versions(lab))
    state = daemon.wait(f"{NEWER} looping", lambda: (s := daemon.up()) and
                        s["version"] == NEWER and s)
    # exec'd in place: the unit's process (the one started) still runs, under Pid.File's PID.
    assert process.poll() is None and state["pid"] == daemon.pid_file()
    assert len(daemons_in_vm(lab)) == 1, daemons_in_vm(lab)
    # The VM's daemon runs the downloaded code: its directory first in PYTHONPATH (the
    # installed agent's, with the libraries, after it), and Python compiled its modules there.
    installed = f"/{LIB}/{AGENT_NAME}-{NEWER}"
    argv, env = process_of(lab, state["pid"])
    assert env["PYTHONPATH"] == f"{installed}:/{harness.AGENT_DIR}", env
    assert argv[1:] == ["-m", "graph.cli", "-daemon"], argv
    assert list((version_dir(lab, NEWER) / "graph/__pycache__").glob("daemon.cpython-*.pyc"))
    said = daemon.output() + (lab.root / "var/log/waagent.log").read_text(errors="replace")
    assert f"launcher: running {AGENT_NAME}-{NEWER} from {installed}" in said
    # Downloaded through the HostGAPlugin, as extension packages are, once.
    downloads = package_downloads(lab, NEWER)
    assert downloads and all(r["server"] == "hostplugin" for r in downloads), downloads
    blobs = lab.fabric.status_blobs()
    assert [b["problems"] for b in blobs if b["problems"]] == []
    assert blobs[-1]["status"]["aggregateStatus"]["guestAgentStatus"]["status"] == "Ready"
    record = launch_record(lab, NEWER)
    assert record["blacklisted"] is None and len(record["launches"]) == 1


def test_a_version_that_crashes_at_start_is_rolled_back_and_blacklisted(
        lab: harness.Lab, daemon: VmDaemon) -> None:
    broken = build_package(harness.REPO, BROKEN, overrides={
        "graph/daemon.py": "raise SystemExit(3)  # a version that cannot start\n"})
    assert daemon.process is not None
    running = daemon.process
    offer(lab, (NEWER, build_package(harness.REPO, NEWER)), (BROKEN, broken))
    # The running NEWER takes it, hands over to the launcher, and BROKEN dies at start.
    assert running.wait(WAIT) == 3, daemon.output()[-4000:]
    assert (version_dir(lab, BROKEN) / "agent.json").is_file()
    statuses = daemon.restart_until_up(starts=6)
    # Two restarts crash too (3 launches in all); the third start blacklists BROKEN and
    # runs the version below it.
    assert statuses == [3, 3], daemon.output()[-4000:]
    record = launch_record(lab, BROKEN)
    assert len(record["launches"]) == 3
    assert all(launch["ended"] is None for launch in record["launches"])
    assert "3 crashes within 5 minutes" in record["blacklisted"]["reason"]
    # The launcher's choices are in the agent log (they were lost before it configured it).
    said = (lab.root / "var/log/waagent.log").read_text(errors="replace")
    assert f"{AGENT_NAME}-{BROKEN} blacklisted: 3 crashes within 5 minutes" in said
    assert said.count(f"launcher: running {AGENT_NAME}-{BROKEN} from") == 3
    state = daemon.state()
    assert state["version"] == NEWER
    _, env = process_of(lab, state["pid"])
    assert env["PYTHONPATH"].startswith(f"/{LIB}/{AGENT_NAME}-{NEWER}:"), env
    # Offered still, blacklisted for good: never fetched or run again.
    downloads = len(package_downloads(lab, BROKEN))
    blobs = len(agent_versions(lab))
    daemon.wait("more status blobs", lambda: len(agent_versions(lab)) >= blobs + 4)
    assert set(agent_versions(lab)[blobs:]) == {NEWER}
    assert len(package_downloads(lab, BROKEN)) == downloads == 1
    assert daemon.up() and daemon.state()["version"] == NEWER
    assert daemon.stop() == 0, daemon.output()[-3000:]
    # NEWER's launches all ended cleanly: its record holds no crash.
    assert all(launch["ended"] is not None for launch in launch_record(lab, NEWER)["launches"])


def test_auto_update_turned_off_runs_the_installed_agent_again(
        lab: harness.Lab, daemon: VmDaemon) -> None:
    harness.set_conf_options(lab.root, {"AutoUpdate.Enabled": "n"})
    records = {v: launch_record(lab, v) for v in (NEWER, BROKEN)}
    fetched = len(agent_requests(lab))
    process = daemon.start()
    state = daemon.wait("the installed agent looping", daemon.up)
    blobs = len(agent_versions(lab))
    daemon.wait("more status blobs", lambda: len(agent_versions(lab)) >= blobs + 3)
    assert state["version"] == AGENT_VERSION and process.poll() is None
    assert set(agent_versions(lab)[blobs:]) == {AGENT_VERSION}
    _, env = process_of(lab, state["pid"])
    assert env["PYTHONPATH"] == f"/{harness.AGENT_DIR}", env
    assert len(agent_requests(lab)) == fetched
    assert {v: launch_record(lab, v) for v in (NEWER, BROKEN)} == records
    assert daemon.stop() == 0, daemon.output()[-3000:]
