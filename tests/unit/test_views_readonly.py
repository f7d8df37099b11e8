"""Read-only commands write nothing; a cancelled deprovision is one line; a task this
configuration's graph does not hold is explained, not a KeyError; the run report tells
"ran, changed nothing" from "changed"."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox import make_sandbox_root
from tests.unit.test_views_support import demo_namespace, run_command, write_conf

VM_ID = "c0ffee00-1234-4abc-8def-0123456789ab"


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path below `root` (and root itself) with its mode and mtime."""
    found = {".": (root.lstat().st_mode, root.lstat().st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            found[str(full.relative_to(root))] = (st.st_mode, st.st_mtime_ns)
    return found


@pytest.fixture
def vm(tmp_path: Path) -> Path:
    root = make_sandbox_root(tmp_path / "vm", VM_ID)
    write_conf(root, {"Provisioning.Agent": "waagent", "ResourceDisk.Format": "n"})
    return root


@pytest.mark.parametrize("command", [
    ["list"], ["list", "--all", "--status"], ["info", "gather:vm"], ["plan"],
    ["plan", "user"], ["graph", "--format", "json"], ["facts"], ["status"],
    ["forget", "user:account"],
])
def test_read_only_commands_create_nothing_on_the_root(vm: Path, command: list[str]) -> None:
    before = listing(vm)
    run_command([*command, f"root={vm}"])
    assert listing(vm) == before, f"{command[0]} changed the root"


def deprovision(vm: Path, tmp_path: Path, answer: str) -> tuple[int, str]:
    report = tmp_path / "run.txt"
    stdin, sys.stdin = sys.stdin, io.StringIO(answer)
    try:
        status, out, err = run_command(["run", "-o", str(report), "deprovision", f"root={vm}"])
    finally:
        sys.stdin = stdin
    return status, out + (report.read_text() if report.exists() else "") + err


def test_a_cancelled_deprovision_is_one_line_and_creates_nothing(vm: Path,
                                                                  tmp_path: Path) -> None:
    (vm / "etc/ssh/ssh_host_rsa_key").write_text("not really a key\n")
    before = listing(vm)
    status, out = deprovision(vm, tmp_path, "n\n")
    assert status != 0
    assert listing(vm) == before
    after_question = out.split("Do you want to proceed (y/n)? ", 1)[1]
    assert after_question.strip().count("\n") == 0, out
    assert "deprovision cancelled" in after_question and "not run" not in out, out


def test_info_and_plan_say_why_a_task_is_not_in_this_graph(vm: Path) -> None:
    write_conf(vm, {"Provisioning.Agent": "cloud-init"})
    why = ("user:account is not in this graph: Provisioning.Agent=cloud-init, so cloud-init "
           "provisions the user")
    for command in (["info", "user:account"], ["plan", "user:account"]):
        status, out, err = run_command([*command, f"root={vm}"])
        assert status != 0, command
        assert why in out + err, (command, out, err)
        assert "Traceback" not in out + err and "KeyError" not in out + err


def test_a_task_left_out_by_a_conf_flag_names_the_flag(vm: Path) -> None:
    write_conf(vm, {"Provisioning.Agent": "waagent",
                    "Provisioning.RegenerateSshHostKeyPair": "n"})
    status, out, err = run_command(["info", "ssh:hostkeys", f"root={vm}"])
    assert status != 0
    assert ("ssh:hostkeys is not in this graph: Provisioning.RegenerateSshHostKeyPair=n"
            in out + err), out + err
    status, out, err = run_command(["info", "user:nosuchtask", f"root={vm}"])
    assert status != 0 and "user:nosuchtask" in err and "Traceback" not in out + err


def always_namespace(sandbox: Path) -> dict[str, Any]:
    """The demo graph plus a task without an up-to-date check that writes the same file."""
    from graph import loader

    namespace = demo_namespace(sandbox)
    ctx = loader.PROCESS.context
    assert ctx is not None

    def write_same() -> None:
        ctx.fs.write(ctx.path("etc/demo-same"), "same\n", why="the same every time")

    def task_again() -> Any:
        """again: a task that runs every time"""
        yield {"name": "same", "doc": "write the same file", "actions": [(write_same, [])]}

    namespace["task_again"] = task_again
    return namespace


def test_a_task_that_ran_and_changed_nothing_says_so(sandbox: Path, tmp_path: Path) -> None:
    outputs = []
    for run in ("first", "second"):
        out = tmp_path / f"{run}.txt"
        status, _out, err = run_command(["run", "-o", str(out), "again"],
                                        lambda: always_namespace(sandbox))
        assert status == 0, err
        outputs.append(out.read_text())
    assert "ran again:same  no up-to-date check" in outputs[0]
    assert "ran again:same  no change; no up-to-date check" in outputs[1], outputs[1]
    assert "1 ran, 0 failed" in outputs[1] and "1 ran without a change" in outputs[1]
    status, out, _err = run_command(["status", "--json", f"root={sandbox}"])
    entry = json.loads(out)["tasks"]["again:same"]
    assert entry["result"] == "no-change" and entry["changes"] == 0
    status, out, _err = run_command(["status", f"root={sandbox}"])
    row = next(line for line in out.splitlines() if line.startswith("again:same"))
    assert row.split()[1] == "no-change"
