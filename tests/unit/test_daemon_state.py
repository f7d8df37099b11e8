"""graph/daemon.py's daemon.json: what changes is written at once, the counters and times
alone every STATE_EVERY_LOOPS loops, and `waagent status` says which is which."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graph.daemon import STATE_EVERY_LOOPS, STATE_FILE, Daemon
from tests.unit.test_views_support import run_command


def written(sandbox: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((sandbox / "var/lib/waagent" / STATE_FILE).read_text())
    return data


def idle_loop(daemon: Daemon) -> None:
    """What an idle goal-state pass changes in the state: its counter and upload time."""
    daemon.state["loops"] += 1
    daemon.state["status"] = {**daemon.state["status"], "at": float(daemon.state["loops"])}
    daemon.save_state()


def test_counters_alone_are_written_every_few_loops(sandbox: Path) -> None:
    daemon = Daemon({"root": str(sandbox)}, run_doit=lambda argv: 0)
    daemon.state["status"] = {"via": "HostGAPlugin", "incarnation": "1"}
    idle_loop(daemon)
    assert written(sandbox)["loops"] == 1  # the first state is written at once
    for _ in range(STATE_EVERY_LOOPS - 1):
        idle_loop(daemon)
        assert written(sandbox)["loops"] == 1
    idle_loop(daemon)
    assert written(sandbox)["loops"] == 1 + STATE_EVERY_LOOPS
    assert written(sandbox)["counters_every"] == STATE_EVERY_LOOPS


def test_anything_else_is_written_at_once(sandbox: Path) -> None:
    daemon = Daemon({"root": str(sandbox)}, run_doit=lambda argv: 0)
    idle_loop(daemon)
    idle_loop(daemon)
    daemon.state["goal_state"] = {"incarnation": "2", "seen_at": 1.0}
    idle_loop(daemon)
    assert (written(sandbox)["loops"], written(sandbox)["goal_state"]["incarnation"]) == (3, "2")
    idle_loop(daemon)
    daemon.state["status"] = {"at": 9.0, "error": "the HostGAPlugin and the blob refused"}
    daemon.save_state()
    assert written(sandbox)["status"]["error"].startswith("the HostGAPlugin")
    idle_loop(daemon)
    daemon.save_state(stopped=True)  # the last word of a daemon that stops
    assert (written(sandbox)["loops"], written(sandbox)["running"]) == (5, False)


def test_status_shows_the_daemon_and_how_fresh_its_counters_are(sandbox: Path) -> None:
    daemon = Daemon({"root": str(sandbox)}, run_doit=lambda argv: 0)
    daemon.state["status"] = {"via": "HostGAPlugin", "incarnation": "1"}
    idle_loop(daemon)
    _status, out, _err = run_command(["status", f"root={sandbox}"])
    lines = out.splitlines()
    assert lines[0].startswith(f"Daemon: running (PID {daemon.state['pid']}) since ")
    assert ", 1 loops, " in lines[0]
    assert f"writes them every {STATE_EVERY_LOOPS} loops, anything else at once" in lines[1]
    assert "via HostGAPlugin (incarnation 1)" in out
    daemon.save_state(stopped=True)
    _status, out, _err = run_command(["status", f"root={sandbox}"])
    assert "not running (was PID" in out and "writes them every" not in out
