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


def mark_provisioned(tmp_path: Path, text: str) -> None:
    marker = tmp_path / "var/lib/waagent/provisioned"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(text)


VM = "12345678-9abc-def0-1234-56789abcdef0"


@pytest.mark.parametrize("marker", [VM + "\n", VM.upper(), "78563412-BC9A-F0DE-1234-56789ABCDEF0",
                                    ""])
def test_a_vm_another_agent_provisioned_is_adopted_without_the_work(tmp_path: Path,
                                                                     marker: str) -> None:
    """waagent replaced on a running VM: its marker (in any of waagent's forms, or the empty
    one of older agents) says provisioned, this agent has no record: nothing is done again,
    the inputs are recorded, and from then on only a change of them runs the task."""
    mark_provisioned(tmp_path, marker)
    ctx, calls = context(tmp_path, vm_id=VM), []
    task = task_for(ctx, calls, {"username": "bob"}, record_first=True)
    assert not check(task)
    assert "provisioned before this agent kept a record" in task["uptodate"][0].reason
    run(task)
    assert calls == [], "an adopted task does none of its work"
    assert check(task_for(context(tmp_path, vm_id=VM), calls, {"username": "bob"}))
    changed = task_for(context(tmp_path, vm_id=VM), calls, {"username": "alice"})
    assert not check(changed)
    run(changed)
    assert len(calls) == 1, "a changed input runs the adopted task's work"


def test_a_marker_of_another_vm_adopts_nothing(tmp_path: Path) -> None:
    mark_provisioned(tmp_path, "12345678-9abc-def0-1234-56789abcdef1")
    ctx, calls = context(tmp_path, vm_id=VM), []
    task = task_for(ctx, calls, {"username": "bob"})
    assert not check(task)
    assert task["uptodate"][0].reason == f"not done yet for VM id {VM}"
    run(task)
    assert calls == ["work"]


def test_without_ovf_data_a_provisioned_vm_keeps_its_tasks_done(tmp_path: Path) -> None:
    """No DVD and no kept ovf-env.xml on a provisioned VM: no new platform data, nothing
    to do; on a VM not provisioned the check says why it cannot tell (the task then fails
    with that message)."""
    def missing() -> dict[str, Any]:
        raise once.inputs.NotProvisionable("no provisioning data")

    calls: list[str] = []
    task = once.once(context(tmp_path, vm_id=VM), "user",
                     {"name": "account", "actions": [(lambda: calls.append("work"), [])]},
                     missing)
    assert not check(task)
    assert task["uptodate"][0].reason == "cannot check: no provisioning data"
    mark_provisioned(tmp_path, VM)
    assert check(task)
    assert task["uptodate"][0].kept == ("this VM is provisioned; no OVF data left to compare "
                                        "its inputs with")


def test_an_adoption_cut_short_adopts_the_rest_at_the_next_start(tmp_path: Path) -> None:
    """A SIGKILL after the first adopted task: the record says the VM was adopted, so the
    next start adopts the remaining tasks instead of doing their work."""
    mark_provisioned(tmp_path, VM)
    calls: list[str] = []
    first = task_for(context(tmp_path, vm_id=VM), calls, {"username": "bob"})
    check(first)
    run(first)
    record = (tmp_path / f"var/lib/waagent/provisioning/{VM}.json").read_text()
    assert '"adopted"' in record
    ctx = context(tmp_path, vm_id=VM)
    later = once.once(ctx, "ssh", {"name": "hostkeys", "actions": [(lambda: calls.append("keys"), [])]},
                      lambda: {"type": "rsa"})
    assert not check(later)
    run(later)
    assert calls == []


def test_a_task_after_the_marker_in_this_agents_own_provisioning_does_its_work(
        tmp_path: Path) -> None:
    """This agent writes the marker after the critical tasks; a task that runs after it
    (publishing the hostname) in the same or a later boot is not adopted."""
    calls: list[str] = []
    run(task_for(context(tmp_path, vm_id=VM), calls, {"username": "bob"}))
    mark_provisioned(tmp_path, VM)
    publish = once.once(context(tmp_path, vm_id=VM), "publish",
                        {"name": "hostname", "actions": [(lambda: calls.append("publish"), [])]},
                        lambda: {"hostname": "vm"})
    assert not check(publish)
    run(publish)
    assert calls == ["work", "publish"]
