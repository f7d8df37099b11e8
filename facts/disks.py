"""Disks: the resource disk (by VMBus id, never by name), block devices, partition
tables and filesystem signatures.

Device paths are returned as system paths ("/dev/sdb"); `root / device` is the
node to open. Links such as /dev/disk/azure/resource are resolved *inside* the
root, also when their target is absolute: in an image or sandbox root, "/dev/sdb"
means that root's /dev/sdb (a test makes it a device node or an image file),
never the host's.
"""

import os
import posixpath
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from system.errors import CommandFailed, ProbeFailed
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
MIB = 1024**2

# The blank check (device_contents). Partitions usually start at sector 63 (old DOS
# alignment, of 512 or 4096 bytes), 1 MiB (2048 sectors of 512) or 8 MiB (2048 sectors of
# 4K); a file system may also sit on the whole disk (0). Zeros over the first 4 MiB rule out
# a table and any superblock of a partition at the first three; the end of a disk holds the
# backup GPT header and md 0.90/1.0 superblocks.
BLANK_HEAD_BYTES = 4 * MIB
BLANK_TAIL_BYTES = MIB
PARTITION_OFFSETS = (0, 63 * 512, 63 * 4096, MIB, 8 * MIB)
_MD_MAGICS = (struct.pack("<I", 0xA92B4EFC), struct.pack(">I", 0xA92B4EFC))
MSR_PARTITION_GPT = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"


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


class Partition(NamedTuple):
    """A partition of a block device, from sysfs."""

    device: str  # /dev/sdb1
    number: int
    start_bytes: int
    size_bytes: int


class BlockDevice(NamedTuple):
    """A whole disk: size, partition table kind and partitions."""

    device: str  # /dev/sdb
    size_bytes: int
    partition_table: str | None  # "mbr", "gpt" or None
    partitions: tuple[Partition, ...]


class DeviceContents(NamedTuple):
    """What a whole disk holds where partition tables and signatures sit: the evidence
    for "blank". `found` is empty only when every byte read was zero."""

    device: str
    checked_bytes: int  # bytes read at its start and end
    found: tuple[str, ...]  # each with where it is: "ext4 at offset 1048576 (1 MiB)"


class FilesystemSignature(NamedTuple):
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



def first_partition(root: Root, device: str) -> Partition | None:
    """The kernel's partition 1 of a disk, or None."""
    for part in block_device(root, device).partitions:
        if part.number == 1:
            return part
    return None


def device_number(root: Root, device: str) -> int | None:
    """st_rdev of a block device node in the root, None when the node is missing."""
    try:
        st = os.stat(root / device)
    except FileNotFoundError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_ino


def node_readable(root: Root, device: str) -> bool:
    """True when the node opens and reads: right after a re-read the kernel may still be
    removing the old partition 1 and adding the new one (ENXIO in between)."""
    try:
        with open(root / device, "rb") as handle:
            handle.read(512)
    except OSError:
        return False
    return True

def device_contents(root: Root, device: str, size_bytes: int) -> DeviceContents:
    """Read a disk's first 4 MiB and last MiB (bounded by its size) and say what they hold.

    Raises ProbeFailed when the device cannot be read, or reads shorter than its size:
    what was not read is unknown, never empty.
    """
    if size_bytes <= 0:
        raise ProbeFailed(f"{device}: its size is {size_bytes} bytes (no medium?); "
                          "its contents are unknown")
    try:
        with open(root / device, "rb") as handle:
            head = _read_exactly(handle, 0, min(BLANK_HEAD_BYTES, size_bytes), device)
            found = [*_table_findings(head),
                     *_partition_findings(handle, head, size_bytes, device)]
            if not found and head.count(0) != len(head):
                found.append(f"non-zero bytes at offset {_first_nonzero(head)}")
            tail_start = max(len(head), size_bytes - BLANK_TAIL_BYTES)
            tail = _read_exactly(handle, tail_start, size_bytes - tail_start, device)
    except OSError as err:
        raise ProbeFailed(f"cannot read {device}: {err.strerror}; its contents are "
                          "unknown") from None
    tail_found = _tail_findings(tail, tail_start, size_bytes)
    if not tail_found and tail.count(0) != len(tail):
        tail_found.append(f"non-zero bytes at offset {tail_start + _first_nonzero(tail)} "
                          "(near the end)")
    return DeviceContents(device, len(head) + len(tail), tuple(found + tail_found))


def _read_exactly(handle: BinaryIO, offset: int, length: int, device: str) -> bytes:
    handle.seek(offset)
    data = handle.read(length)
    if len(data) != length:
        raise ProbeFailed(f"{device}: read {len(data)} of {length} bytes at offset {offset}; "
                          "its contents are unknown")
    return data


def _first_nonzero(data: bytes) -> int:
    return len(data) - len(data.lstrip(b"\0"))


