"""Disks: the resource disk (by VMBus id, never by name), block devices, partition
tables and filesystem signatures.

Device paths are returned as system paths ("/dev/sdb"); `root / device` is the
node to open. Links such as /dev/disk/azure/resource are resolved *inside* the
root, also when their target is absolute: in an image or sandbox root, "/dev/sdb"
means that root's /dev/sdb (a test makes it a device node or an image file),
never the host's.
"""

from __future__ import annotations

import posixpath
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from system.errors import CommandFailed, ProbeFailed
from system.record import Record
from system.root import Root

if TYPE_CHECKING:
    from system.runner import Runner

RESOURCE_DISK_LINK = "/dev/disk/azure/resource"
# VMBus device ids (PLATFORM.md 6): Gen1 IDE port 1, Gen2 the SCSI controller (LUN 1).
GEN1_RESOURCE_PREFIX = "{00000000-0001"
GEN2_SCSI_CONTROLLER = "{f8b3781a-1e82-4818-a1c3-63d806ec15bb}"
SECTOR_BYTES = 512

# How far the superblock reader looks: btrfs keeps its superblock at 64 KiB.
SIGNATURE_BYTES = 68 * 1024
_SWAP_PAGE_SIZES = (4096, 8192, 16384, 65536)


def _is_readable_sysfs(root: Root) -> bool:
    return (root / "sys/bus").is_dir() or (root / "sys/block").is_dir()


def resolve_link(root: Root, system_path: str) -> str | None:
    """Follow symlinks of a system path inside the root; None when it does not exist."""
    current = posixpath.normpath("/" + system_path.lstrip("/"))
    for _ in range(40):
        real = root / current
        if real.is_symlink():
            target = str(real.readlink())
            base = posixpath.dirname(current)
            current = posixpath.normpath(target if target.startswith("/")
                                         else posixpath.join(base, target))
            if current.startswith("//"):
                current = "/" + current.lstrip("/")
            continue
        return current if real.exists() else None
    raise ProbeFailed(f"{system_path}: too many levels of symbolic links")


def resource_disk_device(root: Root) -> str | None:
    """The resource disk's whole-disk device ("/dev/sdb"), or None when the VM has none.

    The udev link /dev/disk/azure/resource wins when it resolves; otherwise the
    VMBus device ids are walked. Raises ProbeFailed when sysfs cannot be read at all.
    """
    linked = resolve_link(root, RESOURCE_DISK_LINK)
    if linked is not None:
        return linked
    if not _is_readable_sysfs(root):
        raise ProbeFailed("resource disk: sysfs is not readable (/sys/bus, /sys/block missing)")
    devices = root / "sys/bus/vmbus/devices"
    if not devices.is_dir():
        return None  # not on Hyper-V: no VMBus, no resource disk
    try:
        entries = sorted(devices.iterdir(), key=lambda p: p.name)
    except OSError as err:
        raise ProbeFailed(f"resource disk: cannot list /sys/bus/vmbus/devices: {err.strerror}") \
            from None
    for entry in entries:
        try:
            device_id = (entry / "device_id").read_text().strip().lower()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise ProbeFailed(f"resource disk: cannot read {entry.name}/device_id: "
                              f"{err.strerror}") from None
        if device_id.startswith(GEN1_RESOURCE_PREFIX):
            names = _scsi_block_devices(entry, lun=None)
        elif device_id == GEN2_SCSI_CONTROLLER:
            names = _scsi_block_devices(entry, lun=1)
        else:
            continue
        if names:
            return "/dev/" + names[0]
    return None


def _scsi_block_devices(vmbus_device: Path, lun: int | None) -> list[str]:
    """Block device names under a VMBus storage device: host*/target*/H:C:T:L/block/NAME."""
    found = []
    for scsi in sorted(vmbus_device.glob("host*/target*/*:*:*:*")):
        try:
            this_lun = int(scsi.name.rsplit(":", 1)[1])
        except ValueError:
            continue
        if lun is not None and this_lun != lun:
            continue
        found.extend(sorted(block.name for block in (scsi / "block").glob("*")))
    return found


