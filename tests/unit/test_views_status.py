"""`status`: the last run report as a table; nothing before the first run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.test_views_support import demo_namespace, run_command, write_conf


def test_status_before_any_run_says_so_and_creates_nothing(sandbox: Path) -> None:
    status, out, _err = run_command(["status", f"root={sandbox}"])
    assert status == 1 and "no run report yet" in out
    assert not any(sandbox.iterdir())


def test_status_prints_the_last_run_as_a_table(sandbox: Path, tmp_path: Path) -> None:
    write_conf(sandbox, {"ResourceDisk.SwapSizeMB": 2048})
    for swap in (2048, 4096):
        write_conf(sandbox, {"ResourceDisk.SwapSizeMB": swap})
        status, _out, err = run_command(["run", "-o", str(tmp_path / "run.txt"), "demo"],
                                        lambda: demo_namespace(sandbox))
        assert status == 0, err
    status, out, _err = run_command(["status", f"root={sandbox}"])
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("Last run: ") and "0 failed" in lines[0]
    assert lines[1].split() == ["TASK", "RESULT", "TIME", "REASON", "/", "ERROR"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert "changed" in rows["demo:swap-conf"]
    assert "ResourceDisk.SwapSizeMB: 2048 -> 4096" in rows["demo:swap-conf"]
    assert "up-to-date" in rows["demo:state-dir"]
    status, out, _err = run_command(["status", "--changes", f"root={sandbox}"])
    assert "demo:state-dir" not in out and "demo:swap-conf" in out
    status, out, _err = run_command(["status", "--json", f"root={sandbox}"])
    assert json.loads(out)["tasks"]["demo:swap-conf"]["result"] == "changed"


def test_status_passes_over_a_report_cut_short(sandbox: Path, tmp_path: Path) -> None:
    """Run reports are written without fsync: after a power cut the newest may be empty."""
    write_conf(sandbox, {"ResourceDisk.SwapSizeMB": 2048})
    status, _out, err = run_command(["run", "-o", str(tmp_path / "run.txt"), "demo"],
                                    lambda: demo_namespace(sandbox))
    assert status == 0, err
    runs = sandbox / "var/lib/waagent/runs"
    (runs / "99999999T000000.000000Z.json").write_text("")
    status, out, _err = run_command(["status", f"root={sandbox}"])
    assert status == 0 and "demo:swap-conf" in out
