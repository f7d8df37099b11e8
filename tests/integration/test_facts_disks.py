"""Disk facts against real tools: loop devices made from sparse files, real mkfs/mkswap
signatures read back by our superblock reader and by blkid through the Runner."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from facts import disks, media
from system.root import Root
from system.runner import Runner
from tests.conftest import need_root, need_tools

pytestmark = pytest.mark.root


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A 64 MiB loop device over a sparse file in tmp_path, always detached afterwards."""
    need_root()
    need_tools("losetup")
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    result = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {result.stderr.strip()}")
    device = result.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def _sandbox_with_node(tmp_path: Path, device: str, name: str) -> Root:
    """A root whose /dev/<name> is a block node for our loop device (never the host's disks)."""
    base = tmp_path / "vm"
    (base / "dev").mkdir(parents=True)
    rdev = os.stat(device).st_rdev
    os.mknod(base / "dev" / name, stat.S_IFBLK | 0o600, rdev)
    return Root(base)


def test_ext4_signature_matches_blkid(loop_device: str, tmp_path: Path) -> None:
    need_tools("mkfs.ext4", "blkid")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "resource", loop_device], check=True)
    root = _sandbox_with_node(tmp_path, loop_device, "sdb")
    ours = disks.filesystem_signature(root, "/dev/sdb")
    theirs = disks.blkid(Runner(root=root), "/dev/sdb")
    assert ours is not None
    assert (ours.type, ours.label, ours.uuid) == ("ext4", "resource", theirs["UUID"])
    assert theirs["TYPE"] == "ext4" and theirs["LABEL"] == "resource"
    assert disks.partition_table_type(disks.read_device_head(root, "/dev/sdb", 4608)) is None


def test_swap_signature_matches_blkid(loop_device: str, tmp_path: Path) -> None:
    need_tools("mkswap", "blkid")
    subprocess.run(["mkswap", "-L", "swp", loop_device], check=True, capture_output=True)
    root = _sandbox_with_node(tmp_path, loop_device, "sdc")
    ours = disks.filesystem_signature(root, "/dev/sdc")
    theirs = disks.blkid(Runner(root=root), "/dev/sdc")
    assert ours is not None and ours.type == "swap" == theirs["TYPE"]
    assert ours.uuid == theirs["UUID"] and ours.label == "swp"


def test_blank_device_is_empty_not_unknown(loop_device: str, tmp_path: Path) -> None:
    need_tools("blkid")
    root = _sandbox_with_node(tmp_path, loop_device, "sdd")
    assert disks.blkid(Runner(root=root), "/dev/sdd") == {}
    assert disks.filesystem_signature(root, "/dev/sdd") is None


def test_resource_disk_link_to_a_real_node(loop_device: str, tmp_path: Path) -> None:
    root = _sandbox_with_node(tmp_path, loop_device, "sdb")
    (root / "sys/bus").mkdir(parents=True)
    link = root / "dev/disk/azure/resource"
    link.parent.mkdir(parents=True)
    link.symlink_to("../../sdb")
    assert disks.resource_disk_device(root) == "/dev/sdb"


def test_dvd_on_a_loop_device_read_without_mounting(loop_device: str, tmp_path: Path) -> None:
    from tests.unit.test_facts_media import OVF, build_image

    if not OVF.exists():
        pytest.skip("shared fixtures not found")
    with open(loop_device, "r+b") as handle:
        handle.write(build_image({"ovf-env.xml": OVF.read_bytes()}, "pureudf"))
    root = _sandbox_with_node(tmp_path, loop_device, "sr0")
    assert media.dvd_devices(root) == ("/dev/sr0",)
    assert media.read_media_file(root / "dev/sr0") == OVF.read_bytes()
    need_tools("blkid")
    assert disks.blkid(Runner(root=root), "/dev/sr0")["TYPE"] == "udf"
