"""graph/daemon.py's status of each loop: uploaded every loop with the time of that loop;
built again, and a copy kept in the history, only when what it says changed (the goal
state, the VM's name and system, the handlers' part, the agent update's status). And when
the loop wakes: monitors due just before a goal-state pass run with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from graph.daemon import Daemon
from tasks import MONITORS
from tasks import status as status_module
from tasks.status import StatusTarget
from wire import status as wire_status


class Recorder:
    """The uploads and history copies of a Daemon, with a clock that moves each loop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.uploads: list[dict[str, Any]] = []
        self.copies = 0
        self.fail_upload = False
        self.tick = 0
        monkeypatch.setattr(status_module, "upload_status", self.upload)
        monkeypatch.setattr(status_module, "keep_status_copy", self.keep)
        monkeypatch.setattr(wire_status, "utc_stamp", self.stamp)

    def upload(self, ctx: Any, target: Any, content: bytes) -> str:
        if self.fail_upload:
            raise OSError("the HostGAPlugin and the blob refused")
        self.uploads.append(json.loads(content))
        return "HostGAPlugin"

    def keep(self, ctx: Any, target: Any, content: bytes) -> None:
        self.copies += 1

    def stamp(self, when: float | None = None) -> str:
        self.tick += 1
        return f"stamp-{self.tick}"


def target(incarnation: str) -> StatusTarget:
    return StatusTarget(incarnation=incarnation, container_id="c", role_config_name=None,
                        blob_url="http://blob/status", blob_type="BlockBlob",
                        in_svd_seq_no=incarnation)


@pytest.fixture
def daemon(sandbox: Path) -> Daemon:
    (sandbox / "etc").mkdir()
    (sandbox / "etc/hostname").write_text("vm-one\n")
    (sandbox / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    made = Daemon({"root": str(sandbox)}, run_doit=lambda argv: 0)
    made.target = target("1")
    return made


def test_an_idle_loop_uploads_the_same_status_with_a_new_time(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    for _ in range(3):
        daemon.report_status()
    stamps = [blob["timestampUTC"] for blob in recorder.uploads]
    assert len(set(stamps)) == 3, "each loop's upload carries that loop's time"
    assert all({**b, "timestampUTC": None} == {**recorder.uploads[0], "timestampUTC": None}
               for b in recorder.uploads)
    assert recorder.copies == 1, "nothing new said: one copy in the history"
    assert daemon.state["status"]["via"] == "HostGAPlugin"


def test_what_the_status_says_changing_builds_it_again(
        daemon: Daemon, sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    daemon.report_status()
    (sandbox / "etc/hostname").write_text("renamed-by-admin\n")
    daemon.report_status()
    assert recorder.uploads[-1]["guestOSInfo"]["computerName"] == "renamed-by-admin"
    daemon.target = target("2")
    daemon.report_status()
    goal = recorder.uploads[-1]["aggregateStatus"]["vmArtifactsAggregateStatus"]
    assert goal["goalStateAggregateStatus"]["inSvdSeqNo"] == "2"
    daemon.updater.status = {"expectedVersion": "9.9", "status": "Error",
                             "formattedMessage": {"lang": "en-US", "message": "first"}}
    daemon.report_status()
    # Changed in place, as the updater does with a failure's message.
    daemon.updater.status["formattedMessage"]["message"] = "second"
    daemon.report_status()
    agent = recorder.uploads[-1]["aggregateStatus"]["guestAgentStatus"]
    assert agent["updateStatus"]["formattedMessage"]["message"] == "second"
    assert recorder.copies == 5


def test_a_failed_upload_keeps_the_copy_for_the_next_loop(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    recorder.fail_upload = True
    daemon.report_status()
    assert "refused" in daemon.state["status"]["error"]
    assert recorder.copies == 0
    recorder.fail_upload = False
    daemon.report_status()
    assert (len(recorder.uploads), recorder.copies) == (1, 1)


def test_a_monitor_due_shortly_before_the_goal_state_pass_waits_for_it(sandbox: Path) -> None:
    """One wakeup instead of two: a monitor due less than a fifth of its period (30 s by
    default) before the next pass runs with it; one due earlier wakes the loop itself."""
    made = Daemon({"root": str(sandbox)}, run_doit=lambda argv: 0)
    hostname = next(m for m in MONITORS if m.name == "hostname")
    made.monitors = {"hostname": hostname}
    assert made.period(hostname) == 30
    made.monitor_due = {"hostname": 100.0}
    assert made.wake_time(next_pass=104.0) == 104.0
    assert made.wake_time(next_pass=106.0) == 106.0
    assert made.wake_time(next_pass=106.5) == 100.0
    made.monitor_due = {}
    assert made.wake_time(next_pass=104.0) == 104.0
