"""Provisioning an offline image root in chroot mode (image builders): the real Debian
root's own useradd, chpasswd, visudo, ssh-keygen and sshd run inside it; custom data
runs inside it; nothing of the host changes."""

from __future__ import annotations

import hashlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric import Fabric, build_media, default_scenario
from tests.integration.provisioning import BASE_CONF, WAAGENT
from tests.sandbox import product_uuid_for
from tests.support.debian_root import debian_root  # noqa: F401 - pytest fixture

pytestmark = pytest.mark.root

HOST_FILES = ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/hostname", "/etc/hosts")


def host_state() -> dict[str, str]:
    found = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in HOST_FILES
             if Path(p).exists()}
    found["hostname"] = socket.gethostname()
    return found


@pytest.fixture
def image(debian_root: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:  # noqa: F811
    scenario = default_scenario()
    dmi = debian_root / "sys/class/dmi/id"
    dmi.mkdir(parents=True, exist_ok=True)
    (dmi / "product_uuid").write_text(product_uuid_for(scenario.vm_id))
    media = build_media(scenario, tmp_path / "ovf.iso")
    yield debian_root, media


def provision(root: Path, media: Path, fabric: Fabric, conf: str) -> subprocess.CompletedProcess[str]:
    (root / "etc/waagent.conf").write_text(conf)
    return subprocess.run([WAAGENT, "provision", f"root={root}", "chroot=y",
                           f"wireserver={fabric.wire_url}", f"media={media}"],
                          capture_output=True, text=True, timeout=300, check=False)


def test_image_root_provisions_in_chroot_and_host_is_untouched(image: tuple[Path, Path]) -> None:
    root, media = image
    before = host_state()
    with Fabric(default_scenario()) as fabric:
        out = provision(root, media, fabric, BASE_CONF +
                        "Provisioning.ExecuteCustomData=y\nProvisioning.DecodeCustomData=y\n")
        assert out.returncode == 0, out.stdout + out.stderr
        assert fabric.record.health_reports()[-1]["state"] == "Ready"
    assert "azureuser:" in (root / "etc/passwd").read_text()
    assert f"chroot {root} useradd" in out.stdout + out.stderr or \
        (root / "home/azureuser").is_dir()
    assert (root / "home/azureuser/.ssh/authorized_keys").exists()
    assert (root / "etc/ssh/sshd_config.d/00-waagent.conf").exists()
    assert host_state() == before, "the host's accounts and hostname are unchanged"


def test_failing_custom_data_fails_provisioning_with_its_status(
        image: tuple[Path, Path]) -> None:
    root, media = image
    scenario = default_scenario()
    # `set -x` prints what the script does, secrets included: never in the log at INFO
    # nor in the report to the platform, only at DEBUG.
    scenario.custom_data = ("#!/bin/sh\nset -x\nTOKEN=s3cr3t-t0ken-value\n"
                            "echo 'custom data broke' >&2\nexit 3\n")
    with Fabric(scenario) as fabric:
        out = provision(root, build_media(scenario, media.with_name("bad.iso")), fabric,
                        BASE_CONF +
                        "Provisioning.ExecuteCustomData=y\nProvisioning.DecodeCustomData=y\n")
        assert out.returncode != 0
        last = fabric.record.health_reports()[-1]
    assert (last["state"], last.get("substatus")) == ("NotReady", "ProvisioningFailed")
    assert "customdata:run" in last["description"]
    assert "exited with status 3" in last["description"]
    assert "s3cr3t-t0ken-value" not in last["description"]
    assert "s3cr3t-t0ken-value" not in out.stdout + out.stderr
    assert "s3cr3t-t0ken-value" not in (root / "var/log/waagent.log").read_text()
    assert "custom data script exited with status 3" in out.stderr
    # Everything before it stays done: the user exists and can log in with keys.
    assert (root / "home/azureuser/.ssh/authorized_keys").exists()


def test_image_without_dmi_is_provisioned_as_an_image(debian_root: Path,  # noqa: F811
                                                      tmp_path: Path) -> None:
    """An image root has no DMI: its per-VM work is keyed as the image's, so the VM it
    becomes (with a real id) provisions again at first boot."""
    scenario = default_scenario()
    media = build_media(scenario, tmp_path / "ovf.iso")
    with Fabric(scenario) as fabric:
        out = provision(debian_root, media, fabric,
                        BASE_CONF)
    assert out.returncode == 0, out.stdout + out.stderr
    marker = debian_root / "var/lib/waagent/provisioned"
    assert marker.read_text().strip() == "offline-image"
    assert (debian_root / "home/azureuser/.ssh/authorized_keys").exists()
