"""`plan` and `list --status` over the demo area: why tasks would run, what they would
change, and proof that looking changes neither the sandbox nor doit's state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graph import loader
from graph.uptodate import Probe
from tests.unit.test_views_support import (
    demo_namespace,
    run_command,
    tree_digest,
    write_conf,
)

STATE_DB = Path("var/lib/waagent/graph-state.sqlite3")


def plan(sandbox: Path, *tasks: str, build: Any = None) -> tuple[int, dict[str, Any]]:
    """The JSON plan, asserting it changed nothing in the sandbox (state DB included)."""
    before = tree_digest(sandbox)
    status, out, err = run_command(["plan", "--json", *(tasks or ("demo",))],
                                   build or (lambda: demo_namespace(sandbox)))
    assert tree_digest(sandbox) == before, "a plan must change nothing"
    assert not loader.PROCESS.plan_mode, "plan mode ends with the plan"
    return status, json.loads(out)


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {task["name"]: task for task in result["tasks"]}


def run_demo(sandbox: Path, tmp_path: Path) -> None:
    status, out, err = run_command(["run", "-o", str(tmp_path / "run.txt"), "demo"],
                                   lambda: demo_namespace(sandbox))
    assert status == 0, (tmp_path / "run.txt").read_text() + err


def test_first_plan_lists_every_task_as_never_run_with_its_changes(sandbox: Path) -> None:
    write_conf(sandbox, {"ResourceDisk.SwapSizeMB": 2048})
    status, result = plan(sandbox)
    assert status == 0
    tasks = by_name(result)
    assert set(tasks) == {"demo:state-dir", "demo:swap-conf", "demo:motd", "demo:token"}
    for task in tasks.values():
        assert task["outcome"] == "run" and task["reasons"][0] == "never run", task
    changes = {(c["kind"], c["target"]) for t in tasks.values() for c in t["changes"]}
    assert ("mkdir", "/var/lib/waagent/demo") in changes
    assert ("write", "/etc/demo-swap.conf") in changes
    assert "swap conf: /etc/demo-swap.conf missing" in tasks["demo:swap-conf"]["reasons"]
    # motd reads what swap-conf would write: it runs after it, not "missing input".
    assert "input /etc/demo-swap.conf is remade by demo:swap-conf" in tasks["demo:motd"]["reasons"]
    assert not (sandbox / STATE_DB).exists(), "no doit state was created"


def test_plan_after_a_run_lists_nothing_and_leaves_the_state_db_alone(
        sandbox: Path, tmp_path: Path) -> None:
    write_conf(sandbox, {"ResourceDisk.SwapSizeMB": 2048})
    run_demo(sandbox, tmp_path)
    db = (sandbox / STATE_DB).read_bytes()
    status, result = plan(sandbox)
    assert status == 0 and result["tasks"] == []
    assert sorted(result["up_to_date"]) == ["demo:motd", "demo:state-dir", "demo:swap-conf",
                                            "demo:token"]
    assert (sandbox / STATE_DB).read_bytes() == db
    status, text, _err = run_command(["plan", "demo"], lambda: demo_namespace(sandbox))
    assert "Nothing to do: 4 tasks up to date." in text


def test_plan_after_a_config_edit_lists_exactly_the_tasks_using_it(
        sandbox: Path, tmp_path: Path) -> None:
    write_conf(sandbox, {"ResourceDisk.SwapSizeMB": 2048})
    run_demo(sandbox, tmp_path)
    write_conf(sandbox, {"ResourceDisk.SwapSizeMB": 4096})
    status, result = plan(sandbox)
    tasks = by_name(result)
    assert set(tasks) == {"demo:swap-conf", "demo:motd"}
    swap = tasks["demo:swap-conf"]
    assert "swap: changed ResourceDisk.SwapSizeMB: 2048 -> 4096" in swap["reasons"]
    assert "swap conf: /etc/demo-swap.conf says size=2048, want size=4096" in swap["reasons"]
    assert [(c["kind"], c["target"]) for c in swap["changes"]] == [("write",
                                                                      "/etc/demo-swap.conf")]
    assert tasks["demo:motd"]["reasons"] == ["input /etc/demo-swap.conf is remade by "
                                             "demo:swap-conf"]
    status, text, _err = run_command(["plan", "demo"], lambda: demo_namespace(sandbox))
    assert "RUN  demo:swap-conf" in text and "would write /etc/demo-swap.conf" in text
    assert "Plan: 2 to run, 0 may run, 0 would fail, 0 blocked, 2 up to date." in text


def test_plan_masks_secrets(sandbox: Path, tmp_path: Path) -> None:
    token = sandbox / "var/lib/demo-token"
    token.parent.mkdir(parents=True)
    token.write_text("hunter2-old")
    run_demo(sandbox, tmp_path)
    token.write_text("hunter2-new")
    _status, result = plan(sandbox)
    text = json.dumps(result)
    assert "hunter2" not in text
    [reason] = by_name(result)["demo:token"]["reasons"]
    assert reason.startswith("token: changed secret:token: secret:")


def test_plan_names_the_probe_that_disagrees(sandbox: Path, tmp_path: Path) -> None:
    run_demo(sandbox, tmp_path)
    (sandbox / "etc/demo-swap.conf").unlink()
    _status, result = plan(sandbox)
    reasons = by_name(result)["demo:swap-conf"]["reasons"]
    assert "target missing: /etc/demo-swap.conf" in reasons
    assert "swap conf: /etc/demo-swap.conf missing" in reasons


def broken_namespace(sandbox: Path) -> dict[str, Any]:
    namespace = demo_namespace(sandbox)

    def unreadable() -> bool:
        raise OSError("cannot read /sys/block: no such directory")

    def refuse() -> None:
        raise RuntimeError("refusing to format /dev/sdb1: it holds 3 files")

    def task_broken() -> Any:
        """tasks that cannot run"""
        yield {"name": "check", "doc": "a task whose up-to-date check raises",
               "actions": [lambda: None], "uptodate": [unreadable]}
        yield {"name": "after", "doc": "a task after it", "actions": [lambda: None],
               "task_dep": ["broken:check"], "uptodate": [lambda: False]}
        yield {"name": "action", "doc": "a task whose action fails", "actions": [refuse],
               "uptodate": [Probe("disk", lambda: "disk unformatted")]}

    namespace["task_broken"] = task_broken
    return namespace


def test_failures_are_reported_with_their_dependents(sandbox: Path) -> None:
    status, result = plan(sandbox, "broken", build=lambda: broken_namespace(sandbox))
    assert status == 1
    tasks = by_name(result)
    assert tasks["broken:check"]["outcome"] == "fail"
    assert any("cannot read /sys/block" in r for r in tasks["broken:check"]["reasons"])
    assert tasks["broken:after"]["outcome"] == "blocked"
    assert tasks["broken:after"]["reasons"] == ["never run"]
    assert "broken:check" in tasks["broken:after"]["error"]
    action = tasks["broken:action"]
    assert action["outcome"] == "fail" and "refusing to format /dev/sdb1" in action["error"]
    assert action["reasons"] == ["never run", "disk: disk unformatted"]


def list_status(sandbox: Path) -> dict[str, str]:
    status, out, err = run_command(["list", "--all", "--status", "demo"],
                                   lambda: demo_namespace(sandbox))
    assert status == 0, err
    return {line.split()[1]: line.split()[0] for line in out.splitlines() if line.strip()}


def test_list_status_reads_the_real_state_without_changing_it(
        sandbox: Path, tmp_path: Path) -> None:
    write_conf(sandbox, {"ResourceDisk.SwapSizeMB": 2048})
    run_demo(sandbox, tmp_path)
    before = tree_digest(sandbox)
    assert list_status(sandbox) == {"demo": "R", "demo:state-dir": "U", "demo:swap-conf": "U",
                                    "demo:motd": "U", "demo:token": "U"}
    (sandbox / "etc/demo-swap.conf").write_text("size=1\n")  # someone edited it by hand
    before = tree_digest(sandbox)
    status = list_status(sandbox)
    assert status["demo:swap-conf"] == "R" and status["demo:motd"] == "R"
    assert status["demo:state-dir"] == "U"
    assert tree_digest(sandbox) == before, "probes have no side effects"
