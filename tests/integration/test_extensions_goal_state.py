"""What the extensions goal state as a whole asks, through `waagent -run-exthandlers` on a
sandbox root against the fabric (no handler command runs: no root needed): required
features this agent lacks fail the goal state with 2001 in the status blob, as waagent's
goalStateAggregateStatus says it; an artifacts profile with onHold pauses extension
handling until a goal state lifts it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fabric import Fabric, default_scenario
from graph.context import make_context
from tasks import extensions as ext
from tests.sandbox import make_sandbox_root

CLI = "import sys\nfrom graph.cli import main\nsys.exit(main())\n"


def one_pass(root: Path, fabric: Fabric) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, "-run-exthandlers", f"root={root}",
         f"wireserver={fabric.wire_url}", f"hostplugin={fabric.hostplugin_url}"],
        capture_output=True, text=True, timeout=120, check=False)


def aggregate(fabric: Fabric) -> dict[str, Any]:
    return fabric.record.status_blobs()[-1]["status"]["aggregateStatus"]  # type: ignore[no-any-return]


def sandbox(tmp_path: Path, vm_id: str) -> Path:
    root = make_sandbox_root(tmp_path / "vm", vm_id)
    (root / "etc/waagent.conf").write_text("")
    return root


def test_unsupported_required_features_fail_the_goal_state_with_2001(tmp_path: Path) -> None:
    scenario = default_scenario()
    scenario.required_features = ["FutureFeature"]
    root = sandbox(tmp_path, scenario.vm_id)
    with Fabric(scenario) as fabric:
        out = one_pass(root, fabric)
        assert "FAILED extensions:unsupported" in out.stdout, out.stdout + out.stderr
        status = aggregate(fabric)["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]
        assert status["status"] == "Failed" and status["code"] == 2001
        assert status["formattedMessage"]["message"] == (
            "Failing GS incarnation: 1 as Unsupported features found: FutureFeature")
        assert status["inSvdSeqNo"] == "1"

        # The platform drops the requirement: the next goal state succeeds.
        fabric.set_goal_state(required_features=[])
        out = one_pass(root, fabric)
        assert "extensions:unsupported" not in out.stdout, out.stdout
        status = aggregate(fabric)["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]
        assert (status["status"], status["code"]) == ("Success", 0)
        assert status["formattedMessage"]["message"] == "GoalState executed successfully"
        assert status["inSvdSeqNo"] == "2"


def test_on_hold_pauses_extension_handling_until_lifted(tmp_path: Path) -> None:
    scenario = default_scenario()
    scenario.on_hold = True
    root = sandbox(tmp_path, scenario.vm_id)
    with Fabric(scenario) as fabric:
        out = one_pass(root, fabric)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "ran extensions:on-hold" in out.stdout, out.stdout
        assert "extensions:skipped" not in out.stdout
        # Nothing processed yet: waagent leaves goalStateAggregateStatus out.
        assert "vmArtifactsAggregateStatus" not in aggregate(fabric)
        assert any("profile.json" in r["headers"].get("x-ms-artifact-location", r["path"])
                   for r in fabric.record.requests()), "the artifacts profile was not read"

        fabric.set_goal_state(on_hold=False)
        out = one_pass(root, fabric)
        assert "extensions:on-hold" not in out.stdout, out.stdout
        assert "extensions:skipped" in out.stdout  # handled (a sandbox runs no handler)
        status = aggregate(fabric)["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]
        assert (status["status"], status["inSvdSeqNo"]) == ("Success", "2")

        # Back on hold: handling stops; the last processed goal state is still reported.
        fabric.set_goal_state(on_hold=True)
        out = one_pass(root, fabric)
        assert "ran extensions:on-hold" in out.stdout, out.stdout
        status = aggregate(fabric)["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]
        assert status["status"] == "Success"


def test_a_version_prefix_resolves_to_the_newest_match_and_names_the_directory(
        tmp_path: Path) -> None:
    scenario = default_scenario()
    noop = scenario.extensions[0]
    noop.version = "1.0.7"
    root = sandbox(tmp_path, scenario.vm_id)
    with Fabric(scenario) as fabric:
        # The manifest offers 1.0.7 and 1.0 (every version published stays), 1.1.0 later.
        fabric.set_extension(noop.name, version="1.0")
        out = one_pass(root, fabric)
        assert f"{noop.name}: version 1.0 resolves to 1.0.7" in out.stderr, out.stderr
        facts = json.loads((root / "var/lib/waagent/facts/extensions.json").read_text())
        handler = facts["handlers"][0]
        assert (handler["requested_version"], handler["version"]) == ("1.0", "1.0.7")
        assert handler["package_uris"][0].endswith(f"/packages/{noop.name}__1.0.7.zip")
        ctx = make_context({"root": str(root)})
        assert ext.handler_dir(ctx, noop.name, "1.0.7").name == f"{noop.name}-1.0.7"
