"""SCVMM in a real Debian image root with chroot=y: a fabric-built DVD carrying
linuxosconfiguration.xml and an install script that records its arguments; `waagent
provision` runs the script inside the image and no Azure provisioning happens (no
wireserver= is given: nothing may ask the platform)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fabric import build_media, default_scenario
from tests.integration.provisioning import WAAGENT
from tests.support.debian_root import debian_root  # noqa: F401 - pytest fixture

pytestmark = pytest.mark.root

# Runs inside the image (chroot): it records where it runs and what it was given.
INSTALL = """#!/bin/bash
printf '%s\\n' "$@" > /var/log/scvmm-install.args
ls "$2" > /var/log/scvmm-install.dir
"""


def test_vmm_dvd_runs_its_installer_in_the_image_and_azure_stands_aside(
        debian_root: Path, tmp_path: Path) -> None:  # noqa: F811
    root = debian_root
    scenario = default_scenario()
    scenario.dvd_files = {"linuxosconfiguration.xml": "<LinuxOSConfiguration/>\n",
                          "install": INSTALL}
    media = build_media(scenario, tmp_path / "vmm.iso", "udf")
    (root / "etc/waagent.conf").write_text("DetectScvmmEnv=y\nResourceDisk.Format=n\n")
    out = subprocess.run([WAAGENT, "provision", f"root={root}", "chroot=y", f"media={media}"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (root / "var/log/scvmm-install.args").read_text().splitlines() == [
        "-p", "/var/lib/waagent/scvmm"]
    assert (root / "var/log/scvmm-install.dir").read_text().split() == [
        "install", "linuxosconfiguration.xml"]
    lib = root / "var/lib/waagent"
    # No Azure provisioning: no OVF read, no user, no Ready marker, no goal state.
    for absent in ("ovf-env.xml", "provisioned", "facts/goalstate.json"):
        assert not (lib / absent).exists(), absent
    assert "azureuser" not in (root / "etc/passwd").read_text()
    assert "gather:" not in out.stdout + out.stderr
