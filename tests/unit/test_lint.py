"""ruff and mypy over the whole tree (strict on conf/, system/, facts/, wire/, graph/, tasks/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PACKAGES = ["conf", "system", "facts", "wire", "graph", "tasks", "fabric", "dodo.py"]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)


def test_ruff() -> None:
    out = _run([str(BIN / "ruff"), "check", "."])
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy() -> None:
    present = [p for p in PACKAGES if (REPO / p).exists()]
    out = _run([str(BIN / "mypy"), *present])
    assert out.returncode == 0, out.stdout + out.stderr


def test_subprocess_is_banned_outside_system(tmp_path: Path) -> None:
    """The lint rule that keeps commands in system/ really fires (DESIGN rule 1)."""
    probe = REPO / "tasks" / "_lint_probe_tmp.py"
    probe.write_text("import subprocess\n\nsubprocess.run(['true'], check=True)\n")
    try:
        out = _run([str(BIN / "ruff"), "check", str(probe)])
    finally:
        probe.unlink()
    assert out.returncode != 0 and "TID251" in out.stdout, out.stdout
    if "system" not in out.stdout:
        pytest.fail("the message should point to system.runner")
