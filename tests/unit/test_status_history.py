"""tasks/status.keep_status_copy: a copy of each new status in
`<Lib.Dir>/history/incarnation_<N>/waagent_status.json`, the oldest goal states' copies pruned
beyond HISTORY_KEEP, the current one never."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graph.context import make_context
from tasks import status
from tasks.status import StatusTarget


def target(incarnation: int) -> StatusTarget:
    return StatusTarget(str(incarnation), "c", None, None, "BlockBlob", str(incarnation))


def test_old_goal_states_copies_are_pruned(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "HISTORY_KEEP", 3)
    (tmp_path / "var/lib/waagent").mkdir(parents=True)
    ctx = make_context({"root": str(tmp_path)})
    history = tmp_path / "var/lib/waagent/history"
    for incarnation in range(1, 6):
        status.keep_status_copy(ctx, target(incarnation), b"{}")
        # each older than the next, whatever the clock's granularity
        os.utime(history / f"incarnation_{incarnation}", (incarnation, incarnation))
    assert sorted(os.listdir(history)) == ["incarnation_3", "incarnation_4", "incarnation_5"]
    assert (history / "incarnation_5/waagent_status.json").read_bytes() == b"{}"


def test_the_current_goal_states_copy_is_kept_even_when_oldest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "HISTORY_KEEP", 1)
    (tmp_path / "var/lib/waagent").mkdir(parents=True)
    ctx = make_context({"root": str(tmp_path)})
    history = tmp_path / "var/lib/waagent/history"
    status.keep_status_copy(ctx, target(2), b"{}")
    os.utime(history / "incarnation_2", (4 * 10**9, 4 * 10**9))  # in the future: newest
    status.keep_status_copy(ctx, target(1), b"{}")  # written now, older than 2's stamp
    assert sorted(os.listdir(history)) == ["incarnation_1", "incarnation_2"]
