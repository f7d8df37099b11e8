"""Helpers to run the agent against a sandbox root and a fabric on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fabric import Fabric, build_media
from fabric.scenario import Scenario
from tests.sandbox import make_sandbox_root

REPO = Path(__file__).resolve().parents[2]
WAAGENT = str(Path(sys.executable).parent / "waagent")

# Provisioning tests leave the resource disk to its own tests.
# waagent's shipped conf makes new host keys; its code default (and ours) does not.
BASE_CONF = ("ResourceDisk.Format=n\nProvisioning.Agent=waagent\n"
             "Provisioning.RegenerateSshHostKeyPair=y\n")


class Harness:
    """A sandbox VM root, its provisioning media and configuration, and a running fabric."""

    def __init__(self, tmp: Path, fabric: Fabric, conf: str = BASE_CONF) -> None:
        self.tmp = tmp
        self.fabric = fabric
        self.scenario: Scenario = fabric.scenario
        self.root = make_sandbox_root(tmp / "vm", self.scenario.vm_id)
        self.media = build_media(self.scenario, tmp / "ovf.iso")
        self.conf = tmp / "waagent.conf"
        self.conf.write_text(conf)
        # Health reports kept for checks made after the fabric stopped.
        self.reports: list[tuple[str, str | None, str | None]] = []

    def run(self, *args: str, command: str = "provision", check: bool = False,
            media: bool = True) -> subprocess.CompletedProcess[str]:
        """`waagent COMMAND` on the root; `media=False`: no provisioning DVD image given."""
        argv = [WAAGENT, command, f"root={self.root}", f"conf={self.conf}",
                f"wireserver={self.fabric.wire_url}",
                *([f"media={self.media}"] if media else []), *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def set_conf(self, text: str) -> None:
        self.conf.write_text(text)

    def last_report(self) -> dict[str, Any]:
        runs = sorted((self.root / "var/lib/waagent/runs").glob("*.json"))
        data: dict[str, Any] = json.loads(runs[-1].read_text())
        return data

    def ran(self) -> set[str]:
        """Tasks that executed in the last run (doit's own record, via the run report)."""
        return {name for name, entry in self.last_report()["tasks"].items()
                if entry.get("result") in ("changed", "no-change", "failed")}

    def health(self) -> list[tuple[str, str | None, str | None]]:
        return [(h["state"], h.get("substatus"), h.get("description"))
                for h in self.fabric.record.health_reports()]
