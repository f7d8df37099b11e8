"""Hardware probes in a temporary root: VM id, kernel, NICs, disks, mounts, swaps."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from facts import disks, hardware, mounts
from system.errors import ProbeFailed
from system.root import Root


def _write(root: Root, path: str, text: str | bytes) -> Path:
    real = root / path
    real.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        real.write_bytes(text)
    else:
        real.write_text(text)
    return real


# --- VM id ----------------------------------------------------------------------------------

def test_vm_id_byte_swaps_the_first_three_groups() -> None:
    assert hardware.vm_id_from_product_uuid("78563412-BC9A-F0DE-1234-56789ABCDEF0\n") == \
        "12345678-9abc-def0-1234-56789abcdef0"


@pytest.mark.parametrize("recorded, same", [
    ("12345678-9abc-def0-1234-56789abcdef0", True),
    ("12345678-9ABC-DEF0-1234-56789ABCDEF0\n", True),  # another agent's case
    ("78563412-BC9A-F0DE-1234-56789ABCDEF0", True),  # kept in SMBIOS byte order
    ("12345678-9abc-def0-1234-56789abcdef1", False),
    ("78563412-bc9a-f0de-1234-56789abcdef1", False),
    ("offline-image", False),
    ("", False),
])
def test_same_vm_id_compares_as_waagent_does(recorded: str, same: bool) -> None:
    assert hardware.same_vm_id(recorded, "12345678-9abc-def0-1234-56789abcdef0") is same


def test_vm_id_from_root(tmp_path: Path) -> None:
    root = Root(tmp_path)
    _write(root, "/sys/class/dmi/id/product_uuid", "C0FFEE00-1111-2222-3333-444455556666\n")
    assert hardware.vm_id(root) == "00eeffc0-1111-2222-3333-444455556666"


def test_vm_id_unknown_is_an_error(tmp_path: Path) -> None:
    root = Root(tmp_path)
    with pytest.raises(ProbeFailed, match="product_uuid does not exist"):
        hardware.vm_id(root)
    _write(root, "/sys/class/dmi/id/product_uuid", "Not Settable\n")
    with pytest.raises(ProbeFailed, match="is not a UUID"):
        hardware.vm_id(root)


# --- kernel ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("release", "version", "numa_off"), [
    ("2.6.32-504.el6.x86_64", (2, 6, 32), True),
    ("2.6.37", (2, 6, 37), False),
    ("2.6", (2, 6), True),
    ("3.10.0-1160.el7", (3, 10, 0), False),
    ("6.18.44-fc-v657", (6, 18, 44), False),
])
def test_kernel_version(release: str, version: tuple[int, ...], numa_off: bool) -> None:
    assert hardware.kernel_version(release) == version
    assert hardware.kernel_older_than(release, (2, 6, 37)) is numa_off


def test_kernel_release(tmp_path: Path) -> None:
    root = Root(tmp_path)
    _write(root, "/proc/sys/kernel/osrelease", "5.15.0-1057-azure\n")
    assert hardware.kernel_release(root) == "5.15.0-1057-azure"
    with pytest.raises(ValueError):
        hardware.kernel_version("azure")


# --- NICs ------------------------------------------------------------------------------------

def test_nics(tmp_path: Path) -> None:
    root = Root(tmp_path)
    devices = tmp_path / "sys/devices"
    for name, parent, mac, kind in (
            ("eth0", "vmbus/0001/net", "00:0D:3A:11:22:33", "1"),
            ("lo", "virtual/net", "00:00:00:00:00:00", "772"),
            ("docker0", "virtual/net", "02:42:ac:11:00:01", "1")):
        node = devices / parent / name
        node.mkdir(parents=True)
        (node / "address").write_text(mac + "\n")
        (node / "type").write_text(kind + "\n")
        (node / "operstate").write_text("up\n")
        if name == "eth0":
            (node / "device").mkdir()
        link = tmp_path / "sys/class/net" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../../devices") / parent / name)
    found = {nic.name: nic for nic in hardware.nics(root)}
    assert found["eth0"] == hardware.Nic("eth0", "00:0d:3a:11:22:33", False, False, "up")
    assert found["lo"].is_loopback and found["lo"].is_virtual and found["lo"].mac is None
    assert found["docker0"].is_virtual and not found["docker0"].is_loopback


def test_nics_without_sysfs(tmp_path: Path) -> None:
    with pytest.raises(ProbeFailed, match="is sysfs mounted"):
        hardware.nics(Root(tmp_path))


# --- resource disk ---------------------------------------------------------------------------

GEN1_ID = "{00000000-0001-8899-0000-000000000000}"
OS_DISK_ID = "{00000000-0000-8899-0000-000000000000}"
GEN2_ID = "{f8b3781a-1e82-4818-a1c3-63d806ec15bb}"


def _vmbus_disk(root: Root, guid: str, device_id: str, hctl: str, name: str) -> None:
    base = root / "sys/bus/vmbus/devices" / guid
    host = "host" + hctl.split(":")[0]
    target = "target" + hctl.rsplit(":", 1)[0]
    (base / host / target / hctl / "block" / name).mkdir(parents=True)
    (base / "device_id").write_text(device_id + "\n")


def test_resource_disk_gen1(tmp_path: Path) -> None:
    root = Root(tmp_path)
    _vmbus_disk(root, "00000000-0000-8899-0000-000000000000", OS_DISK_ID, "0:0:0:0", "sda")
    _vmbus_disk(root, "00000000-0001-8899-0000-000000000000", GEN1_ID, "1:0:1:0", "sdb")
    assert disks.resource_disk_device(root) == "/dev/sdb"


def test_resource_disk_gen2_lun1_not_by_name(tmp_path: Path) -> None:
    root = Root(tmp_path)
    guid = "f8b3781a-1e82-4818-a1c3-63d806ec15bb"
    _vmbus_disk(root, guid, GEN2_ID, "0:0:0:0", "sdc")  # OS disk at LUN 0, odd name
    _vmbus_disk(root, guid, GEN2_ID, "0:0:0:1", "sda")  # the resource disk at LUN 1
    assert disks.resource_disk_device(root) == "/dev/sda"


def test_resource_disk_udev_link_wins_and_stays_inside_the_root(tmp_path: Path) -> None:
    root = Root(tmp_path)
    (tmp_path / "sys/bus").mkdir(parents=True)
    _write(root, "/dev/sdq", b"")
    link = tmp_path / "dev/disk/azure/resource"
    link.parent.mkdir(parents=True)
    link.symlink_to("../../sdq")
    assert disks.resource_disk_device(root) == "/dev/sdq"
    link.unlink()
    link.symlink_to("/dev/sdq")  # absolute: the root's /dev/sdq, not the host's
    assert disks.resource_disk_device(root) == "/dev/sdq"
    link.unlink()
    link.symlink_to("/dev/sdz")  # dangling: fall back to VMBus
    assert disks.resource_disk_device(root) is None


def test_no_resource_disk_and_unreadable_sysfs(tmp_path: Path) -> None:
    root = Root(tmp_path)
    with pytest.raises(ProbeFailed, match="sysfs is not readable"):
        disks.resource_disk_device(root)
    (tmp_path / "sys/bus").mkdir(parents=True)
    assert disks.resource_disk_device(root) is None  # not Hyper-V
    _vmbus_disk(root, "00000000-0000-8899-0000-000000000000", OS_DISK_ID, "0:0:0:0", "sda")
    assert disks.resource_disk_device(root) is None  # only the OS disk


# --- block devices and signatures ------------------------------------------------------------

def _mbr(entries: list[tuple[int, int, int]]) -> bytearray:
    sector = bytearray(512)
    for index, (kind, start, count) in enumerate(entries):
        struct.pack_into("<B3xB3xII", sector, 446 + 16 * index, 0, kind, start, count)
    sector[510:512] = b"\x55\xaa"
    return sector


def test_partition_table_types() -> None:
    mbr = _mbr([(0x07, 2048, 1000)])
    assert disks.partition_table_type(bytes(mbr) + bytes(4096)) == "mbr"
    gpt = bytes(_mbr([(0xEE, 1, 0xFFFFFFFF)])) + b"EFI PART" + bytes(4096)
    assert disks.partition_table_type(gpt) == "gpt"
    assert disks.partition_table_type(bytes(4608)) is None
    ntfs = bytearray(4608)
    ntfs[3:11] = b"NTFS    "
    ntfs[510:512] = b"\x55\xaa"
    assert disks.partition_table_type(bytes(ntfs)) is None


def _ntfs_boot(serial: int) -> bytes:
    data = bytearray(70 * 1024)
    data[3:11] = b"NTFS    "
    struct.pack_into("<Q", data, 0x48, serial)
    data[510:512] = b"\x55\xaa"
    return bytes(data)


def test_block_device_with_partitions(tmp_path: Path) -> None:
    root = Root(tmp_path)
    sysdisk = tmp_path / "sys/block/sdb"
    (sysdisk / "sdb1").mkdir(parents=True)
    (sysdisk / "size").write_text("16777216\n")
    (sysdisk / "sdb1/partition").write_text("1\n")
    (sysdisk / "sdb1/start").write_text("2048\n")
    (sysdisk / "sdb1/size").write_text("16775168\n")
    (sysdisk / "queue").mkdir()  # not a partition
    _write(root, "/dev/sdb", bytes(_mbr([(0x07, 2048, 16775168)])) + bytes(8192))
    _write(root, "/dev/sdb1", _ntfs_boot(0x1A2B3C4D5E6F7081))
    disk = disks.block_device(root, "/dev/sdb")
    assert disk == disks.BlockDevice("/dev/sdb", 16777216 * 512, "mbr", (
        disks.Partition("/dev/sdb1", 1, 2048 * 512, 16775168 * 512),))
    assert disks.filesystem_signature(root, "/dev/sdb1") == \
        disks.FilesystemSignature("ntfs", None, "1A2B3C4D5E6F7081")
    assert disks.filesystem_signature(root, "/dev/sdb") is None


def test_block_device_unknown(tmp_path: Path) -> None:
    with pytest.raises(ProbeFailed, match="sdx size"):
        disks.block_device(Root(tmp_path), "sdx")


def _ext(compat: int, incompat: int, ro_compat: int, label: bytes, fs_uuid: uuid.UUID) -> bytes:
    data = bytearray(70 * 1024)
    sb = 1024
    data[sb + 0x38:sb + 0x3A] = b"\x53\xef"
    struct.pack_into("<III", data, sb + 0x5C, compat, incompat, ro_compat)
    data[sb + 0x68:sb + 0x78] = fs_uuid.bytes
    data[sb + 0x78:sb + 0x78 + len(label)] = label
    return bytes(data)


def test_superblocks() -> None:
    fs_uuid = uuid.UUID("0b7e4c4a-7a3c-4a5e-9a55-2f1b0c3d4e5f")
    assert disks.parse_superblock(_ext(0x3C, 0x2C2, 0x46B, b"resource", fs_uuid)) == \
        disks.FilesystemSignature("ext4", "resource", str(fs_uuid))
    assert disks.parse_superblock(_ext(0x3C, 0x2, 0x3, b"", fs_uuid)).type == "ext3"  # type: ignore[union-attr]
    assert disks.parse_superblock(_ext(0x38, 0x2, 0x3, b"", fs_uuid)).type == "ext2"  # type: ignore[union-attr]
    xfs = bytearray(70 * 1024)
    xfs[0:4] = b"XFSB"
    xfs[32:48] = fs_uuid.bytes
    xfs[108:113] = b"data1"
    assert disks.parse_superblock(bytes(xfs)) == disks.FilesystemSignature("xfs", "data1",
                                                                           str(fs_uuid))
    btrfs = bytearray(70 * 1024)
    btrfs[65536 + 0x40:65536 + 0x48] = b"_BHRfS_M"
    btrfs[65536 + 0x20:65536 + 0x30] = fs_uuid.bytes
    btrfs[65536 + 0x12B:65536 + 0x12F] = b"pool"
    assert disks.parse_superblock(bytes(btrfs)) == disks.FilesystemSignature("btrfs", "pool",
                                                                             str(fs_uuid))
    swap = bytearray(70 * 1024)
    swap[4086:4096] = b"SWAPSPACE2"
    swap[1036:1052] = fs_uuid.bytes
    assert disks.parse_superblock(bytes(swap)) == disks.FilesystemSignature("swap", None,
                                                                            str(fs_uuid))
    fat = bytearray(70 * 1024)
    fat[82:87] = b"FAT32"
    fat[510:512] = b"\x55\xaa"
    struct.pack_into("<I", fat, 67, 0xABCD1234)
    fat[71:82] = b"EFI        "
    assert disks.parse_superblock(bytes(fat)) == disks.FilesystemSignature("vfat", "EFI",
                                                                           "ABCD-1234")
    assert disks.parse_superblock(bytes(70 * 1024)) is None


def test_parse_blkid_export() -> None:
    text = ("DEVNAME=/dev/sdb1\nLABEL=Temporary\\ Storage\nUUID=1A2B3C4D5E6F7081\n"
            "TYPE=ntfs\nUSAGE=filesystem\nPART_ENTRY_SCHEME=dos\n\ngarbage line\n")
    assert disks.parse_blkid_export(text) == {
        "DEVNAME": "/dev/sdb1", "LABEL": "Temporary Storage", "UUID": "1A2B3C4D5E6F7081",
        "TYPE": "ntfs", "USAGE": "filesystem", "PART_ENTRY_SCHEME": "dos"}


# --- mounts and swaps ------------------------------------------------------------------------

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
40 27 8:17 / /mnt/resource rw,relatime shared:1 - ext4 /dev/sdb1 rw
41 27 8:17 / /mnt/with\\040space ro,relatime - ext4 /dev/sdb1 ro
42 40 0:50 / /mnt/resource tmpfs rw master:2 - tmpfs tmpfs rw,size=10k
"""


