"""What is on the resource disk, for the verdict in tasks/disk.py: its partition table and
this agent's mark on it, what blkid finds on the disk and its partitions, and the files of
the partition that decides (`ntfsls` for NTFS; for a Linux filesystem its mount, or a
read-only mount without journal replay in a private directory, unmounted at once).

Read-only (DESIGN rule 1): commands run through `Runner.probe`, and a plan never mounts:
it records the look the run would take instead. A listing that fails is None (unknown),
never empty.
"""

import contextlib
import logging
import os
import shutil
import struct
import tempfile
from typing import TYPE_CHECKING, NamedTuple

from facts import disks
from facts.mounts import mounts_of_device

if TYPE_CHECKING:
    from system.runner import Runner

log = logging.getLogger("waagent.disk")

# Marks of a partition table this agent wrote ("WAGD"; GPT has partition names, MBR has not).
OUR_MBR_DISK_ID = 0x57414744
OUR_GPT_NAME = "waagent-resource"

SYSTEM_VOLUME_INFORMATION = "System Volume Information"
# Read-only mount options that also skip journal replay, for looking at a filesystem.
INSPECT_OPTIONS = {"ext4": "ro,noload", "ext3": "ro,noload", "ext2": "ro",
                   "xfs": "ro,norecovery", "btrfs": "ro"}
# Why a plan has no listing of a Linux file system: it would need a mount.
PLAN_DOES_NOT_MOUNT = "a plan never mounts; the run looks at them through a read-only mount"


class PartitionFacts(NamedTuple):
    """One partition: what blkid finds on it and its top-level entries (None: not listed)."""

    device: str
    fstype: str | None
    entries: tuple[str, ...] | None = None
    # Entries of NTFS's System Volume Information (None: not listed, or no such folder).
    system_entries: tuple[str, ...] | None = None
    type_guid: str | None = None  # GPT partition type, upper case
    unlisted: str | None = None  # why `entries` is None, when that is known


class DiskFacts(NamedTuple):
    """What the verdict needs to know about the resource disk."""

    device: str
    size_bytes: int
    table: str | None  # "mbr", "gpt" or None
    ours: bool  # the table carries this agent's mark
    signature: str | None  # what blkid finds on the whole disk when there is no table
    partitions: tuple[PartitionFacts, ...]
    # Our own read of the disk's start and end when there is no table (None: not read).
    contents: disks.DeviceContents | None = None


def our_table_mark(head: bytes, table: str | None) -> bool:
    """True when the partition table in a disk's first 16 KiB carries this agent's mark."""
    if table == "mbr":
        return len(head) >= 446 and struct.unpack_from("<I", head, 440)[0] == OUR_MBR_DISK_ID
    if table != "gpt":
        return False
    for sector in (512, 4096):
        header = head[sector:sector + 92]
        if header[:8] != b"EFI PART":
            continue
        entries_lba, _count, entry_size = struct.unpack_from("<QII", header, 72)
        entry = head[entries_lba * sector:entries_lba * sector + entry_size]
        if len(entry) < 128:
            return False
        name = entry[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        return name == OUR_GPT_NAME
    return False


def command_path(runner: "Runner", system_path: str) -> str:
    """A system path as a command sees it: inside the root, unless commands run chrooted."""
    return system_path if runner.chroot else str(runner.root / system_path)


def list_entries(runner: "Runner", device: str, fstype: str) -> tuple[str, ...] | None:
    """Top-level names in the filesystem on `device`, read without changing it.

    NTFS: `ntfsls -a -s` (all entries, system ones too). Linux filesystems: the mount
    where it is already mounted, or a read-only mount (no journal replay) in a private
    temporary directory, unmounted at once. None when it cannot be read.
    """
    if fstype == "ntfs":
        return ntfs_entries(runner, device)
    if fstype not in INSPECT_OPTIONS:
        return None
    for target in mounts_of_device(runner.root, device):
        return tuple(sorted(os.listdir(target)))
    if runner.chroot:
        return None
    if runner.plan:
        # A mount is a change of the machine, even read-only: the plan shows the look.
        runner.record("run", f"mount -t {fstype} -o {INSPECT_OPTIONS[fstype]} "
                      f"{command_path(runner, device)} <private directory>",
                      f"a read-only look at the files on {device} before formatting it")
        return None
    scratch = tempfile.mkdtemp(prefix="waagent-inspect-")
    try:
        mounted = runner.probe(["mount", "-t", fstype, "-o", INSPECT_OPTIONS[fstype],
                                command_path(runner, device), scratch])
        if not mounted.ok:
            log.warning("read-only mount of %s failed: %s", device, mounted.stderr.strip())
            return None
        try:
            return tuple(sorted(os.listdir(scratch)))
        finally:
            runner.probe(["umount", scratch], check=True)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(scratch)


def ntfs_entries(runner: "Runner", device: str, path: str = "/") -> tuple[str, ...] | None:
    """Names in a folder of the NTFS on `device` (`ntfsls -a -s`: system files too), read
    without mounting; None when they cannot be read."""
    if shutil.which("ntfsls") is None and not runner.chroot:
        return None
    where = ["-p", path] if path != "/" else []
    result = runner.probe(["ntfsls", "-a", "-s", *where, command_path(runner, device)])
    if not result.ok:
        log.warning("ntfsls %s %s failed: %s", device, path, result.stderr.strip())
        return None
    return tuple(line.strip() for line in result.stdout.splitlines() if line.strip())


def gather_disk_facts(runner: "Runner", device: str, *, list_files: bool = True) -> DiskFacts:
    """The verdict's facts, read now: table, our mark, blkid of the disk and partitions,
    and without a table our own read of the disk's start and end."""
    root = runner.root
    block = disks.block_device(root, device)
    head = disks.read_device_head(root, device, 32 * 1024)
    signature = None
    contents = None
    if block.partition_table is None:
        contents = disks.device_contents(root, device, block.size_bytes)
        found = disks.blkid(runner, device)
        signature = found.get("TYPE") or (f"a {found['PTTYPE']} partition table"
                                          if "PTTYPE" in found else None)
    types = disks.gpt_partition_types(head) if block.partition_table == "gpt" else {}
    # The partition whose files decide: the only one, or partition 2 of the platform's
    # layout over 2 TiB (after the Microsoft reserved partition 1).
    count = len(block.partitions)
    reserved_first = count == 2 and \
        types.get(block.partitions[0].number) == disks.MSR_PARTITION_GPT
    decisive = 1 if count == 1 else 2 if reserved_first else 0
    partitions = []
    for position, part in enumerate(block.partitions, start=1):
        fstype = disks.blkid(runner, part.device).get("TYPE") or None
        entries = system_entries = unlisted = None
        if list_files and fstype is not None and position == decisive:
            entries = list_entries(runner, part.device, fstype)
            if entries is None and runner.plan and fstype in INSPECT_OPTIONS:
                unlisted = PLAN_DOES_NOT_MOUNT
            if fstype == "ntfs" and entries is not None and SYSTEM_VOLUME_INFORMATION.lower() \
                    in (e.lower() for e in entries):
                system_entries = ntfs_entries(runner, part.device,
                                              "/" + SYSTEM_VOLUME_INFORMATION)
        partitions.append(PartitionFacts(part.device, fstype, entries, system_entries,
                                         types.get(part.number), unlisted))
    return DiskFacts(device, block.size_bytes, block.partition_table,
                     our_table_mark(head, block.partition_table), signature, tuple(partitions),
                     contents)
