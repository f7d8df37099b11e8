"""gather:extensions reads the extensions goal state once per goal state, in a task of its
own (the provision group reads it after Ready): through `waagent -run-exthandlers` and
`waagent run` on a sandbox root against the fabric (no root needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fabric import Fabric, default_scenario
from tests.sandbox import make_sandbox_root

CLI = "import sys\nfrom graph.cli import main\nsys.exit(main())\n"


def waagent(root: Path, fabric: Fabric, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", CLI, *args, f"root={root}", f"wireserver={fabric.wire_url}",
         f"hostplugin={fabric.hostplugin_url}"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def ran(root: Path) -> set[str]:
    runs = sorted((root / "var/lib/waagent/runs").glob("*.json"))
    tasks = json.loads(runs[-1].read_text())["tasks"]
    return {name for name, entry in tasks.items()
            if entry.get("result") in ("changed", "no-change", "failed")}


def extensions_id(root: Path) -> str:
    facts = json.loads((root / "var/lib/waagent/facts/extensions.json").read_text())
    return str(facts["id"])


def test_the_extensions_goal_state_is_read_for_each_new_goal_state_even_after_a_stop(
        tmp_path: Path) -> None:
    scenario = default_scenario()
    root = make_sandbox_root(tmp_path / "vm", scenario.vm_id)
    (root / "etc/waagent.conf").write_text("")
    with Fabric(scenario) as fabric:
        waagent(root, fabric, "-run-exthandlers")
        assert "gather:extensions" in ran(root) and extensions_id(root) == "incarnation_1"

        waagent(root, fabric, "-run-exthandlers")  # nothing new
        assert "gather:extensions" not in ran(root)

        # A new goal state, and the agent stops right after storing it (killed, or a
        # run of that task alone): the next pass still reads its extensions.
        incarnation = fabric.bump_incarnation()
        waagent(root, fabric, "run", "gather:goalstate")
        assert extensions_id(root) == "incarnation_1"
        waagent(root, fabric, "-run-exthandlers")
        assert "gather:extensions" in ran(root)
        assert extensions_id(root) == f"incarnation_{incarnation}"