def test_parse_mountinfo() -> None:
    parsed = mounts.parse_mountinfo(MOUNTINFO)
    assert parsed[1] == mounts.Mount("/dev/vda", "/", "ext4", ("rw", "relatime", "discard"))
    assert parsed[3].target == "/mnt/with space" and parsed[3].read_only
    with pytest.raises(ValueError, match="line 1"):
        mounts.parse_mountinfo("1 2 3\n")


def test_mounts_through_the_root(tmp_path: Path) -> None:
    root = Root(tmp_path)
    _write(root, "/proc/self/mountinfo", MOUNTINFO)
    assert mounts.mount_at(root, "/mnt/resource/").fstype == "tmpfs"  # type: ignore[union-attr]
    assert mounts.mount_at(root, "/nowhere") is None
    assert [m.target for m in mounts.mounts_of(root, "/dev/sdb1")] == ["/mnt/resource",
                                                                       "/mnt/with space"]


def test_proc_mounts_fallback(tmp_path: Path) -> None:
    root = Root(tmp_path)
    with pytest.raises(ProbeFailed, match="/proc/mounts does not exist"):
        mounts.mounts(root)
    _write(root, "/proc/mounts", "/dev/sdb1 /mnt/resource ext4 rw,relatime 0 0\n")
    assert mounts.mounts(root) == (mounts.Mount("/dev/sdb1", "/mnt/resource", "ext4",
                                                ("rw", "relatime")),)


