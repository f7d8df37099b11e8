"""`plan` over the real graph in a sandbox VM provisioned from the fabric on 127.0.0.1:
before the first run every task says "never run"; a plan changes nothing; after a run
the plan names exactly what the next run does; an edit of ResourceDisk.SwapSizeMB adds
exactly the swap task, with the old and the new value."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric import Fabric, default_scenario
from fabric.media import build_media
from tests.sandbox import make_sandbox_root
from tests.unit.test_views_support import run_command, tree_digest, write_conf


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A sandbox root, its media and a running fabric: (root, engine variables)."""
    scenario = default_scenario()
    root = make_sandbox_root(tmp_path / "vm", scenario.vm_id)
    media = build_media(scenario, tmp_path / "ovf.iso")
    # Host keys made by the agent: the sandbox has none, and report:hostkey needs one.
    write_conf(root, {"ResourceDisk.EnableSwap": "y", "ResourceDisk.SwapSizeMB": 2048,
                      "Provisioning.RegenerateSshHostKeyPair": "y"})
    with Fabric(scenario) as fabric:
        yield root, [f"root={root}", f"media={media}", f"wireserver={fabric.wire_url}"]


def plan(root: Path, variables: list[str],
         kept: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The tasks the plan would run; `kept` gets the up-to-date ones that say why."""
    before = tree_digest(root)
    _status, out, err = run_command(["plan", "--json", *variables])
    assert tree_digest(root) == before, "a plan changes nothing, state DB included"
    found = json.loads(out)
    if kept is not None:
        kept.update(found["kept"])
    return {task["name"]: task for task in found["tasks"]}


def provision(root: Path, variables: list[str], tmp_path: Path) -> dict[str, Any]:
    run_command(["run", "-o", str(tmp_path / "run.txt"), "provision", *variables])
    newest = sorted((root / "var/lib/waagent/runs").glob("*.json"))[-1]
    return json.loads(newest.read_text())["tasks"]  # type: ignore[no-any-return]


def test_plan_over_the_real_graph(vm: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, variables = vm
    kept: dict[str, str] = {}
    first = plan(root, variables, kept)
    _status, out, _err = run_command(["graph", "--format", "json", "--no-status", *variables])
    actions = {t["name"] for t in json.loads(out)["tasks"] if not t["group"]}
    provisioning = {name for name in actions if not name.startswith(("deprovision",
                                                                     "serialconsole"))}
    # Every task would run, or says why it has nothing to do on this root (no OEM0
    # table, no persistent-net rules, a new enough kernel...).
    assert provisioning <= set(first) | set(kept), provisioning - set(first) - set(kept)
    for name in provisioning & set(first):
        assert first[name]["reasons"][0] == "never run", first[name]

    provision(root, variables, tmp_path)
    after_run = plan(root, variables)
    second = provision(root, variables, tmp_path)
    ran = {name for name, entry in second.items() if entry["result"] in ("changed", "no-change",
                                                                       "failed")}
    assert set(after_run) == ran, "the plan names what the next run does"

    write_conf(root, {"ResourceDisk.EnableSwap": "y", "ResourceDisk.SwapSizeMB": 4096,
                      "Provisioning.RegenerateSshHostKeyPair": "y"})
    after_edit = plan(root, variables)
    assert set(after_edit) - set(after_run) == {"disk:swapfile"}
    assert any("ResourceDisk.SwapSizeMB: 2048 -> 4096" in reason
               for reason in after_edit["disk:swapfile"]["reasons"])
