"""The README's first command keeps working: the demo provisions a sandbox VM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need_root
from tests.support import debian_root

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.root
# The demo's Debian image root (scripts/demo.py, run_extension): the chroot tests' one.
PACKAGES = (*debian_root.DEFAULT_PACKAGES, "python3", "fdisk", "e2fsprogs", "openssl")


def test_demo_provisions_and_second_boot_changes_nothing(tmp_path: Path) -> None:
    need_root()
    reason = debian_root.skip_reason(PACKAGES)
    if reason:
        pytest.skip(reason)
    out = subprocess.run([sys.executable, str(REPO / "scripts/demo.py"), "--keep",
                          str(tmp_path / "demo")], capture_output=True, text=True, timeout=600,
                         check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "health: NotReady  Provisioning/Provisioning" in text
    assert "health: Ready" in text
    assert (tmp_path / "demo/graph.html").stat().st_size > 1000
    second = text.split("second boot")[1]
    assert "1 ran, 0 failed" in second and "ran gather:goalstate" in second
    daemon = text.split("the daemon: waagent -daemon")[1]
    assert "the fabric publishes incarnation 2" in daemon
    assert "status with incarnation 2 uploaded" in daemon
    assert "Daemon: running (PID" in daemon
    assert "the daemon finished its work and exited with status 0" in daemon
    # The sandbox runs no handler; the Debian image root (chroot=y) does, and the
    # handler's status reaches the fabric.
    assert "ran extensions:skipped" in text.split("second boot")[0]
    extension = text.split("an extension: a Debian image root")[1]
    assert "Fabric.Demo.NoOp-1.0.0: HandlerState Enabled, 0.status" in extension
    assert "the fabric's status blob: Fabric.Demo.NoOp 1.0.0 Ready, extension status " \
        "success" in extension
