"""`waagent -daemon` runs extension handlers: a Debian root in chroot mode, the fabric on
127.0.0.1; an extension published through the fabric's control channel while the daemon
runs is installed and enabled, and its status reaches the status blob the fabric records."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric import Fabric, default_scenario
from tests.conftest import need_root
from tests.integration.test_daemon import FAST, DaemonHarness
from tests.sandbox import product_uuid_for
from tests.support import debian_root

pytestmark = pytest.mark.root

PACKAGES = (*debian_root.DEFAULT_PACKAGES, "python3", "fdisk", "e2fsprogs", "openssl")


class ChrootDaemonHarness(DaemonHarness):
    """The daemon on a Debian image root, its commands (handlers included) in a chroot."""

    def __init__(self, tmp: Path, fabric: Fabric, conf: str) -> None:
        super().__init__(tmp, fabric, conf)
        self.root = debian_root.fresh_debian_root(tmp / "image", PACKAGES)
        dmi = self.root / "sys/class/dmi/id"
        dmi.mkdir(parents=True, exist_ok=True)
        (dmi / "product_uuid").write_text(product_uuid_for(self.scenario.vm_id))

    def start(self, *extra: str) -> subprocess.Popen[str]:
        return super().start("chroot=y", *extra)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ChrootDaemonHarness]:
    need_root()
    reason = debian_root.skip_reason(PACKAGES)
    if reason:
        pytest.skip(reason)
    with Fabric(default_scenario()) as fabric:
        yield ChrootDaemonHarness(tmp_path, fabric, FAST)


def handler_in_blob(harness: DaemonHarness, name: str) -> dict[str, Any] | None:
    for blob in reversed(harness.fabric.record.status_blobs()):
        status = blob["status"]
        if not isinstance(status, dict):
            continue
        for handler in status["aggregateStatus"]["handlerAggregateStatus"]:
            if handler["handlerName"] == name:
                return handler  # type: ignore[no-any-return]
        return None
    return None


def succeeded(handler: dict[str, Any] | None) -> bool:
    return handler is not None and handler["status"] == "Ready" and handler.get(
        "runtimeSettingsStatus", {}).get("settingsStatus", {}).get("status", {}).get(
        "status") == "success"


def test_an_extension_published_while_the_daemon_runs_reaches_the_status_blob(
        harness: ChrootDaemonHarness) -> None:
    process = harness.start()
    try:
        harness.wait("the scenario's handler in the status blob",
                     lambda: succeeded(handler_in_blob(harness, "Fabric.Demo.NoOp")), timeout=90)
        harness.fabric.set_extension("Fabric.Demo.Added", version="2.0.1",
                                     public_settings={"greeting": "late"})
        harness.wait("the new handler in the status blob",
                     lambda: succeeded(handler_in_blob(harness, "Fabric.Demo.Added")),
                     timeout=60)
        added = handler_in_blob(harness, "Fabric.Demo.Added")
        assert added is not None
        assert added["handlerVersion"] == "2.0.1"
        assert added["runtimeSettingsStatus"]["sequenceNumber"] == 0
        lib = harness.root / "var/lib/waagent"
        assert (lib / "Fabric.Demo.Added-2.0.1/config/HandlerState").read_text() == "Enabled"
        assert harness.fabric.record.status_blob_problems() == []
        # A settings change over FastTrack only (no new incarnation): enable with seq 1.
        harness.fabric.set_extension("Fabric.Demo.Added", public_settings={"greeting": "ft"},
                                     fast_track=True)
        harness.wait("seq 1 in the status blob", lambda: (handler_in_blob(
            harness, "Fabric.Demo.Added") or {}).get("runtimeSettingsStatus", {}).get(
            "sequenceNumber") == 1, timeout=60)
        assert (lib / "Fabric.Demo.Added-2.0.1/config/1.settings").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
