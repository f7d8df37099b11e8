"""The resource disk tasks on real loop devices (root): fresh disks end up partitioned,
formatted, mounted, with the README and swap; disks holding data are never formatted;
re-runs and config edits rerun exactly what they touch; SIGKILL and lost state converge."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need_root, need_tools
from tests.integration.diskutil import (
    VM,
    add_ntfs_files,
    forget_partitions,
    loop_device,
    make_fresh_ntfs,
    make_fresh_ntfs_over_2_tib,
    make_user_filesystem,
    read_user_file,
    sh,
    vm_root,
    zero,
)

pytestmark = pytest.mark.root

TASKS = ("disk:partition", "disk:mkfs", "disk:mount", "disk:readme", "disk:swapfile")
BASE_TOOLS = ("losetup", "sfdisk", "partx", "blkid", "mount", "umount", "findmnt", "mkswap",
              "swapon", "swapoff", "fallocate", "mkfs.ext4")


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VM]:
    """A VM root whose resource disk is a fresh 1 GiB loop device; all undone afterwards."""
    need_root()
    need_tools(*BASE_TOOLS)
    with loop_device(tmp_path) as device, vm_root(tmp_path, device) as machine:
        yield machine


def results(vm: VM) -> dict[str, object]:
    return {name: vm.last_report()[name]["result"] for name in TASKS}


def assert_converged(vm: VM, fstype: str = "ext4", swap_mb: int = 0,
                     mount_point: str = "/mnt/resource") -> None:
    assert vm.fstype() == fstype
    assert vm.mounted_source(mount_point) == os.stat(vm.partition).st_rdev
    target = vm.mount_target(mount_point)
    assert (target / "DATALOSS_WARNING_README.txt").read_text().startswith("WARNING")
    swapfile = str(target / "swapfile")
    if swap_mb:
        assert vm.swaps() == {swapfile: swap_mb * 1024 - 4}
        assert oct((target / "swapfile").stat().st_mode & 0o777) == "0o600"
    else:
        assert vm.swaps() == {}


@pytest.mark.parametrize("fstype", ["ext4", "ext3", "ext2", "xfs", "btrfs"])
def test_blank_disk_ends_up_formatted_mounted_with_readme_and_swap(vm: VM, fstype: str) -> None:
    need_tools(f"mkfs.{fstype}", *(["chattr"] if fstype == "btrfs" else []))
    vm.configure(Filesystem=fstype, MountOptions="noatime,nodev", EnableSwap="y",
                 SwapSizeMB="64")
    out = vm.agent()
    assert out.returncode == 0, out.stdout + out.stderr
    assert sh("blkid", "-p", "-s", "PTTYPE", "-o", "value", vm.device).stdout.strip() == "dos"
    assert_converged(vm, fstype, swap_mb=64)
    assert {"noatime", "nodev"} <= set(vm.mount_options())
    assert set(results(vm).values()) == {"changed"}


def test_fresh_ntfs_disk_is_reformatted(vm: VM) -> None:
    need_tools("mkntfs", "ntfscp", "ntfsls")
    make_fresh_ntfs(vm)
    vm.configure(EnableSwap="y", SwapSizeMB="32")
    out = vm.agent()
    assert out.returncode == 0, out.stdout + out.stderr
    assert_converged(vm, swap_mb=32)
    assert "fresh NTFS disk" in out.stderr
    table = sh("sfdisk", "--dump", vm.device).stdout
    assert "type=83" in table and "label-id: 0x57414744" in table


def test_second_run_changes_nothing(vm: VM) -> None:
    vm.configure(EnableSwap="y", SwapSizeMB="32")
    assert vm.agent().returncode == 0
    uuid = vm.uuid()
    out = vm.agent("run", "disk", "verbose=1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(results(vm).values()) == {"up-to-date"}
    assert "0 ran, 0 failed, 5 up to date" in out.stdout
    assert vm.uuid() == uuid
    assert_converged(vm, swap_mb=32)


def test_swap_size_change_reruns_only_the_swap_task(vm: VM) -> None:
    vm.configure(EnableSwap="y", SwapSizeMB="32")
    assert vm.agent().returncode == 0
    uuid = vm.uuid()
    vm.configure(EnableSwap="y", SwapSizeMB="48")
    out = vm.agent()
    assert out.returncode == 0, out.stdout + out.stderr
    assert results(vm) == {"disk:partition": "up-to-date", "disk:mkfs": "up-to-date",
                           "disk:mount": "up-to-date", "disk:readme": "up-to-date",
                           "disk:swapfile": "changed"}
    reason = str(vm.last_report()["disk:swapfile"]["reason"])
    assert "SwapSizeMB: 32 -> 48" in reason
    assert vm.uuid() == uuid
    assert_converged(vm, swap_mb=48)


def test_swap_off_removes_only_our_swap(vm: VM) -> None:
    vm.configure(EnableSwap="y", SwapSizeMB="32")
    assert vm.agent().returncode == 0
    # Someone else's swap file in the same VM must stay on.
    theirs = vm.root / "theirs.swap"
    sh("fallocate", "-l", "16M", str(theirs))
    theirs.chmod(0o600)
    sh("mkswap", str(theirs))
    sh("swapon", str(theirs))
    vm.configure(EnableSwap="n", SwapSizeMB="32")
    out = vm.agent()
    assert out.returncode == 0, out.stdout + out.stderr
    assert vm.swaps() == {str(theirs): 16 * 1024 - 4}
    assert not (vm.mount_target() / "swapfile").exists()
    assert results(vm)["disk:swapfile"] == "changed"
    assert results(vm)["disk:mkfs"] == "up-to-date"


def test_mount_options_and_mount_point_change_remount_without_reformat(vm: VM) -> None:
    vm.configure(EnableSwap="y", SwapSizeMB="32")
    assert vm.agent().returncode == 0
    uuid = vm.uuid()
    (vm.mount_target() / "scratch.txt").write_text("kept\n")
    vm.configure(EnableSwap="y", SwapSizeMB="32", MountOptions="noexec")
    out = vm.agent()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "noexec" in vm.mount_options()
    assert results(vm)["disk:mount"] == "changed" and results(vm)["disk:mkfs"] == "up-to-date"
    vm.configure(EnableSwap="y", SwapSizeMB="32", MountPoint="/mnt/scratch")
    out = vm.agent()
    assert out.returncode == 0, out.stdout + out.stderr
    assert results(vm)["disk:mkfs"] == "up-to-date"
    assert vm.mounted_source("/mnt/resource") is None
    assert (vm.mount_target("/mnt/scratch") / "scratch.txt").read_text() == "kept\n"
    assert vm.uuid() == uuid
    assert_converged(vm, swap_mb=32, mount_point="/mnt/scratch")


@pytest.mark.parametrize("fstype", ["xfs", "ext4"])
def test_user_filesystem_is_never_formatted(vm: VM, fstype: str) -> None:
    """A different filesystem holding a user file is refused; the configured one is mounted."""
    need_tools(f"mkfs.{fstype}")
    uuid = make_user_filesystem(vm, fstype)
    vm.configure(Filesystem="ext4")
    out = vm.agent()
    if fstype == "ext4":
        assert out.returncode == 0, out.stdout + out.stderr
        assert (vm.mount_target() / "important.db").read_text() == "user data\n"
    else:
        assert out.returncode != 0
        assert "refusing to partition or format the resource disk" in out.stdout
        assert "important.db" in out.stdout
        assert vm.last_report()["disk:partition"]["result"] == "failed"
        assert vm.mounted_source() is None
        assert read_user_file(vm) == "user data\n"
    assert vm.uuid() == uuid and vm.fstype() == fstype


def test_ntfs_with_user_files_is_refused(vm: VM) -> None:
    need_tools("mkntfs", "ntfscp", "ntfsls")
    make_fresh_ntfs(vm, {"photos.zip": b"PK\x03\x04 not yours"})
    uuid = vm.uuid()
    vm.configure()
    out = vm.agent()
    assert out.returncode != 0
    assert "holds 1 entries besides DATALOSS_WARNING_README.txt: photos.zip" in out.stdout
    assert vm.uuid() == uuid and vm.fstype() == "ntfs"


def test_zeroed_mbr_over_a_filesystem_is_not_blank(vm: VM) -> None:
    """Issue 15 §4: the table is gone, the file system at 1 MiB is not: never wiped."""
    uuid = make_user_filesystem(vm, "ext4")
    zero(vm.device, 0, 512)
    forget_partitions(vm)
    assert sh("blkid", "-p", vm.device, check=False).returncode == 2, "blkid sees nothing"
    vm.configure()
    out = vm.agent()
    assert out.returncode != 0
    assert f"refusing to partition or format the resource disk: /dev/{vm.name} has no " \
        "partition table" in out.stdout
    assert "ext4 at offset 1048576 (1 MiB)" in out.stdout and "ResourceDisk.Format=n" in out.stdout
    assert vm.last_report()["disk:partition"]["result"] == "failed"
    found = sh("blkid", "-p", "-O", "1048576", "-s", "UUID", "-o", "value", vm.device)
    assert found.stdout.strip() == uuid, "the file system is still there"


def test_zeroed_start_of_a_gpt_disk_is_not_blank(vm: VM) -> None:
    """The first 4 MiB zeroed (protective MBR, GPT header, the file system's start): the
    backup GPT header at the end still says the disk was partitioned."""
    make_user_filesystem(vm, "ext4", table="gpt")
    zero(vm.device, 0, 4 * 1024**2)
    forget_partitions(vm)
    vm.configure()
    out = vm.agent()
    assert out.returncode != 0
    assert "a backup GPT header at offset" in out.stdout
    assert sh("sfdisk", "--dump", vm.device, check=False).returncode != 0, "no table written"


def test_ntfs_with_files_in_system_volume_information_is_refused(vm: VM) -> None:
    need_tools("mkntfs", "ntfscp", "ntfsls", "ntfs-3g")
    make_fresh_ntfs(vm)
    add_ntfs_files(vm, {"System Volume Information/IndexerVolumeGuid": b"{guid}",
                        "System Volume Information/backup.vhdx": b"a user's backup"})
    uuid = vm.uuid()
    vm.configure()
    out = vm.agent()
    assert out.returncode != 0
    assert "System Volume Information/backup.vhdx" in out.stdout
    assert vm.uuid() == uuid and vm.fstype() == "ntfs"


def test_ntfs_with_the_platforms_system_volume_information_is_reformatted(vm: VM) -> None:
    need_tools("mkntfs", "ntfscp", "ntfsls", "ntfs-3g")
    make_fresh_ntfs(vm)
    add_ntfs_files(vm, {"System Volume Information/IndexerVolumeGuid": b"{guid}",
                        "System Volume Information/WPSettings.dat": b"\0" * 12})
    vm.configure()
    out = vm.agent()
    assert out.returncode == 0, out.stdout + out.stderr
    assert_converged(vm)


def test_fresh_ntfs_over_2_tib_with_the_reserved_partition_is_reformatted(
        tmp_path: Path) -> None:
    need_root()
    need_tools(*BASE_TOOLS, "mkntfs", "ntfscp", "ntfsls")
    with loop_device(tmp_path, 3 * 1024**4) as device, vm_root(tmp_path, device) as vm:
        make_fresh_ntfs_over_2_tib(vm)
        vm.configure()
        out = vm.agent()
        assert out.returncode == 0, out.stdout + out.stderr
        assert "fresh NTFS disk" in out.stderr
        dump = sh("sfdisk", "--dump", device).stdout
        assert "label: gpt" in dump and 'name="waagent-resource"' in dump
        assert not Path(f"{device}p2").exists()
        assert_converged(vm)


def test_new_filesystem_refused_when_files_allowed_when_empty(vm: VM) -> None:
    need_tools("mkfs.xfs")
    vm.configure(EnableSwap="y", SwapSizeMB="32")
    assert vm.agent().returncode == 0
    (vm.mount_target() / "work.txt").write_text("mine\n")
    uuid = vm.uuid()
    vm.configure(EnableSwap="y", SwapSizeMB="32", Filesystem="xfs")
    out = vm.agent()
    assert out.returncode != 0
    assert "work.txt" in out.stdout and "ResourceDisk.Filesystem=ext4" in out.stdout
    assert vm.uuid() == uuid and (vm.mount_target() / "work.txt").read_text() == "mine\n"
    assert_converged(vm, swap_mb=32)
    # Only the agent's own files left: the new filesystem is made.
    (vm.mount_target() / "work.txt").unlink()
    out = vm.agent()
    assert out.returncode == 0, out.stdout + out.stderr
    assert_converged(vm, "xfs", swap_mb=32)


def test_disk_over_2_tib_gets_gpt(tmp_path: Path) -> None:
    need_root()
    need_tools(*BASE_TOOLS)
    with loop_device(tmp_path, 3 * 1024**4) as device, vm_root(tmp_path, device) as vm:
        vm.configure()
        out = vm.agent("run", "disk:partition")
        assert out.returncode == 0, out.stdout + out.stderr
        dump = sh("sfdisk", "--dump", device).stdout
        assert "label: gpt" in dump and 'name="waagent-resource"' in dump
        # The still-empty partition is recognised as ours by its name.
        out = vm.agent("run", "disk:mkfs")
        assert out.returncode == 0, out.stdout + out.stderr
        assert vm.fstype() == "ext4"


def test_encrypted_swap_or_fail_closed(vm: VM) -> None:
    """dm-crypt swap with a random key where the kernel and cryptsetup allow it; otherwise
    no swap at all and a clear failure (never the swap in clear)."""
    vm.configure(EnableSwap="y", SwapSizeMB="32", EnableSwapEncryption="y")
    out = vm.agent()
    dm_ready = "device-mapper" in Path("/proc/devices").read_text() and shutil.which("cryptsetup")
    if not dm_ready:
        assert out.returncode != 0
        assert "swap not enabled: ResourceDisk.EnableSwapEncryption=y but" in out.stdout
        assert vm.swaps() == {}
        return
    assert out.returncode == 0, out.stdout + out.stderr
    swaps = vm.swaps()
    assert list(swaps.values()) == [32 * 1024 - 4]
    assert "/dev/mapper/waagent-swap-" in next(iter(swaps))
    assert vm.agent().returncode == 0 and set(results(vm).values()) == {"up-to-date"}
    vm.configure(EnableSwap="n", EnableSwapEncryption="y")
    out = vm.agent()
    assert out.returncode == 0, out.stdout + out.stderr
    assert vm.swaps() == {}
    assert not list((vm.root / "dev/mapper").iterdir())


@pytest.mark.parametrize("last", TASKS[:-1])
def test_state_lost_after_any_task_converges(vm: VM, last: str) -> None:
    """A run that stops after `last` and loses doit's state (what SIGKILL does) converges."""
    vm.configure(EnableSwap="y", SwapSizeMB="32")
    out = vm.agent("run", last)
    assert out.returncode == 0, out.stdout + out.stderr
    uuid = vm.uuid() if last != "disk:partition" else None
    (vm.root / "var/lib/waagent/graph-state.sqlite3").unlink()
    out = vm.agent()
    assert out.returncode == 0, out.stdout + out.stderr
    assert_converged(vm, swap_mb=32)
    if uuid:
        assert vm.uuid() == uuid, "no reformat after the filesystem was made"


def test_sigkill_during_the_run_converges(vm: VM) -> None:
    vm.configure(EnableSwap="y", SwapSizeMB="256")
    proc = vm.agent_process()
    try:
        for _ in range(2000):
            if vm.mounted_source() is not None or proc.poll() is not None:
                break
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    out = vm.agent()
    assert out.returncode == 0, out.stdout + out.stderr
    uuid = vm.uuid()
    assert_converged(vm, swap_mb=256)
    assert vm.agent().returncode == 0 and set(results(vm).values()) == {"up-to-date"}
    assert vm.uuid() == uuid


def test_no_resource_disk_succeeds(tmp_path: Path) -> None:
    need_root()
    need_tools(*BASE_TOOLS)
    with loop_device(tmp_path) as device, vm_root(tmp_path, device) as vm:
        (vm.root / "dev/disk/azure/resource").unlink()
        vm.configure(EnableSwap="y", SwapSizeMB="32")
        out = vm.agent()
        assert out.returncode == 0, out.stdout + out.stderr
        assert "no resource disk" in out.stderr
        assert sh("blkid", "-p", device, check=False).returncode == 2, "device untouched"


def test_cleanup_even_when_the_test_fails(tmp_path: Path) -> None:
    need_root()
    need_tools(*BASE_TOOLS)
    with pytest.raises(RuntimeError), loop_device(tmp_path) as device:
        with vm_root(tmp_path, device) as vm:
            vm.configure(EnableSwap="y", SwapSizeMB="32")
            assert vm.agent().returncode == 0
            root = vm.root
            assert vm.swaps()
            raise RuntimeError("test failed half way")
    assert str(root) not in Path("/proc/self/mountinfo").read_text()
    assert str(root) not in Path("/proc/swaps").read_text()
    assert device not in sh("losetup", "-a").stdout
    shutil.rmtree(root)
