"""gather:extensions' action: the whole extensions goal state for a new goal state, the
vmSettings alone when only the FastTrack ETag the daemon saw moved."""

from __future__ import annotations

from typing import Any

import pytest

from graph.uptodate import Inputs
from tasks import gather, inputs


def test_a_new_goal_state_reads_both_documents_a_new_etag_only_vmsettings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr("tasks.extensions.gather_extensions",
                        lambda ctx, state=None: calls.append(state))
    monkeypatch.setattr(inputs, "goal_state", lambda ctx: "the goal state")
    digest = {"goal_state": "a"}
    check = Inputs("extensions-goal-state", lambda: digest)
    values: dict[str, Any] = {}

    class Task:  # what Inputs uses of a doit task
        def __init__(self) -> None:
            self.value_savers: list[Any] = []

    task = Task()
    assert check(task, values) is False  # never run: the goal state is new
    gather.gather_extensions_of(None, check)  # type: ignore[arg-type]
    values = {"inputs:extensions-goal-state": {"goal_state": "a"}}
    assert check(task, values) is True  # same goal state: only the ETag moved
    gather.gather_extensions_of(None, check)  # type: ignore[arg-type]
    digest["goal_state"] = "b"
    assert check(task, values) is False
    gather.gather_extensions_of(None, check)  # type: ignore[arg-type]
    assert calls == ["the goal state", None, "the goal state"]
