"""bench/daemon.py's measuring parts: the cgroup its agents run in, the latency samples'
offsets and times, and the interned-string table bench/daemon_loops.py reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import daemon as bench  # noqa: E402
import daemon_loops  # noqa: E402
import vmharness  # noqa: E402


def test_offsets_spread_evenly_over_the_period() -> None:
    offsets = bench.offsets(8)
    steps = {round(b - a, 9) for a, b in zip(offsets, offsets[1:], strict=False)}
    assert steps == {bench.PERIOD / 8}
    assert offsets[0] == bench.PERIOD / 16 and offsets[-1] == bench.PERIOD - bench.PERIOD / 16


def test_goal_state_gets_are_the_goal_state_documents_asked_for() -> None:
    record = {"requests": [
        {"route": "goalstate", "method": "GET", "time": 1.0},
        {"route": "vmsettings", "method": "GET", "time": 2.0},
        {"route": "goalstate", "method": "HEAD", "time": 3.0},
        {"route": "goalstate", "method": "GET", "time": 4.0},
    ]}
    assert bench.goal_state_gets(record) == [1.0, 4.0]
    assert bench.goal_state_gets({}) == []


def test_latency_from_publication_and_from_the_get_that_saw_it() -> None:
    latency = bench.Latency(offset=1.5, published=10.0, seen=14.5, uploaded=14.75)
    assert latency.total == 4.75
    assert latency.handled == 0.25


def test_a_command_joins_the_cgroup_before_it_runs(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """What `argv` starts writes its own PID to cgroup.procs, then execs the command in the
    same process (a plain directory stands in for the cgroup here)."""
    monkeypatch.setattr(vmharness, "CPUACCT", tmp_path)
    cgroup = vmharness.CpuCgroup("bench")
    cgroup.path.mkdir()
    done = subprocess.run(cgroup.argv(["sh", "-c", "echo $$"]), capture_output=True,
                          text=True, check=True)
    assert (cgroup.path / "cgroup.procs").read_text().strip() == done.stdout.strip()


def test_no_cpuacct_hierarchy_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmharness, "CPUACCT", tmp_path / "cpuacct")
    with pytest.raises(RuntimeError, match="no cgroup v1 cpuacct hierarchy"), \
            vmharness.CpuCgroup("bench"):
        pass


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="CPython 3.11's layout")
def test_interned_table_counts_live_interned_strings() -> None:
    before = daemon_loops.interned_table()
    assert before is not None and before["live"] < before["size"]
    kept = [sys.intern(f"bench-daemon-test-{i}") for i in range(3000)]
    after = daemon_loops.interned_table()
    assert after is not None and after["live"] >= before["live"] + len(kept)
    del kept
    gone = daemon_loops.interned_table()
    assert gone is not None and gone["live"] <= after["live"] - 3000
