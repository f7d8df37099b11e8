"""Once per VM (tasks/once.py): the record on disk, not the live system, decides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conf.config import default_config
from graph.context import Context
from system import FileSystem, Root, Runner
from tasks import once


class FakeTask:
    """What doit hands an uptodate callable: only `value_savers` is used by Checks."""

    def __init__(self) -> None:
        self.value_savers: list[Any] = []


def context(tmp_path: Path, vm_id: str = "vm-1", plan: bool = False) -> Context:
    root = Root(tmp_path)
    runner = Runner(root=root, plan=plan)
    ctx = Context(root=root, conf=default_config(), run=runner, fs=FileSystem(runner))
    ctx.state.vm_id = vm_id  # tasks.inputs.vm_id reads the run state first
    return ctx


def task_for(ctx: Context, calls: list[str], inputs: dict[str, Any],
             record_first: bool = False, fail: bool = False) -> dict[str, Any]:
    def work() -> None:
        # With record_first the record is on disk before the work starts.
        calls.append("work" if not once.records(ctx) else "work-after-record")
        if fail:
            raise RuntimeError("the work failed")

    return once.once(ctx, "user", {"name": "account", "actions": [(work, [])]},
                     lambda: dict(inputs), record_first=record_first)


def check(task: dict[str, Any]) -> bool:
    return bool(task["uptodate"][0](FakeTask(), {}))


def run(task: dict[str, Any]) -> None:
    for function, args in task["actions"]:
        function(*args)


def test_runs_until_recorded_then_is_up_to_date_from_the_record(tmp_path: Path) -> None:
    ctx, calls = context(tmp_path), []
    task = task_for(ctx, calls, {"vm_id": "vm-1", "username": "bob"})
    assert not check(task)
    assert task["uptodate"][0].reason == "not done yet for VM id vm-1"
    run(task)
    assert calls == ["work"]
    # A new run (new run state, no doit state at all) sees the record on disk.
    again = task_for(context(tmp_path), calls, {"vm_id": "vm-1", "username": "bob"})
    assert check(again)
    assert again["uptodate"][0].kept == "provisioned for VM id vm-1; inputs unchanged"
    record = tmp_path / "var/lib/waagent/provisioning/vm-1.json"
    assert (record.stat().st_mode & 0o777) == 0o600


def test_a_changed_input_or_vm_id_runs_again(tmp_path: Path) -> None:
    ctx, calls = context(tmp_path), []
    run(task_for(ctx, calls, {"OS.SudoersDir": "/etc/sudoers.d"}))
    changed = task_for(context(tmp_path), calls, {"OS.SudoersDir": "/etc/sudo.d"})
    assert not check(changed)
    assert "OS.SudoersDir: /etc/sudoers.d -> /etc/sudo.d" in changed["uptodate"][0].reason
    other_vm = task_for(context(tmp_path, vm_id="vm-2"), calls,
                        {"OS.SudoersDir": "/etc/sudoers.d"})
    assert not check(other_vm)


def test_a_failed_action_records_nothing(tmp_path: Path) -> None:
    ctx, calls = context(tmp_path), []
    task = task_for(ctx, calls, {"a": 1}, fail=True)
    check(task)
    with pytest.raises(RuntimeError):
        run(task)
    assert not check(task_for(context(tmp_path), calls, {"a": 1}))


def test_record_first_marks_before_the_work(tmp_path: Path) -> None:
    """Custom data runs at most once: a SIGKILL inside it does not run it again."""
    ctx, calls = context(tmp_path), []
    task = task_for(ctx, calls, {"sha256": "abc"}, record_first=True, fail=True)
    check(task)
    with pytest.raises(RuntimeError):
        run(task)
    assert calls == ["work-after-record"]
    assert check(task_for(context(tmp_path), calls, {"sha256": "abc"}))


def test_secrets_are_kept_as_digests(tmp_path: Path) -> None:
    ctx, calls = context(tmp_path), []
    task = task_for(ctx, calls, {"secret:password": "hunter2-pw"})
    check(task)
    run(task)
    record = (tmp_path / "var/lib/waagent/provisioning/vm-1.json").read_text()
    assert "hunter2-pw" not in record


def test_plan_mode_writes_no_record(tmp_path: Path) -> None:
    ctx, calls = context(tmp_path, plan=True), []
    task = task_for(ctx, calls, {"a": 1})
    check(task)
    run(task)
    assert not (tmp_path / "var/lib/waagent/provisioning").exists()


def test_an_unreadable_record_stops_the_work(tmp_path: Path) -> None:
    record = tmp_path / "var/lib/waagent/provisioning/vm-1.json"
    record.parent.mkdir(parents=True)
    record.write_text("{not json")
    ctx, calls = context(tmp_path), []
    task = task_for(ctx, calls, {"a": 1})
    assert not check(task)
    assert "unreadable" in task["uptodate"][0].reason
    with pytest.raises(once.OnceRecordError, match="provisioning/vm-1.json is unreadable"):
        run(task)
    assert calls == [], "no work when what was done cannot be told"


def test_odd_vm_ids_make_safe_file_names(tmp_path: Path) -> None:
    ctx = context(tmp_path, vm_id="../../etc/x")
    assert once.record_path(ctx).parent == tmp_path / "var/lib/waagent/provisioning"