class Partition(Record):
    """A partition of a block device, from sysfs."""

    device: str  # /dev/sdb1
    number: int
    start_bytes: int
    size_bytes: int


class BlockDevice(Record):
    """A whole disk: size, partition table kind and partitions."""

    device: str  # /dev/sdb
    size_bytes: int
    partition_table: str | None  # "mbr", "gpt" or None
    partitions: tuple[Partition, ...]


class FilesystemSignature(Record):
    """What a device (or partition) holds: the filesystem type, label and UUID."""

    type: str
    label: str | None = None
    uuid: str | None = None


def block_device(root: Root, device: str) -> BlockDevice:
    """Details of a whole-disk device ("/dev/sdb" or "sdb") from sysfs and its first sectors."""
    name = device.rsplit("/", 1)[-1]
    sys_block = root / "sys/block" / name
    size = _sectors(sys_block / "size", f"{name} size") * SECTOR_BYTES
    partitions = []
    try:
        children = sorted(sys_block.iterdir(), key=lambda p: p.name)
    except OSError as err:
        raise ProbeFailed(f"block device {name}: cannot list /sys/block/{name}: "
                          f"{err.strerror}") from None
    for child in children:
        if not (child / "partition").exists():
            continue
        partitions.append(Partition(
            device="/dev/" + child.name,
            number=_sectors(child / "partition", f"{child.name} number"),
            start_bytes=_sectors(child / "start", f"{child.name} start") * SECTOR_BYTES,
            size_bytes=_sectors(child / "size", f"{child.name} size") * SECTOR_BYTES,
        ))
    partitions.sort(key=lambda p: p.number)
    head = read_device_head(root, "/dev/" + name, 4096 + 512)
    return BlockDevice("/dev/" + name, size, partition_table_type(head), tuple(partitions))


def _sectors(path: Path, what: str) -> int:
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        raise ProbeFailed(f"{what}: sysfs has no {path.name}") from None
    except (OSError, ValueError) as err:
        raise ProbeFailed(f"{what}: cannot read {path.name}: {err}") from None


def read_device_head(root: Root, device: str, length: int) -> bytes:
    """The first `length` bytes of a device (or shorter, if the device is)."""
    try:
        with open(root / device, "rb") as handle:
            return handle.read(length)
    except OSError as err:
        raise ProbeFailed(f"cannot read {device}: {err.strerror}") from None


def partition_table_type(head: bytes) -> str | None:
    """"gpt", "mbr" or None from the first sectors of a disk (at least 1 KiB, 4.5 KiB for 4Kn)."""
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        return None
    if head[512:520] == b"EFI PART" or head[4096:4104] == b"EFI PART":
        return "gpt"
    if head[3:11] == b"NTFS    " or head[54:59] == b"FAT16" or head[82:87] == b"FAT32" \
            or head[54:59] == b"FAT12":
        return None  # a filesystem boot sector on the whole device, not a partition table
    entries = [head[446 + 16 * i:462 + 16 * i] for i in range(4)]
    if any(entry[0] not in (0x00, 0x80) for entry in entries):
        return None
    if any(entry[4] == 0xEE for entry in entries):
        return "gpt"  # protective MBR whose GPT header sits on a larger sector
    return "mbr"


def filesystem_signature(root: Root, device: str) -> FilesystemSignature | None:
    """The filesystem on a device or partition, from its superblock; None when none is known."""
    return parse_superblock(read_device_head(root, device, SIGNATURE_BYTES))