SWAPS = """\
Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/mnt/resource/swapfile                  file\t\t2097148\t\t0\t\t-2
/dev/zram0                              partition\t8388604\t\t1024\t\t100
"""


def test_swaps(tmp_path: Path) -> None:
    root = Root(tmp_path)
    with pytest.raises(ProbeFailed, match="active swaps"):
        mounts.active_swaps(root)
    _write(root, "/proc/swaps", SWAPS)
    assert mounts.active_swaps(root)[0] == mounts.Swap("/mnt/resource/swapfile", "file",
                                                       2097148, 0, -2)
    assert mounts.active_swap_size_mb(root, "/mnt/resource/swapfile") == 2048
    assert mounts.active_swap_size_mb(root, "/swap") is None
    _write(root, "/proc/swaps", SWAPS.splitlines()[0] + "\n")
    assert mounts.active_swaps(root) == ()


@pytest.mark.parametrize("raw", [bytes(range(16)), bytes(range(240, 256)), b"\x00" * 15 + b"\x01",
                                 uuid.UUID("0b7e4c4a-7a3c-4a5e-9a55-2f1b0c3d4e5f").bytes])
def test_superblock_uuid_reads_as_uuid_module_does(raw: bytes) -> None:
    assert disks._uuid(raw) == str(uuid.UUID(bytes=raw))


def test_an_all_zero_or_short_uuid_is_none() -> None:
    assert disks._uuid(bytes(16)) is None and disks._uuid(b"\x01" * 15) is None


@pytest.mark.parametrize("text", [
    "78563412-BC9A-F0DE-1234-56789ABCDEF0x", "78563412-BC9A-F0DE-1234",
    "7856341-2BC9A-F0DE-1234-56789ABCDEF0", "78563412-BC9A-F0DE-1234-56789ABCDEFG",
    "78563412_BC9A_F0DE_1234_56789ABCDEF0", "", "78563412-BC9A-F0DE-1234-56789ABCDEF0-0000",
    "7856341\u0661-BC9A-F0DE-1234-56789ABCDEF0"])
def test_vm_id_refuses_what_is_not_8_4_4_4_12_hex(text: str) -> None:
    with pytest.raises(ValueError, match="is not a UUID"):
        hardware.vm_id_from_product_uuid(text)
