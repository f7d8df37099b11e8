"""`graph`: every format draws every task with its clusters and edges, colours come from
the plan and the last run, delayed tasks are included, and `--check` finds cycles,
missing tasks and inputs nothing makes; over the real graph for every distro family."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from doit import create_after

from facts.distro import FAMILIES
from graph import loader
from graph.checks import graph_problems
from tests.sandbox import make_sandbox_root
from tests.unit.test_views_support import (
    cyclic_namespace,
    demo_namespace,
    run_command,
    tree_digest,
    write_conf,
)

DEMO_TASKS = {"demo", "demo:state-dir", "demo:swap-conf", "demo:motd", "demo:token"}
# An os-release ID of each distribution family the facts know.
FAMILY_IDS = {"debian": "debian", "rhel": "almalinux", "suse": "sles", "coreos": "flatcar",
              "unknown": "plan9"}


def with_delayed(sandbox: Path) -> dict[str, Any]:
    """The demo plus a task made only once demo:state-dir ran (like extensions)."""
    namespace = demo_namespace(sandbox)

    @create_after(executed="demo:state-dir")  # type: ignore[untyped-decorator]
    def task_late() -> Any:
        """tasks known once the state dir exists"""
        yield {"name": "ext", "doc": "an extension found in the goal state",
               "actions": [lambda: None], "task_dep": ["demo:state-dir"],
               "uptodate": [lambda: True]}

    namespace["task_late"] = task_late
    return namespace


def graph(sandbox: Path, *args: str, build: Any = None) -> tuple[int, str]:
    before = tree_digest(sandbox)
    status, out, err = run_command(["graph", *args], build or (lambda: with_delayed(sandbox)))
    assert tree_digest(sandbox) == before, "drawing the graph changes nothing"
    assert not loader.PROCESS.plan_mode
    return status, out + err


def graph_json(sandbox: Path, *tasks: str) -> dict[str, Any]:
    status, out = graph(sandbox, "--format", "json", *tasks)
    assert status == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


def test_json_has_tasks_edges_clusters_and_delayed_tasks(sandbox: Path) -> None:
    data = graph_json(sandbox, "demo", "late")
    nodes = {n["name"]: n for n in data["tasks"]}
    assert set(nodes) == DEMO_TASKS | {"late", "late:ext"}
    assert nodes["late:ext"]["delayed"] and not nodes["demo:motd"]["delayed"]
    assert nodes["demo:motd"]["cluster"] == "demo" and nodes["demo"]["group"]
    edges = {(e["source"], e["target"], e["kind"]) for e in data["edges"]}
    assert ("demo:state-dir", "demo:swap-conf", "task") in edges
    assert ("demo:swap-conf", "demo:motd", "file") in edges
    assert ("demo:state-dir", "late:ext", "task") in edges


def test_colours_follow_the_plan_and_the_last_run(sandbox: Path, tmp_path: Path) -> None:
    data = graph_json(sandbox, "demo")
    assert {n["plan"] for n in data["tasks"] if not n["group"]} == {"run"}
    assert {n["last"] for n in data["tasks"]} == {None}
    write_conf(sandbox, {"ResourceDisk.SwapSizeMB": 2048})
    status, _out, err = run_command(["run", "-o", str(tmp_path / "run.txt"), "demo"],
                                    lambda: demo_namespace(sandbox))
    assert status == 0, err
    write_conf(sandbox, {"ResourceDisk.SwapSizeMB": 4096})
    nodes = {n["name"]: n for n in graph_json(sandbox, "demo")["tasks"]}
    assert nodes["demo:swap-conf"]["plan"] == "run"
    assert "swap: changed ResourceDisk.SwapSizeMB: 2048 -> 4096" in \
        nodes["demo:swap-conf"]["plan_reasons"]
    assert nodes["demo:motd"]["plan"] == "run", "it reads what swap-conf rewrites"
    assert nodes["demo:state-dir"]["plan"] == "up-to-date"
    assert nodes["demo:swap-conf"]["last"] == "changed"
    _status, dot = graph(sandbox, "demo")
    assert 'fillcolor="#ffe0b2"' in dot and 'fillcolor="#c8e6c9"' in dot


def test_dot_and_mermaid_draw_every_task_in_its_cluster(sandbox: Path) -> None:
    status, dot = graph(sandbox, "demo", "late")
    assert status == 0 and dot.startswith("digraph waagent {")
    for name in DEMO_TASKS | {"late:ext"}:
        assert f'label="{name}' in dot
    assert "subgraph cluster_" in dot and 'label="demo"' in dot
    assert "style=dashed" in dot  # the file edge swap-conf -> motd
    status, mermaid = graph(sandbox, "--format", "mermaid", "demo", "late")
    assert status == 0 and mermaid.startswith("flowchart LR")
    for name in DEMO_TASKS:
        assert f'"{name}"' in mermaid
    assert '["demo"]' in mermaid and "-.->" in mermaid and "(delayed)" in mermaid


def test_svg_and_output_file(sandbox: Path, tmp_path: Path) -> None:
    if shutil.which("dot") is None:
        pytest.skip("missing tools: dot (Debian package graphviz)")
    target = tmp_path / "graph.svg"
    status, out = graph(sandbox, "--format", "svg", "--output", str(target), "demo")
    assert status == 0, out
    svg = html.unescape(target.read_text())  # dot writes '-' as &#45;
    assert "<svg" in svg and ">demo:swap-conf</text>" in svg


def test_check_passes_on_the_demo_and_names_a_cycle(sandbox: Path) -> None:
    status, out = graph(sandbox, "--check", "demo")
    assert status == 0 and "no problems" in out
    status, out = graph(sandbox, "--check", build=lambda: cyclic_namespace(sandbox))
    assert status == 1
    assert "ERROR cycle: ring:a -> ring:c -> ring:b -> ring:a" in out


class FakeTask:
    def __init__(self, name: str, task_dep: list[str] | None = None,
                 file_dep: list[str] | None = None, targets: list[str] | None = None) -> None:
        self.name, self.task_dep = name, task_dep or []
        self.setup_tasks: list[str] = []
        self.file_dep, self.targets = set(file_dep or []), targets or []


def test_checks_name_missing_tasks_and_inputs_nothing_makes() -> None:
    tasks = [FakeTask("disk:mount", ["disk:mkfs"], ["/run/made"]),
             FakeTask("disk:swap", ["disk:m*"], ["/etc/never-made", "/run/made"]),
             FakeTask("report:ready", ["nosuch:*"]),
             FakeTask("disk:made", targets=["/run/made"])]
    assert graph_problems(tasks, exists=lambda path: False) == [
        "disk:mount: task_dep 'disk:mkfs' is not a task",
        "disk:swap: file_dep /etc/never-made does not exist and no task makes it",
        "report:ready: task_dep 'nosuch:*' is not a task",
    ]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_real_graph_passes_the_checks_for_every_distro_family(tmp_path: Path,
                                                              family: str) -> None:
    root = make_sandbox_root(tmp_path / "vm", "d0a2ab11-8a6c-4a5a-9c8c-4cf3d5c2f7a1")
    (root / "etc/os-release").write_text(f'ID={FAMILY_IDS[family]}\nVERSION_ID="1"\n')
    before = tree_digest(root)
    status, out, err = run_command(["graph", "--check", f"root={root}"])
    assert status == 0, out + err
    assert "no problems" in out
    assert tree_digest(root) == before
    status, out, err = run_command(["graph", "--format", "json", "--no-status", f"root={root}"])
    names = {n["name"] for n in json.loads(out)["tasks"]}
    assert "provision" in names