def parse_superblock(data: bytes) -> FilesystemSignature | None:
    """Recognise ext2/3/4, xfs, btrfs, ntfs, vfat, swap, iso9660/udf from a device's first bytes."""
    ext = data[1024:2048]
    if len(ext) >= 0x88 and ext[0x38:0x3A] == b"\x53\xef":
        compat, incompat, ro_compat = struct.unpack_from("<III", ext, 0x5C)
        if incompat & ~0x0016 or ro_compat & ~0x0007:
            kind = "ext4"  # extents, 64bit, flex_bg, huge_file, metadata_csum, ...
        elif compat & 0x0004:
            kind = "ext3"  # has_journal
        else:
            kind = "ext2"
        return FilesystemSignature(kind, _cstring(ext[0x78:0x88]), _uuid(ext[0x68:0x78]))
    if data[0:4] == b"XFSB" and len(data) >= 120:
        return FilesystemSignature("xfs", _cstring(data[108:120]), _uuid(data[32:48]))
    btrfs = data[65536:65536 + 0x22B]
    if btrfs[0x40:0x48] == b"_BHRfS_M":
        return FilesystemSignature("btrfs", _cstring(btrfs[0x12B:0x22B]), _uuid(btrfs[0x20:0x30]))
    if data[3:11] == b"NTFS    " and len(data) >= 0x50:
        serial = struct.unpack_from("<Q", data, 0x48)[0]
        # The label lives in the $Volume MFT record; blkid shows the serial as the UUID.
        return FilesystemSignature("ntfs", None, f"{serial:016X}")
    for page in _SWAP_PAGE_SIZES:
        if data[page - 10:page] in (b"SWAPSPACE2", b"SWAP-SPACE"):
            return FilesystemSignature("swap", _cstring(data[1052:1068]), _uuid(data[1036:1052]))
    if data[510:512] == b"\x55\xaa" and (data[82:87] == b"FAT32" or data[54:57] == b"FAT"):
        fat32 = data[82:87] == b"FAT32"
        serial_at, label_at = (67, 71) if fat32 else (39, 43)
        serial = struct.unpack_from("<I", data, serial_at)[0]
        label = _cstring(data[label_at:label_at + 11])
        return FilesystemSignature("vfat", label if label != "NO NAME" else None,
                                   f"{serial >> 16:04X}-{serial & 0xFFFF:04X}")
    from facts.media import media_signature

    media = media_signature(data)
    if media is not None:
        return FilesystemSignature(media)
    return None


def _cstring(raw: bytes) -> str | None:
    text = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
    return text or None


def _uuid(raw: bytes) -> str | None:
    if len(raw) != 16 or raw == bytes(16):
        return None
    # As str(uuid.UUID(bytes=raw)), without importing uuid (and platform: ~3 ms of every
    # boot that checks the resource disk).
    digits = raw.hex()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def parse_blkid_export(text: str) -> dict[str, str]:
    """`blkid -p -o export DEV` output as a dict (TYPE, LABEL, UUID, PTTYPE, ...).

    Values are shell-escaped by blkid (`\\ ` for a space); the escapes are undone.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or not key.strip():
            continue
        value = []
        escaped = False
        for char in raw:
            if escaped:
                value.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                value.append(char)
        values[key.strip()] = "".join(value)
    return values


def blkid(runner: Runner, device: str) -> dict[str, str]:
    """Low-level probe of a device by blkid (system path); {} when blkid finds nothing.

    blkid exits 2 when it finds no signature: that is a fact ("empty"), not a failure.
    """
    real = device if runner.chroot else str(runner.root / device)
    try:
        result = runner.probe(["blkid", "-p", "-o", "export", real])
    except CommandFailed as err:
        raise ProbeFailed(f"blkid {device}: {err}") from None
    if result.returncode == 2:
        return {}
    if result.returncode != 0:
        raise ProbeFailed(f"blkid {device} failed with exit status {result.returncode}: "
                          f"{result.stderr.strip()[-500:]}")
    values = parse_blkid_export(result.stdout)
    values.pop("DEVNAME", None)
    return values
