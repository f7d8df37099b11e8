"""Defects the crash campaign found (tests/campaigns/crash.py), kept as regression tests.

- Facts store truncated or corrupted (`facts truncated`, `facts corrupted`): every boot
  stopped at gather:goalstate ("is not JSON; delete it"); facts are a cache of what is
  gathered, so the file is gathered again (tests/unit/test_facts_distro.py holds the store's
  own test).
- Lib.Dir full (`Lib.Dir full`, a 2 MiB tmpfs): doit's state DB could not be saved and the
  run report not written, and both ended in a traceback.
- A read-only root (`read-only root`): a traceback from the transport key generation
  started before the graph.
- Deprovision killed after its last step (`after:deprovision:agent-state`, and random kills
  late in the run): Lib.Dir was empty, and every later deprovision+user refused ("cannot
  tell which user was provisioned"), so the image could not be deprovisioned again.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from doit.dependency import JSONCodec

from graph.context import make_context
from graph.doit_private import AgentStateDB
from tasks import deprovision
from tests.unit.test_deprovision_tasks import provisioned_root


def test_a_state_db_that_cannot_be_saved_is_an_error_line_not_a_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "lib").write_text("a file where Lib.Dir should be\n")
    db = AgentStateDB(str(tmp_path / "lib/graph-state.sqlite3"), JSONCodec())
    db.set("gather:vm", "_values_:", {"vm_id": "x"})
    with caplog.at_level(logging.ERROR):
        db.dump()
    assert "cannot save the run's state" in caplog.text


def test_a_read_only_root_is_one_clear_line(tmp_path: Path) -> None:
    if not Path("/proc/self/mountinfo").exists() or subprocess.run(
            ["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        pytest.skip("needs root to mount")
    root = tmp_path / "vm"
    (root / "var/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
        out = subprocess.run([sys.executable, "-c", "import sys; from graph.cli import main; "
                              "sys.exit(main())", "provision", f"root={root}",
                              "wireserver=http://127.0.0.1:9"], capture_output=True, text=True,
                             timeout=120, check=False)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
    assert out.returncode != 0
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-2000:]
    assert "Read-only file system" in out.stdout + out.stderr


def test_a_deprovision_rerun_after_lib_dir_was_emptied_converges(tmp_path: Path) -> None:
    root = provisioned_root(tmp_path / "vm")
    ctx = make_context({"root": str(root), "user": "y", "force": "y"})
    for step in deprovision.deprovision_steps(ctx):
        deprovision.apply_step(ctx, step)  # the whole run, then killed before doit saved
    again = make_context({"root": str(root), "user": "y", "force": "y"})
    deprovision.confirm(again, deprovision.deprovision_steps(again))  # no refusal
    assert deprovision.user(again) == []


def test_the_ovf_env_copy_is_the_last_agent_state_removed(tmp_path: Path) -> None:
    root = provisioned_root(tmp_path / "vm")
    ctx = make_context({"root": str(root), "user": "y", "force": "y"})
    changes = deprovision.agent_state(ctx)
    assert changes and changes[-1].path is not None
    assert changes[-1].path.name == "ovf-env.xml"
