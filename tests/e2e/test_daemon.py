"""End to end: `waagent -daemon` in the VM, as its service starts it (ExecStart=waagent -daemon,
the VM's /etc/waagent.conf), against the fabric next door.

The life of one daemon on Debian 12, in order (the tests share the VM and run in file order):
it provisions and then loops, one status blob of the right shape each loop; a goal state the
fabric publishes is taken within one loop; a waagent.conf edit and SIGHUP rerun the task the
edit touches; an admin's hostname rename is published, never reverted; a second daemon refuses
to start and names the PID; SIGTERM ends it with status 0 and its state saved; SIGKILL then a
restart converges without repeating one-shot work.

"Within one period" and "every period" are counted, not timed (no timed assertions in tests):
one status blob per loop, and after the fabric publishes, at most one upload (the loop already
under way) still carries the old incarnation. bench/daemon.py measures the times.
See tests/e2e/harness.py for the lab.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.scenario import default_scenario_path
from tests.e2e import harness
from tests.e2e.conftest import checked_lab, need_lab

pytestmark = [pytest.mark.e2e, pytest.mark.root]

SWAP_MB = 64
EDITED_SWAP_MB = 96
CONF = """\
Provisioning.Agent=waagent
Provisioning.SshHostKeyPairType=ed25519
Provisioning.RegenerateSshHostKeyPair=y
Provisioning.MonitorHostName=y
Provisioning.MonitorHostNamePeriod=2
ResourceDisk.Format=y
ResourceDisk.Filesystem=ext4
ResourceDisk.MountPoint=/mnt/resource
ResourceDisk.EnableSwap=y
ResourceDisk.SwapSizeMB={swap_mb}
Provisioning.DecodeCustomData=y
Provisioning.ExecuteCustomData=y
Extensions.GoalStatePeriod=1
Extensions.InitialGoalStatePeriod=1
"""
CUSTOM_DATA_RAN = "custom data script exited with status 0"
# Provisioning work that must never be done twice for one VM (DESIGN rule 5).
ONE_SHOT = {"user:account", "user:password", "ssh:hostkeys", "customdata:save", "customdata:run",
            "hostname:set"}
# Provisioning tasks an edit of ResourceDisk.SwapSizeMB has no business rerunning.
PROVISIONING = {"user:sudoers", "ssh:config", "ssh:authorized_keys", "certificates:install",
                "disk:partition", "disk:format", "disk:mount", "report:ready"}
# What the daemon logs when it runs the provision group (start, goal state, conf reload).
GOAL_STATE_RUN = "running provision ("
WAIT = 120.0  # generous: the VM shares the machine with whatever else runs


class VmDaemon:
    """The agent's daemon in the VM: started as the unit does, watched through Lib.Dir."""

    def __init__(self, lab: harness.Lab) -> None:
        self.lab = lab
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.lab.work / f"daemon-{self.starts}.log"

    def start(self) -> subprocess.Popen[bytes]:
        """`waagent -daemon`, returned once it holds Pid.File (after a SIGKILL the file
        still names the dead daemon until the new one takes it)."""
        before = self.pid_file()
        self.starts += 1
        self.process = self.lab.vm.popen(["waagent", "-daemon"], self.log)
        self.wait("the new daemon in Pid.File", lambda: self.pid_file() not in (None, before))
        return self.process

    def pid_file(self) -> int | None:
        done = self.lab.vm.run(["cat", "/var/run/waagent.pid"], check=False)
        return int(done.stdout) if done.returncode == 0 and done.stdout.strip() else None

    def state(self) -> dict[str, Any]:
        """`<Lib.Dir>/daemon.json` as last written ({} before the first)."""
        try:
            data: dict[str, Any] = json.loads(
                (self.lab.root / "var/lib/waagent/daemon.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def pid(self) -> int:
        """The daemon's PID in the VM, from Pid.File."""
        return int(self.lab.vm.run(["cat", "/var/run/waagent.pid"]).stdout)

    def signal(self, name: str) -> None:
        self.lab.vm.run(["kill", f"-{name}", str(self.pid())])

    def wait(self, what: str, predicate: Any, timeout: float = WAIT) -> Any:
        try:
            return harness.wait_until(predicate, timeout, what, interval=0.1)
        except AssertionError as err:
            raise AssertionError(f"{err}; the daemon said:\n{self.output()[-3000:]}") from None

    def wait_loops(self, count: int) -> dict[str, Any]:
        """daemon.json once this daemon (the current PID) has done `count` more loops."""
        pid = self.pid()
        start = self.state().get("loops", 0) if self.state().get("pid") == pid else 0
        state: dict[str, Any] = self.wait(
            f"{count} loops", lambda: (s := self.state()).get("pid") == pid
            and s.get("loops", 0) >= start + count and s)
        return state

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def incarnation_of(blob: dict[str, Any]) -> str | None:
    """The goal state a status blob acknowledges (inSvdSeqNo)."""
    artifacts = blob["status"].get("aggregateStatus", {}).get("vmArtifactsAggregateStatus", {})
    seq: str | None = artifacts.get("goalStateAggregateStatus", {}).get("inSvdSeqNo")
    return seq


def reports_since(lab: harness.Lab, seen: set[str]) -> list[dict[str, Any]]:
    """Run reports written since `seen` (names of those before), oldest first."""
    runs = sorted((lab.root / "var/lib/waagent/runs").glob("*.json"))
    return [json.loads(path.read_text()) for path in runs if path.name not in seen]


def report_names(lab: harness.Lab) -> set[str]:
    return {path.name for path in (lab.root / "var/lib/waagent/runs").glob("*.json")}


def ran(report: dict[str, Any]) -> set[str]:
    return {name for name, entry in report["tasks"].items()
            if entry.get("result") in ("changed", "no-change", "failed")}


def active_swaps(lab: harness.Lab) -> dict[str, int]:
    """The VM's swap areas (swap is kernel-wide: other labs' show with host paths)."""
    lines = lab.vm.run(["cat", "/proc/swaps"]).stdout.splitlines()[1:]
    return {line.split()[0]: int(line.split()[2]) for line in lines
            if line.startswith("/mnt/")}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Lab]:
    """The default scenario's VM on Debian 12, its DHCP done as the boot does."""
    need_lab()
    work = tmp_path_factory.mktemp("e2e-daemon")
    with checked_lab(work, default_scenario_path(), conf=CONF.format(swap_mb=SWAP_MB)) as booted:
        booted.vm.dhcp()
        yield booted


@pytest.fixture(scope="module")
def daemon(lab: harness.Lab) -> Iterator[VmDaemon]:
    running = VmDaemon(lab)
    running.start()
    yield running
    if running.process is not None and running.process.poll() is None:
        running.process.kill()
        running.process.wait(30)


def test_it_provisions_then_uploads_a_status_blob_every_loop(lab: harness.Lab,
                                                             daemon: VmDaemon) -> None:
    lab.fabric.wait_for_health("Ready", WAIT)
    before = daemon.wait_loops(2)
    graph_runs = daemon.output().count(GOAL_STATE_RUN)
    after = daemon.wait_loops(5)
    blobs = lab.fabric.status_blobs()
    loops = after["loops"] - before["loops"]

    def uploaded_by(state: dict[str, Any]) -> int:
        # daemon.json's counters are written every few loops: count the blobs up to the
        # moment it was written (the VM and the fabric share the host's clock).
        return len([b for b in blobs if b["time"] <= state["updated"]])

    # One upload per loop (a blob may arrive as daemon.json is written: +-1).
    uploads = uploaded_by(after) - uploaded_by(before)
    assert abs(uploads - loops) <= 1, (uploads, loops)
    assert [b["problems"] for b in blobs if b["problems"]] == []
    # Idle loops do no goal-state graph work (the hostname monitor runs its task meanwhile).
    assert daemon.output().count(GOAL_STATE_RUN) == graph_runs
    status = blobs[-1]["status"]
    assert blobs[-1]["via"] == "hostplugin"
    assert status["aggregateStatus"]["guestAgentStatus"]["status"] == "Ready"
    assert status["guestOSInfo"]["computerName"] == lab.scenario.hostname
    assert status["guestOSInfo"]["osName"] == "debian"
    assert incarnation_of(blobs[-1]) == "1"
    states = [(h["state"], h["substatus"]) for h in lab.fabric.health_reports()]
    assert states == [("NotReady", "Provisioning"), ("Ready", None)]
    assert (lab.root / "var/lib/waagent/history/incarnation_1/waagent_status.json").exists()


def test_a_published_goal_state_is_taken_within_one_loop(lab: harness.Lab,
                                                         daemon: VmDaemon) -> None:
    seen = report_names(lab)
    answer = lab.fabric.control("add-certificate", name="rotated")
    incarnation = str(answer["result"])
    # The record file is rewritten on the next report the fabric receives.
    published = daemon.wait("the publication in the record", lambda: next(
        (p for p in lab.fabric.record().get("published", [])
         if str(p.get("incarnation")) == incarnation and p["what"] != "start"), None))
    daemon.wait(f"a status blob for incarnation {incarnation}", lambda: any(
        incarnation_of(b) == incarnation for b in lab.fabric.status_blobs()))
    late = [b for b in lab.fabric.status_blobs()
            if b["time"] > published["time"] and incarnation_of(b) != incarnation]
    assert len(late) <= 1, f"{len(late)} uploads after the publish still said the old goal state"
    # The new certificate is installed by the graph, in the daemon's process.
    installed = daemon.wait("the graph run", lambda: [
        r for r in reports_since(lab, seen) if "certificates:install" in ran(r)])
    assert installed[0]["tasks"]["certificates:install"]["result"] == "changed"
    thumbprints = answer["state"]["thumbprints"]
    assert all((lab.root / f"var/lib/waagent/{t}.crt").exists() for t in thumbprints)
    assert not any(ONE_SHOT & ran(r) for r in reports_since(lab, seen))


def reload_run(lab: harness.Lab, daemon: VmDaemon, conf: str | None = None) -> set[str]:
    """Write `conf` (if given) to /etc/waagent.conf, SIGHUP: the tasks the reload ran. The
    daemon may see the new mtime itself before the signal comes: both runs count."""
    reloads = daemon.wait_loops(1)["conf_reloads"]
    seen = report_names(lab)
    if conf is not None:
        (lab.root / "etc/waagent.conf").write_text(conf)
    daemon.signal("HUP")
    daemon.wait("the reload", lambda: daemon.state().get("conf_reloads", 0) > reloads
                and "waagent.conf" in str(daemon.state()["last_run"]))
    daemon.wait_loops(1)
    reloaded = [r for r in reports_since(lab, seen) if "gather:goalstate" in r["tasks"]]
    assert reloaded and daemon.state()["last_run"]["result"] == "ok"
    return set().union(*(ran(r) for r in reloaded))


def test_a_conf_edit_and_sighup_rerun_what_the_edit_touches(lab: harness.Lab,
                                                            daemon: VmDaemon) -> None:
    # What a reload reruns with no edit at all (tasks that check live state every run) ...
    unedited = reload_run(lab, daemon)
    edited = reload_run(lab, daemon, CONF.format(swap_mb=EDITED_SWAP_MB))
    # ... and with the edit: that, plus exactly the task the edited option feeds.
    assert edited - unedited == {"disk:swapfile"}, (edited, unedited)
    assert "gather:goalstate" in unedited and not (ONE_SHOT | PROVISIONING) & edited
    assert active_swaps(lab) == {"/mnt/resource/swapfile": EDITED_SWAP_MB * 1024 - 4}
    daemon.wait_loops(2)  # and the loop goes on


def test_an_admin_rename_is_published_never_reverted(lab: harness.Lab,
                                                     daemon: VmDaemon) -> None:
    vm = lab.vm
    vm.run(["hostname", "admin-renamed"])
    (lab.root / "etc/hostname").write_text("admin-renamed\n")
    published = lab.root / "var/lib/waagent/published_hostname"
    daemon.wait("the rename published", lambda: published.exists()
                and published.read_text().strip() == "admin-renamed")
    # Published to the platform: the DHCP server heard the new name from the VM's client.
    daemon.wait("the DHCP request with the name", lambda: "admin-renamed"
                in (lab.work / "dnsmasq.log").read_text(errors="replace"))
    daemon.wait("a status blob with the name", lambda: any(
        b["status"]["guestOSInfo"]["computerName"] == "admin-renamed"
        for b in lab.fabric.status_blobs()))
    daemon.wait_loops(3)
    assert vm.run(["hostname"]).stdout.strip() == "admin-renamed"
    assert (lab.root / "etc/hostname").read_text() == "admin-renamed\n"
    assert "hostname" in daemon.state()["monitors"]


def test_a_second_daemon_refuses_and_names_the_pid(lab: harness.Lab, daemon: VmDaemon) -> None:
    pid = daemon.pid()
    second = lab.vm.run(["waagent", "-daemon"], check=False, timeout=120)
    assert second.returncode != 0
    assert f"running as PID {pid}" in second.output
    assert daemon.pid() == pid and daemon.process is not None and daemon.process.poll() is None


def test_sigterm_exits_0_with_the_state_saved(lab: harness.Lab, daemon: VmDaemon) -> None:
    daemon.wait_loops(1)
    daemon.signal("TERM")
    assert daemon.process is not None
    assert daemon.process.wait(60) == 0, daemon.output()[-3000:]
    state = daemon.state()
    assert state["running"] is False and state["loops"] >= 1
    assert "daemon stopped after" in daemon.output()
    assert (lab.root / "var/lib/waagent/graph-state.sqlite3").stat().st_size > 0
    assert lab.vm.run(["test", "-e", "/var/run/waagent.pid"], check=False).returncode != 0


def test_sigkill_then_restart_converges_without_repeating_one_shot_work(
        lab: harness.Lab, daemon: VmDaemon) -> None:
    root = lab.root
    host_key = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text()
    health = len(lab.fabric.health_reports())
    seen = report_names(lab)
    # Killed twice: once while its start-up graph run may still be going, once while idle.
    for kill_when in ("at start", "idle"):
        process = daemon.start()
        if kill_when == "idle":
            daemon.wait_loops(2)
        daemon.signal("KILL")
        process.wait(60)
    daemon.start()
    converged = daemon.wait_loops(3)
    assert converged["last_run"]["result"] == "ok", converged
    assert not any(ONE_SHOT & ran(r) for r in reports_since(lab, seen))
    assert (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text() == host_key
    assert (root / "var/log/waagent.log").read_text().count(CUSTOM_DATA_RAN) == 1
    assert len(lab.fabric.health_reports()) == health  # Ready was already said
    assert lab.fabric.status_blobs()[-1]["problems"] == []
    assert lab.vm.run(["hostname"]).stdout.strip() == "admin-renamed"
    daemon.signal("TERM")
    assert daemon.process is not None and daemon.process.wait(60) == 0
