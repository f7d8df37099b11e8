"""Resource disk tasks without root: the data-safety verdict on constructed facts, our table
marks, the commands planned (Runner in plan mode) for MBR/GPT and each filesystem, the task
graph, and the bounded wait for a late disk."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conf.config import default_config
from facts.disks import DeviceContents
from facts.resource_disk import DiskFacts, PartitionFacts, our_table_mark
from graph.context import Context
from graph.uptodate import Inputs, Probe
from system import FileSystem, Root, Runner, UnsafeOperation
from tasks import disk
from tasks.disk import disk_verdict

README = disk.README_NAME
NTFS_SYSTEM = (".", "..", "$MFT", "$MFTMirr", "$LogFile", "$Volume", "$AttrDef", "$Bitmap",
               "$Boot", "$BadClus", "$Secure", "$UpCase", "$Extend")


def one_partition(fstype: str | None, entries: tuple[str, ...] | None = None, *,
                  ours: bool = False) -> DiskFacts:
    return DiskFacts("/dev/sdb", 1024**3, "mbr", ours, None,
                     (PartitionFacts("/dev/sdb1", fstype, entries),))


# ---------------------------------------------------------------- the verdict

def test_blank_disk_is_safe_only_on_evidence() -> None:
    zeros = DeviceContents("/dev/sdb", 5 * 1024**2, ())
    safe, reason = disk_verdict(DiskFacts("/dev/sdb", 1024**3, None, False, None, (), zeros),
                                "ext4")
    assert safe and "blank" in reason
    safe, reason = disk_verdict(DiskFacts("/dev/sdb", 1024**3, None, False, None, ()), "ext4")
    assert not safe and "contents are unknown" in reason


def test_whole_disk_signature_is_refused() -> None:
    safe, reason = disk_verdict(DiskFacts("/dev/sdb", 1024**3, None, False, "LVM2_member", ()),
                                "ext4")
    assert not safe and "LVM2_member" in reason


def test_fresh_ntfs_is_safe_case_insensitive() -> None:
    entries = (*NTFS_SYSTEM, "dataloss_warning_readme.txt", "System Volume Information")
    fresh = one_partition("ntfs", entries)
    fresh = fresh._replace(partitions=(fresh.partitions[0]._replace(
        system_entries=(".", "..", "indexervolumeguid", "WPSettings.dat")),))
    safe, reason = disk_verdict(fresh, "ext4")
    assert safe and "fresh NTFS" in reason


def test_ntfs_with_user_files_is_refused_with_names() -> None:
    safe, reason = disk_verdict(one_partition("ntfs", (*NTFS_SYSTEM, README, "a.doc", "b")),
                                "ext4")
    assert not safe
    assert "holds 2 entries besides DATALOSS_WARNING_README.txt: a.doc, b" in reason


def test_unlisted_filesystem_is_refused() -> None:
    """A failed listing is unknown, never empty."""
    safe, reason = disk_verdict(one_partition("ntfs", None), "ext4")
    assert not safe and "could not be listed" in reason


def test_our_filesystem_is_safe_whatever_it_holds() -> None:
    safe, reason = disk_verdict(one_partition("xfs", ("database",)), "xfs")
    assert safe and "already carries xfs" in reason


def test_other_linux_filesystem_only_with_our_files() -> None:
    ours = ("lost+found", README, "swapfile")
    assert disk_verdict(one_partition("ext4", ours), "xfs")[0]
    safe, reason = disk_verdict(one_partition("ext4", (*ours, "work")), "xfs")
    assert not safe and "ResourceDisk.Filesystem=ext4" in reason and "work" in reason


def test_blank_partition_only_in_our_table() -> None:
    assert disk_verdict(one_partition(None, ours=True), "ext4")[0]
    safe, reason = disk_verdict(one_partition(None, ours=False), "ext4")
    assert not safe and "contents are unknown" in reason


@pytest.mark.parametrize("fstype", ["crypto_LUKS", "LVM2_member", "linux_raid_member", "swap",
                                    "vfat"])
def test_foreign_signatures_are_refused(fstype: str) -> None:
    safe, reason = disk_verdict(one_partition(fstype, ()), "ext4")
    assert not safe and fstype in reason


def test_more_than_one_partition_is_refused() -> None:
    parts = (PartitionFacts("/dev/sdb1", None), PartitionFacts("/dev/sdb2", "ntfs", (README,)))
    safe, reason = disk_verdict(DiskFacts("/dev/sdb", 1024**3, "gpt", True, None, parts), "ext4")
    assert not safe and "2 partitions" in reason


# ---------------------------------------------------------------- tables and commands

def test_mbr_up_to_2_tib_gpt_above() -> None:
    assert "label: dos" in disk.partition_script(2 * 1024**4)
    assert "label-id: 0x57414744" in disk.partition_script(1024**3)
    gpt = disk.partition_script(2 * 1024**4 + 512)
    assert "label: gpt" in gpt and 'name="waagent-resource"' in gpt


@pytest.mark.parametrize("fstype,argv", [
    ("ext4", ["mkfs.ext4", "-q", "-F", "/dev/sdb1"]),
    ("ext3", ["mkfs.ext3", "-q", "-F", "/dev/sdb1"]),
    ("ext2", ["mkfs.ext2", "-q", "-F", "/dev/sdb1"]),
    ("xfs", ["mkfs.xfs", "-q", "-f", "/dev/sdb1"]),
    ("btrfs", ["mkfs.btrfs", "-q", "-f", "/dev/sdb1"]),
])
def test_mkfs_commands(fstype: str, argv: list[str]) -> None:
    assert disk.mkfs_command(fstype, "/dev/sdb1") == argv


def _sfdisk_image(path: Path, size: int, script: str) -> bytes:
    if shutil.which("sfdisk") is None:
        pytest.skip("missing tools: sfdisk")
    with open(path, "wb") as handle:
        handle.truncate(size)
    subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True,
                   capture_output=True)
    with open(path, "rb") as handle:
        return handle.read(16 * 1024)


def test_our_table_marks_read_back_from_sfdisk(tmp_path: Path) -> None:
    mbr = _sfdisk_image(tmp_path / "mbr.img", 64 * 1024**2, disk.partition_script(1024**3))
    assert our_table_mark(mbr, "mbr")
    gpt = _sfdisk_image(tmp_path / "gpt.img", 64 * 1024**2, disk.partition_script(3 * 1024**4))
    assert our_table_mark(gpt, "gpt")
    theirs = _sfdisk_image(tmp_path / "theirs.img", 64 * 1024**2, "label: dos\ntype=7\n")
    assert not our_table_mark(theirs, "mbr")
    theirs_gpt = _sfdisk_image(tmp_path / "tg.img", 64 * 1024**2, "label: gpt\ntype=linux\n")
    assert not our_table_mark(theirs_gpt, "gpt")
    assert not our_table_mark(bytes(16 * 1024), None)


# ---------------------------------------------------------------- plans on image files

def make_context(root: Path, *, plan: bool = True, **options: object) -> Context:
    values: dict[str, object] = {"ResourceDisk__Format": True, "ResourceDisk__EnableSwap": True,
              "ResourceDisk__SwapSizeMB": 64}
    values.update({f"ResourceDisk__{k}": v for k, v in options.items()})
    conf = default_config().replace(**values)  # type: ignore[arg-type]
    runner = Runner(root=Root(root), plan=plan)
    return Context(root=Root(root), conf=conf, run=runner, fs=FileSystem(runner))


def image_vm(tmp_path: Path, size: int, *, partition: int | None = None) -> Path:
    """A root whose resource disk dev/sdb is a sparse image file, described in sys/block.
    With `partition` (bytes), the image holds our MBR table and dev/sdb1 is that blank
    partition as a file of its own."""
    root = tmp_path / "vm"
    (root / "dev/disk/azure").mkdir(parents=True)
    (root / "dev/disk/azure/resource").symlink_to("../../sdb")
    sys_disk = root / "sys/block/sdb"
    sys_disk.mkdir(parents=True)
    (sys_disk / "size").write_text(f"{size // 512}\n")
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text("")
    (root / "proc/swaps").write_text("Filename Type Size Used Priority\n")
    image = root / "dev/sdb"
    with open(image, "wb") as handle:
        handle.truncate(size)
    if partition:
        _sfdisk_image(image, size, disk.partition_script(size))
        (sys_disk / "sdb1").mkdir()
        for name, value in (("partition", 1), ("start", 2048), ("size", partition // 512)):
            (sys_disk / "sdb1" / name).write_text(f"{value}\n")
        with open(root / "dev/sdb1", "wb") as handle:
            handle.truncate(partition)
    return root


def planned(ctx: Context) -> list[str]:
    return [str(change) for change in ctx.run.planned]


@pytest.mark.parametrize("size,label", [(1024**3, "MBR"), (3 * 1024**4, "GPT")])
def test_plan_of_a_blank_disk(tmp_path: Path, size: int, label: str) -> None:
    if shutil.which("blkid") is None:
        pytest.skip("missing tools: blkid")
    root = image_vm(tmp_path, size)
    ctx = make_context(root)
    for action in (disk.ensure_partitioned, disk.ensure_filesystem, disk.ensure_mounted,
                   disk.ensure_readme, disk.ensure_swap):
        action(ctx)
    lines = planned(ctx)
    assert lines[0].startswith("run sfdisk --quiet --wipe always --wipe-partitions always")
    assert f"(one {label} partition on the resource disk: /dev/sdb is blank" in lines[0]
    filesystem = disk.DiskOptions.of(ctx).filesystem
    assert any(line.startswith(f"run mkfs.{filesystem} /dev/sdb partition 1") for line in lines)
    assert any("mount" in line for line in lines)
    with open(root / "dev/sdb", "rb") as handle:
        assert handle.read(1024) == bytes(1024), "plan mode wrote nothing"


@pytest.mark.parametrize("fstype", ["ext4", "ext3", "ext2", "xfs", "btrfs"])
def test_plan_formats_the_empty_partition_of_our_table(tmp_path: Path, fstype: str) -> None:
    if shutil.which("blkid") is None:
        pytest.skip("missing tools: blkid")
    root = image_vm(tmp_path, 64 * 1024**2, partition=63 * 1024**2)
    ctx = make_context(root, Filesystem=fstype)
    disk.ensure_partitioned(ctx)
    assert planned(ctx) == [], "already one partition of ours"
    disk.ensure_filesystem(ctx)
    force = "-F" if fstype.startswith("ext") else "-f"
    assert planned(ctx) == [
        f"run mkfs.{fstype} -q {force} {root}/dev/sdb1  (format the resource disk "
        "(/dev/sdb1 is the still-empty partition of a table this agent wrote))"]


def test_plan_refuses_a_partition_of_unknown_origin(tmp_path: Path) -> None:
    if shutil.which("blkid") is None:
        pytest.skip("missing tools: blkid")
    root = image_vm(tmp_path, 64 * 1024**2, partition=63 * 1024**2)
    with open(root / "dev/sdb", "r+b") as handle:
        handle.seek(440)
        handle.write(b"\x01\x02\x03\x04")  # somebody else's disk id
    ctx = make_context(root)
    with pytest.raises(UnsafeOperation, match="contents are unknown"):
        disk.ensure_filesystem(ctx)
    assert planned(ctx) == []


# ---------------------------------------------------------------- the graph and the disk

def test_tasks_in_order_with_their_own_inputs(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    tasks = {t["name"]: t for t in disk.generate(ctx)}
    assert list(tasks) == ["partition", "mkfs", "mount", "readme", "swapfile"]
    assert tasks["mkfs"]["task_dep"] == ["disk:partition"]
    assert tasks["swapfile"]["task_dep"] == ["disk:readme"]
    assert all(t["doc"] for t in tasks.values())
    inputs = {name: t["uptodate"][0].compute() for name, t in tasks.items()}
    assert all(isinstance(t["uptodate"][0], Inputs) and isinstance(t["uptodate"][1], Probe)
               for t in tasks.values())
    touched_by_swap_size = {name for name, used in inputs.items()
                            if "ResourceDisk.SwapSizeMB" in used}
    assert touched_by_swap_size == {"swapfile"}
    assert {n for n, used in inputs.items() if "ResourceDisk.MountOptions" in used} == {"mount"}
    assert {n for n, used in inputs.items() if "ResourceDisk.Filesystem" in used} == {"mkfs"}


def test_no_sys_in_root_means_no_resource_disk(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, plan=False)
    assert disk.resource_disk(ctx) is None
    for action in (disk.ensure_partitioned, disk.ensure_filesystem, disk.ensure_mounted,
                   disk.ensure_readme):
        action(ctx)
    assert ctx.run.planned == []


def test_vm_without_vmbus_has_no_resource_disk_at_once(tmp_path: Path) -> None:
    (tmp_path / "sys/block").mkdir(parents=True)
    sleeps: list[float] = []
    ctx = make_context(tmp_path)
    assert disk.wait_for_resource_disk(ctx, 30, sleep=sleeps.append) is None
    assert sleeps == []


def test_late_disk_is_waited_for(tmp_path: Path) -> None:
    """The VMBus storage controller is there, the disk's link shows up on the third poll."""
    (tmp_path / "sys/bus/vmbus/devices").mkdir(parents=True)
    (tmp_path / "dev/disk/azure").mkdir(parents=True)
    ctx = make_context(tmp_path)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            (tmp_path / "dev/sdb").write_bytes(b"")
            (tmp_path / "dev/disk/azure/resource").symlink_to("../../sdb")

    assert disk.wait_for_resource_disk(ctx, 60, sleep=sleep) == "/dev/sdb"
    assert len(sleeps) == 3


def test_late_disk_wait_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "sys/bus/vmbus/devices").mkdir(parents=True)
    ctx = make_context(tmp_path)
    assert disk.wait_for_resource_disk(ctx, 0, sleep=lambda s: None) is None


def test_options_swap_only_with_format_and_enable() -> None:
    root = Path("/nonexistent")
    assert disk.DiskOptions.of(make_context(root)).swap_mb == 64
    assert disk.DiskOptions.of(make_context(root, EnableSwap=False)).swap_mb == 0
    assert disk.DiskOptions.of(make_context(root, Format=False)).swap_mb == 0
    assert disk.DiskOptions.of(make_context(root, MountPoint="/mnt/x/")).mount_point == "/mnt/x"


def test_crypt_names_are_per_swap_file() -> None:
    a = disk.crypt_name(Path("/mnt/resource/swapfile"))
    assert a.startswith("waagent-swap-") and a == disk.crypt_name(Path("/mnt/resource/swapfile"))
    assert a != disk.crypt_name(Path("/tmp/vm/mnt/resource/swapfile"))