def _where(offset: int) -> str:
    return f"offset {offset}" + (f" ({offset // MIB} MiB)" if offset and offset % MIB == 0
                                 else "")


def _table_findings(head: bytes) -> list[str]:
    found = []
    if head[510:512] == b"\x55\xaa":
        found.append("an MBR or boot sector signature (55AA) at offset 510")
    found.extend(f"a GPT header at offset {sector}" for sector in (512, 4096)
                 if head[sector:sector + 8] == b"EFI PART")
    return found


def _partition_findings(handle: BinaryIO, head: bytes, size_bytes: int,
                        device: str) -> list[str]:
    """Signatures our superblock reader knows, at the usual partition starts."""
    found = []
    for offset in PARTITION_OFFSETS:
        if offset >= size_bytes:
            continue
        end = min(offset + SIGNATURE_BYTES, size_bytes)
        window = head[offset:end] if end <= len(head) \
            else _read_exactly(handle, offset, end - offset, device)
        signature = parse_superblock(window)
        if signature is not None:
            found.append(f"{signature.type} at {_where(offset)}")
    return found


def _tail_findings(tail: bytes, tail_start: int, size_bytes: int) -> list[str]:
    """The backup GPT header (last sector, 512 or 4K) and md 0.90/1.0 superblocks."""
    def at(offset: int, length: int) -> bytes:
        return tail[offset - tail_start:offset - tail_start + length] \
            if offset >= tail_start else b""

    found = [f"a backup GPT header at offset {offset}"
             for offset in (size_bytes - 512, size_bytes - 4096)
             if at(offset, 8) == b"EFI PART"]
    for version, offset in (("0.90", (size_bytes & ~0xFFFF) - 0x10000),
                            ("1.0", (size_bytes - 8192) & ~0xFFF)):
        if offset >= 0 and at(offset, 4) in _MD_MAGICS:
            found.append(f"linux_raid_member (md {version} superblock) at offset {offset}")
    return found


def gpt_partition_types(head: bytes) -> dict[int, str]:
    """Partition number -> type GUID (upper case) of the GPT entries within `head`."""
    for sector in (512, 4096):
        header = head[sector:sector + 92]
        if header[:8] != b"EFI PART" or len(header) < 92:
            continue
        entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
        if entry_size < 128:
            return {}
        types = {}
        for index in range(min(count, 128)):
            start = entries_lba * sector + index * entry_size
            raw = head[start:start + 16]
            if len(raw) < 16:
                break
            if raw != bytes(16):
                types[index + 1] = _guid(raw)
        return types
    return {}


def _guid(raw: bytes) -> str:
    """A GUID as GPT stores it (first three fields little-endian), as text."""
    a, b, c = struct.unpack_from("<IHH", raw)
    rest = raw[8:].hex().upper()
    return f"{a:08X}-{b:04X}-{c:04X}-{rest[:4]}-{rest[4:]}"


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



def filesystem_type(root: Root, device: str) -> str | None:
    """The filesystem type from the superblock (fast; blkid is used for verdicts)."""
    signature = filesystem_signature(root, device)
    return signature.type if signature else None

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
    container = _container_signature(data)
    if container is not None:
        return FilesystemSignature(container)
    from facts.media import media_signature

    media = media_signature(data)
    if media is not None:
        return FilesystemSignature(media)
    return None


def _container_signature(data: bytes) -> str | None:
    """LUKS, LVM and md (1.1 at 0, 1.2 at 4 KiB) headers, named as blkid names them."""
    if data[0:6] == b"LUKS\xba\xbe":
        return "crypto_LUKS"
    if any(data[s:s + 8] == b"LABELONE" for s in range(0, 2048, SECTOR_BYTES)):
        return "LVM2_member"
    if data[0:4] in _MD_MAGICS or data[4096:4100] in _MD_MAGICS:
        return "linux_raid_member"
    return None


def _cstring(raw: bytes) -> str | None:
    text = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
    return text or None


def _uuid(raw: bytes) -> str | None:
    if len(raw) != 16 or raw == bytes(16):
        return None
    # As str(uuid.UUID(bytes=raw)), without importing uuid (and platform with it) on every
    # boot that checks the resource disk.
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


def blkid(runner: "Runner", device: str) -> dict[str, str]:
    """Low-level probe of a device by blkid (system path); {} when blkid finds nothing.

    blkid exits 2 when it finds no signature, but also when it cannot open the device:
    so the device is first opened and read here, and 2 means "nothing there" only then.
    A device that cannot be read raises ProbeFailed (unknown, never empty).
    """
    if not read_device_head(runner.root, device, SECTOR_BYTES):
        raise ProbeFailed(f"blkid {device}: the device reads as 0 bytes (no medium?); "
                          "its contents are unknown")
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
