"""When is the resource disk blank? Only on positive evidence (issue 15 §4), tested without
root on sparse image files built here: a damaged (zeroed) partition table over a file
system is not blank; a device that cannot be read is unknown, never empty; the platform's
NTFS disk is judged by its files and those of `System Volume Information`, also in the
two-partition GPT layout of disks over 2 TiB; and a plan never mounts anything."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from facts import disks
from graph.context import Context
from system import Runner, UnsafeOperation
from system.errors import ProbeFailed
from system.runner import Result
from tasks import disk
from tests.unit.test_disk_tasks import image_vm, make_context, planned

MIB = 1024**2
MSR_TYPE = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
BASIC_DATA_TYPE = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip("missing tools: " + ", ".join(missing))


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def ext4_superblock() -> bytes:
    """The first 2 KiB of an ext4 file system: its superblock magic at 1024 + 0x38."""
    block = bytearray(2048)
    struct.pack_into("<H", block, 1024 + 0x38, 0xEF53)
    struct.pack_into("<III", block, 1024 + 0x5C, 0x0004, 0x0040, 0)  # journal, extents
    return bytes(block)


# What users and other tools leave on a disk, at offsets a partition usually starts at.
SIGNATURES: dict[str, tuple[int, bytes, str]] = {
    "ext4 at 1 MiB": (MIB, ext4_superblock(), "ext4"),
    "xfs at sector 63": (63 * 512, b"XFSB" + bytes(124), "xfs"),
    "ntfs at 1 MiB": (MIB, b"\xebR\x90NTFS    " + bytes(499) + b"\x55\xaa", "ntfs"),
    "luks at 1 MiB": (MIB, b"LUKS\xba\xbe\x00\x02", "crypto_LUKS"),
    "lvm at 1 MiB": (MIB + 512, b"LABELONE" + bytes(16) + b"LVM2 001", "LVM2_member"),
    "md 1.2 at 1 MiB": (MIB + 4096, struct.pack("<I", 0xA92B4EFC), "linux_raid_member"),
    "btrfs at 1 MiB": (MIB + 65536 + 0x40, b"_BHRfS_M", "btrfs"),
    "gpt header at 4096": (4096, b"EFI PART", "GPT"),
    "data at 3 MiB": (3 * MIB + 17, b"\x01", "non-zero bytes at offset 3145745"),
}


@pytest.mark.parametrize("case", sorted(SIGNATURES))
def test_zeroed_table_over_data_is_not_blank(tmp_path: Path, case: str) -> None:
    """No MBR at offset 0, but something further in: refused, naming device and finding."""
    need("blkid")
    offset, data, named = SIGNATURES[case]
    root = image_vm(tmp_path, 64 * MIB)
    write_at(root / "dev/sdb", offset, data)
    ctx = make_context(root)
    with pytest.raises(UnsafeOperation) as refused:
        disk.ensure_partitioned(ctx)
    message = str(refused.value)
    assert "/dev/sdb" in message and named in message
    assert "ResourceDisk.Format=n" in message, "says what the operator can do"
    assert planned(ctx) == []


@pytest.mark.parametrize("where", ["backup gpt", "md 0.90", "md 1.0"])
def test_signatures_at_the_end_of_the_disk_are_not_blank(tmp_path: Path, where: str) -> None:
    need("blkid")
    size = 64 * MIB
    offset, data = {
        "backup gpt": (size - 512, b"EFI PART"),
        "md 0.90": ((size & ~0xFFFF) - 65536, struct.pack("<I", 0xA92B4EFC)),
        "md 1.0": ((size - 8192) & ~0xFFF, struct.pack("<I", 0xA92B4EFC)),
    }[where]
    root = image_vm(tmp_path, size)
    write_at(root / "dev/sdb", offset, data)
    with pytest.raises(UnsafeOperation, match="/dev/sdb"):
        disk.ensure_partitioned(make_context(root))


def test_all_zero_disk_is_blank(tmp_path: Path) -> None:
    need("blkid")
    root = image_vm(tmp_path, 64 * MIB)
    ctx = make_context(root)
    disk.ensure_partitioned(ctx)
    assert planned(ctx)[0].startswith("run sfdisk")
    assert "is blank" in planned(ctx)[0] or "one MBR partition" in planned(ctx)[0]


def test_device_contents_reads_head_and_tail(tmp_path: Path) -> None:
    """The fact itself: how much was read, and every finding with its offset."""
    root = image_vm(tmp_path, 64 * MIB)
    contents = disks.device_contents(root_of(root), "/dev/sdb", 64 * MIB)
    assert contents.found == () and contents.checked_bytes == 5 * MIB
    write_at(root / "dev/sdb", MIB, ext4_superblock())
    contents = disks.device_contents(root_of(root), "/dev/sdb", 64 * MIB)
    assert any("ext4" in found and "1 MiB" in found for found in contents.found)


def root_of(path: Path) -> Any:
    from system.root import Root

    return Root(path)


# ---------------------------------------------------------------- unknown is not empty

def test_blkid_of_an_unreadable_device_is_unknown(tmp_path: Path) -> None:
    """blkid exits 2 for a missing node or a directory, as for an empty device."""
    need("blkid")
    (tmp_path / "dev/sdx").mkdir(parents=True)
    runner = Runner(root=root_of(tmp_path))
    with pytest.raises(ProbeFailed, match="/dev/sdx"):
        disks.blkid(runner, "/dev/sdx")
    with pytest.raises(ProbeFailed, match="/dev/sdy"):
        disks.blkid(runner, "/dev/sdy")


def test_missing_partition_node_is_unknown_not_empty(tmp_path: Path) -> None:
    """Partition 1 of our own table whose node cannot be read: never formatted as empty."""
    need("blkid", "sfdisk")
    root = image_vm(tmp_path, 64 * MIB, partition=63 * MIB)
    (root / "dev/sdb1").unlink()
    ctx = make_context(root)
    with pytest.raises(ProbeFailed, match="/dev/sdb1"):
        disk.ensure_filesystem(ctx)
    assert planned(ctx) == []


# ---------------------------------------------------------------- the platform's NTFS disk

class FakeNtfsls:
    """Answers `ntfsls` with captured listings (by path), passing other probes through."""

    def __init__(self, runner: Runner, listings: dict[str, str | None]) -> None:
        self.runner = runner
        self.listings = listings
        self.real = runner.probe
        self.asked: list[str] = []

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> Result:
        if argv[0] != "ntfsls":
            return self.real(argv, **kwargs)
        path = argv[argv.index("-p") + 1] if "-p" in argv else "/"
        self.asked.append(path)
        listing = self.listings.get(path)
        if listing is None:
            return Result(tuple(argv), 3, "", f"Failed to find path '{path}'")
        return Result(tuple(argv), 0, listing, "")


NTFS_ROOT = ".\n..\n$AttrDef\n$BadClus\n$Bitmap\n$Boot\n$Extend\n$LogFile\n$MFT\n$MFTMirr\n" \
            "$Secure\n$UpCase\n$Volume\nDATALOSS_WARNING_README.txt\nSystem Volume Information\n"


def ntfs_vm(tmp_path: Path, size: int = 64 * MIB, *, two_partitions: bool = False) -> Path:
    """A root whose disk holds the platform's layout: MBR with one NTFS partition, or (disks
    over 2 TiB) GPT with the reserved partition 1 and NTFS partition 2."""
    need("blkid", "sfdisk", "mkntfs")
    root = image_vm(tmp_path, size)
    image = root / "dev/sdb"
    if two_partitions:
        script = f"label: gpt\nsize=16MiB, type={MSR_TYPE}\nsize=32MiB, type={BASIC_DATA_TYPE}\n"
        layout = [(1, 2048, 16 * MIB, False), (2, 2048 + 16 * MIB // 512, 32 * MIB, True)]
    else:
        script = "label: dos\ntype=7\n"
        layout = [(1, 2048, 32 * MIB, True)]
    subprocess.run(["sfdisk", "-q", str(image)], input=script, text=True, check=True,
                   capture_output=True)
    for number, start, part_size, ntfs in layout:
        sys_part = root / f"sys/block/sdb/sdb{number}"
        sys_part.mkdir()
        for name, value in (("partition", number), ("start", start),
                            ("size", part_size // 512)):
            (sys_part / name).write_text(f"{value}\n")
        node = root / f"dev/sdb{number}"
        with open(node, "wb") as handle:
            handle.truncate(part_size)
        if ntfs:
            subprocess.run(["mkntfs", "-Q", "-q", "-F", str(node)], check=True,
                           capture_output=True)
    return root


def with_listing(ctx: Context, listings: dict[str, str | None]) -> FakeNtfsls:
    fake = FakeNtfsls(ctx.run, listings)
    ctx.run.probe = fake  # type: ignore[method-assign]
    return fake


def test_ntfs_with_platform_entries_in_system_volume_information_is_fresh(
        tmp_path: Path) -> None:
    root = ntfs_vm(tmp_path)
    ctx = make_context(root)
    fake = with_listing(ctx, {"/": NTFS_ROOT, "/System Volume Information":
                              ".\n..\nIndexerVolumeGuid\nWPSettings.dat\ntracking.log\n"})
    disk.ensure_partitioned(ctx)
    assert planned(ctx)[0].startswith("run sfdisk")
    assert "/System Volume Information" in fake.asked


def test_ntfs_with_files_in_system_volume_information_is_refused(tmp_path: Path) -> None:
    root = ntfs_vm(tmp_path)
    ctx = make_context(root)
    with_listing(ctx, {"/": NTFS_ROOT, "/System Volume Information":
                       ".\n..\nIndexerVolumeGuid\nbackup.vhdx\n"})
    with pytest.raises(UnsafeOperation, match="System Volume Information/backup.vhdx"):
        disk.ensure_partitioned(ctx)
    assert planned(ctx) == []


def test_ntfs_whose_system_volume_information_cannot_be_listed_is_refused(
        tmp_path: Path) -> None:
    root = ntfs_vm(tmp_path)
    ctx = make_context(root)
    with_listing(ctx, {"/": NTFS_ROOT, "/System Volume Information": None})
    with pytest.raises(UnsafeOperation, match="System Volume Information"):
        disk.ensure_partitioned(ctx)


def test_ntfs_recycle_bin_is_not_the_platforms(tmp_path: Path) -> None:
    """$RECYCLE.BIN holds what a user deleted: not an entry of the fresh disk."""
    root = ntfs_vm(tmp_path)
    ctx = make_context(root)
    with_listing(ctx, {"/": NTFS_ROOT.replace("System Volume Information\n", "$RECYCLE.BIN\n")})
    with pytest.raises(UnsafeOperation, match=r"\$RECYCLE.BIN"):
        disk.ensure_partitioned(ctx)


def test_real_ntfsls_on_an_image_without_system_volume_information(tmp_path: Path) -> None:
    need("ntfscp", "ntfsls")
    root = ntfs_vm(tmp_path)
    readme = tmp_path / "readme.txt"
    readme.write_text("WARNING: THIS IS A TEMPORARY DISK.\r\n")
    subprocess.run(["ntfscp", str(root / "dev/sdb1"), str(readme), disk.README_NAME],
                   check=True, capture_output=True)
    ctx = make_context(root)
    disk.ensure_partitioned(ctx)
    assert planned(ctx)[0].startswith("run sfdisk")
    assert "fresh NTFS" in planned(ctx)[0] or "fresh NTFS" in str(ctx.run.planned)


def test_two_partition_ntfs_layout_over_2_tib_is_fresh(tmp_path: Path) -> None:
    """GPT: partition 1 Microsoft reserved (no file system), partition 2 the NTFS."""
    root = ntfs_vm(tmp_path, 3 * 1024**4, two_partitions=True)
    ctx = make_context(root)
    fake = with_listing(ctx, {"/": NTFS_ROOT.replace("System Volume Information\n", "")})
    disk.ensure_partitioned(ctx)
    lines = planned(ctx)
    assert lines[0].startswith("run sfdisk") and "(one GPT partition" in lines[0]
    assert fake.asked == ["/"]


def test_two_partitions_with_a_data_partition_1_are_refused(tmp_path: Path) -> None:
    root = ntfs_vm(tmp_path, 3 * 1024**4, two_partitions=True)
    write_at(root / "dev/sdb1", 0, ext4_superblock())
    ctx = make_context(root)
    with_listing(ctx, {"/": NTFS_ROOT})
    with pytest.raises(UnsafeOperation, match="/dev/sdb1"):
        disk.ensure_partitioned(ctx)


def test_two_partitions_whose_partition_1_is_not_reserved_are_refused(tmp_path: Path) -> None:
    root = ntfs_vm(tmp_path, 3 * 1024**4, two_partitions=True)
    # Partition 1's type GUID (entry 1 at LBA 2) becomes Linux data.
    linux = bytes.fromhex("AF3DC60F838472478E793D69D8477DE4")
    write_at(root / "dev/sdb", 1024, linux)
    ctx = make_context(root)
    with_listing(ctx, {"/": NTFS_ROOT})
    with pytest.raises(UnsafeOperation, match="/dev/sdb1"):
        disk.ensure_partitioned(ctx)


# ---------------------------------------------------------------- a plan never mounts

def test_plan_never_mounts_to_look_at_files(tmp_path: Path) -> None:
    """Another Linux file system than the configured one, not mounted: the run would mount
    it read-only to list its files; the plan says so and mounts nothing."""
    need("blkid", "sfdisk", "mkfs.ext4")
    root = image_vm(tmp_path, 64 * MIB, partition=63 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(root / "dev/sdb1")], check=True,
                   capture_output=True)
    ctx = make_context(root, Filesystem="xfs")
    ran: list[str] = []
    real = ctx.run.probe

    def probe(argv: Sequence[str], **kwargs: Any) -> Result:
        ran.append(argv[0])
        if argv[0] in ("mount", "umount", "ntfs-3g"):
            raise AssertionError(f"a plan ran {' '.join(argv)}")
        return real(argv, **kwargs)

    ctx.run.probe = probe  # type: ignore[method-assign]
    disk.ensure_filesystem(ctx)
    assert "mount" not in ran
    lines = planned(ctx)
    assert any("mkfs.xfs" in line for line in lines)
    assert any("read-only" in line and "/dev/sdb1" in line for line in lines)
