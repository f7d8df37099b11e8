"""Tasks of the 'disk' area: the resource disk, partition -> mkfs -> mount -> README -> swap file.

The resource disk is scratch space the platform hands out NTFS-formatted with one
partition and DATALOSS_WARNING_README.txt (PLATFORM.md 6). Nothing here may lose
data, so every destructive step (writing a partition table, mkfs) first asks
`disk_verdict`, the one place that decides, from facts gathered just before, whether
the disk may be changed:
- blank, on positive evidence only: no MBR or GPT header (nor a backup GPT header at
  the end), no signature blkid or our superblock reader finds at the usual partition
  starts, and the first 4 MiB and the last MiB read as zeros (a zeroed table over a file
  system at 1 MiB is a damaged disk, not a blank one);
- the platform's fresh disk: one NTFS partition (or, over 2 TiB, GPT with the Microsoft
  reserved partition 1 and the NTFS partition 2, as cloud-init's can_dev_be_reformatted
  knows it) holding only the README and `System Volume Information` with nothing but the
  entries Windows leaves there (read with `ntfsls` from ntfs-3g: no mount, no FUSE, no
  ntfs3 module);
- ours: one partition carrying the configured filesystem (nothing destructive is
  needed then), or carrying another Linux filesystem with nothing but our own files
  (README, lost+found, swapfile), or the still-empty partition of a table this agent
  wrote (marked by MBR disk id OUR_MBR_DISK_ID or GPT partition name OUR_GPT_NAME,
  so a run killed between partitioning and mkfs converges without guessing).
Anything else is refused with the reason (UnsafeOperation); a probe that fails
raises ProbeFailed and nothing is touched (blkid's "nothing found" counts only for a
device just read). A plan never mounts: where the run would look at a Linux file system
through a read-only mount, the plan shows that look instead. The area is not critical:
a refusal is reported in the run report and the rest of provisioning goes on. The facts
the verdict decides from are read by facts/resource_disk.py.

Paths: device and mount paths are system paths, opened as `root / path`. Mounts and
swaps are kernel-global, so /proc reports real paths (`<root>/mnt/resource`); they are
compared with `root / path`, and mounted devices are recognised by device number,
not by the name given to mount(8). /etc/fstab is never edited: the task re-mounts
the disk at each boot.
"""

import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from facts import disks, mounts
from facts.resource_disk import (
    OUR_GPT_NAME,
    OUR_MBR_DISK_ID,
    PLAN_DOES_NOT_MOUNT,
    SYSTEM_VOLUME_INFORMATION,
    DiskFacts,
    command_path,
    gather_disk_facts,
)
from graph.context import UNREAD, Context
from graph.uptodate import Inputs, Probe
from system.errors import AgentError, CommandFailed, ProbeFailed, UnsafeOperation
from tasks import TaskDict, inputs

log = logging.getLogger("waagent.disk")

FORMAT = "ResourceDisk.Format"
FILESYSTEM = "ResourceDisk.Filesystem"
MOUNT_POINT = "ResourceDisk.MountPoint"
MOUNT_OPTIONS = "ResourceDisk.MountOptions"
ENABLE_SWAP = "ResourceDisk.EnableSwap"
SWAP_SIZE_MB = "ResourceDisk.SwapSizeMB"
SWAP_ENCRYPTION = "ResourceDisk.EnableSwapEncryption"

README_NAME = "DATALOSS_WARNING_README.txt"
SWAPFILE_NAME = "swapfile"
README_TEXT = """\
WARNING: THIS IS A TEMPORARY DISK.

Any data stored on this drive is SUBJECT TO LOSS and THERE IS NO WAY TO RECOVER IT.

Please do not use this disk for storing any personal or application data.

For additional details please refer to the documentation at:
https://learn.microsoft.com/azure/virtual-machines/managed-disks-overview#temporary-disk
"""

LINUX_PARTITION_GPT = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
# MBR addresses 2^32 sectors of 512 bytes; larger disks get GPT.
MBR_LIMIT_BYTES = 2 * 1024**4

# Entries of the platform's fresh NTFS disk (lower case): the README and NTFS's own
# metadata files, which `ntfsls -s` shows. Not $RECYCLE.BIN: it holds what a user deleted.
NTFS_FRESH_ENTRIES = frozenset(name.lower() for name in (
    README_NAME, SYSTEM_VOLUME_INFORMATION, "$AttrDef", "$BadClus", "$Bitmap", "$Boot",
    "$Extend", "$LogFile", "$MFT", "$MFTMirr", "$Secure", "$UpCase", "$Volume", ".", ".."))
# What Windows leaves in System Volume Information of a volume nobody used (lower case);
# anything else there (shadow copies, backups, a dedup store) may be data.
SYSTEM_VOLUME_FRESH_ENTRIES = frozenset(name.lower() for name in (
    ".", "..", "IndexerVolumeGuid", "WPSettings.dat", "tracking.log",
    "MountPointManagerRemoteDatabase"))
# Entries this agent (or mkfs) puts on the disk's own filesystem.
OUR_ENTRIES = frozenset((README_NAME, SWAPFILE_NAME, "lost+found"))
LINUX_FILESYSTEMS = ("ext4", "ext3", "ext2", "xfs", "btrfs")

# Bounds for waiting on the kernel and udev (seconds).
DISK_APPEAR_SECONDS = 10.0
PARTITION_NODE_SECONDS = 15.0
POLL_SECONDS = 0.1


# ---------------------------------------------------------------- the verdict

def disk_verdict(disk: DiskFacts, filesystem: str) -> tuple[bool, str]:
    """May the resource disk be partitioned/formatted for `filesystem`? (safe, reason).

    The one home of the data-safety rule (module docstring); anything not positively
    known to hold no data is refused.
    """
    if disk.table is None:
        return blank_verdict(disk)
    if is_reserved_plus_ntfs(disk):
        reserved, part = disk.partitions
        if reserved.fstype is not None:
            return False, (f"{reserved.device} holds {reserved.fstype}; in the platform's "
                           "layout of disks over 2 TiB partition 1 is the empty Microsoft "
                           f"reserved partition; set {FORMAT}=n to keep it")
        if part.fstype != "ntfs":
            return False, (f"{part.device} holds {part.fstype or 'no signature blkid knows'}, "
                           "not the platform's NTFS; this agent never formats over it")
    elif len(disk.partitions) != 1:
        shown = ", ".join(part.device for part in disk.partitions)
        return False, (f"{disk.device} has {len(disk.partitions)} partitions ({shown}); the "
                       "platform's fresh resource disk has exactly one (or, over 2 TiB, the "
                       "Microsoft reserved partition and the NTFS one); set "
                       f"{FORMAT}=n to keep them")
    else:
        part = disk.partitions[0]
    if part.fstype == filesystem:
        return True, f"{part.device} already carries {filesystem}"
    if part.fstype is None:
        if disk.ours:
            return True, f"{part.device} is the still-empty partition of a table this agent wrote"
        return False, (f"{part.device} has no signature blkid knows, in a partition table this "
                       "agent did not write: its contents are unknown")
    if part.fstype not in ("ntfs", *LINUX_FILESYSTEMS):
        return False, f"{part.device} holds {part.fstype}, which this agent never formats over"
    if part.entries is None:
        return False, (f"the files on {part.device} ({part.fstype}) could not be listed"
                       + (f": {part.unlisted}" if part.unlisted else ""))
    if part.fstype == "ntfs":
        others = sorted(e for e in part.entries if e.lower() not in NTFS_FRESH_ENTRIES)
        if SYSTEM_VOLUME_INFORMATION.lower() in (e.lower() for e in part.entries):
            if part.system_entries is None:
                return False, (f"{SYSTEM_VOLUME_INFORMATION} on {part.device} (ntfs) could not "
                               "be listed: its contents are unknown; look at it, or set "
                               f"{FORMAT}=n")
            others.extend(f"{SYSTEM_VOLUME_INFORMATION}/{e}" for e in sorted(part.system_entries)
                          if e.lower() not in SYSTEM_VOLUME_FRESH_ENTRIES)
        if not others:
            return True, f"{part.device} is the platform's fresh NTFS disk (only {README_NAME})"
    else:
        others = sorted(e for e in part.entries if e not in OUR_ENTRIES)
        if not others:
            return True, f"{part.device} ({part.fstype}) holds nothing but this agent's files"
    shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
    return False, (f"{part.device} ({part.fstype}) holds {len(others)} entries besides "
                   f"{README_NAME}: {shown}; move them away, or set "
                   f"{FILESYSTEM}={part.fstype} or {FORMAT}=n")


def blank_verdict(disk: DiskFacts) -> tuple[bool, str]:
    """The verdict on a disk without a partition table: blank only on positive evidence."""
    if disk.signature:
        return False, (f"{disk.device} holds {disk.signature} on the whole disk, without "
                       f"the platform's partition table; set {FORMAT}=n to keep it")
    if disk.contents is None or disk.contents.checked_bytes == 0:
        return False, (f"{disk.device} has no partition table, and its first sectors were "
                       "not read: its contents are unknown")
    if disk.contents.found:
        found = disk.contents.found
        shown = "; ".join(found[:5]) + ("; ..." if len(found) > 5 else "")
        return False, (f"{disk.device} has no partition table this agent can read, but holds "
                       f"{shown}: its partition table may be damaged. Recover what it "
                       f"holds (e.g. testdisk), or, if it is scratch, wipe it yourself "
                       f"(wipefs --all {disk.device}, and zero its first and last MiBs); "
                       f"or set {FORMAT}=n")
    checked_mib = disk.contents.checked_bytes / 1024**2
    return True, (f"{disk.device} is blank: no partition table, no signature, "
                  f"{checked_mib:g} MiB of its start and end read as zeros")


def is_reserved_plus_ntfs(disk: DiskFacts) -> bool:
    """The layout of the platform's disks over 2 TiB: GPT, partition 1 Microsoft reserved,
    partition 2 the data (NTFS when fresh)."""
    return (disk.table == "gpt" and len(disk.partitions) == 2
            and disk.partitions[0].type_guid == disks.MSR_PARTITION_GPT)


def require_safe(ctx: Context, device: str, filesystem: str) -> tuple[DiskFacts, str]:
    """Facts of a disk the verdict allows changing, and why; UnsafeOperation with the reason
    otherwise. A plan, which never mounts, plans what the run decides after its look."""
    facts = gather_disk_facts(ctx.run, device)
    safe, reason = disk_verdict(facts, filesystem)
    if not safe and ctx.run.plan and any(p.unlisted == PLAN_DOES_NOT_MOUNT
                                         for p in facts.partitions):
        return facts, "if it holds nothing but this agent's files: the run looks first"
    if not safe:
        raise UnsafeOperation(f"refusing to partition or format the resource disk: {reason}")
    log.debug("resource disk verdict: %s", reason)
    return facts, reason


# ---------------------------------------------------------------- finding the disk

def resource_disk(ctx: Context) -> str | None:
    """The resource disk (system path), waiting up to DISK_APPEAR_SECONDS when the VM's
    storage controller is there but the disk is not yet; memoized for the run."""
    if ctx.state.disk_device is UNREAD:
        ctx.state.disk_device = wait_for_resource_disk(ctx, DISK_APPEAR_SECONDS)
    return ctx.state.disk_device


def present_resource_disk(ctx: Context) -> str | None:
    """The resource disk if it is there now (no waiting): what up-to-date probes use.

    A VM without a resource disk is up to date, not "to do" at every boot; a disk that
    comes late is waited for by the actions of the first boot (and seen at the next)."""
    if ctx.state.disk_present is UNREAD:
        waited_for = ctx.state.disk_device
        ctx.state.disk_present = (waited_for if waited_for is not UNREAD and waited_for
                                  else wait_for_resource_disk(ctx, 0))
    return ctx.state.disk_present


def wait_for_resource_disk(ctx: Context, seconds: float,
                           sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Poll for the resource disk with a bound; None at once when the root has no /sys
    (an image or a sandbox: no hardware) or the VM has no VMBus (not on Hyper-V)."""
    if not (ctx.root / "sys").exists():
        return None
    deadline = time.monotonic() + seconds
    while True:
        device = disks.resource_disk_device(ctx.root)
        if device is not None and (ctx.root / device).exists():
            return device
        no_vmbus = not (ctx.root / "sys/bus/vmbus/devices").is_dir()
        if no_vmbus and not (ctx.root / disks.RESOURCE_DISK_LINK).is_symlink():
            return None
        if time.monotonic() >= deadline:
            return None
        sleep(POLL_SECONDS)


# ---------------------------------------------------------------- options

class DiskOptions(NamedTuple):
    """The ResourceDisk.* options as the tasks use them."""

    format: bool
    filesystem: str
    mount_point: str
    mount_options: str | None
    swap_mb: int  # 0: no swap
    encrypt_swap: bool

    @classmethod
    def of(cls, ctx: Context) -> "DiskOptions":
        conf = ctx.conf
        swap = (conf.number(SWAP_SIZE_MB) or 0) if conf.flag(ENABLE_SWAP) else 0
        return cls(conf.flag(FORMAT), conf.text(FILESYSTEM) or "ext4",
                   "/" + (conf.text(MOUNT_POINT) or "/mnt/resource").strip("/"),
                   conf.text(MOUNT_OPTIONS) or None, swap if conf.flag(FORMAT) else 0,
                   conf.flag(SWAP_ENCRYPTION))


# ---------------------------------------------------------------- partition

def partition_problem(ctx: Context) -> str | None:
    """Why the disk is not partitioned as wanted (one partition, not the fresh NTFS), or None."""
    if not DiskOptions.of(ctx).format:
        return None
    device = present_resource_disk(ctx)
    if device is None:
        return None  # nothing to do without a disk
    block = disks.block_device(ctx.root, device)
    if block.partition_table is None or len(block.partitions) != 1:
        return f"{device}: {len(block.partitions)} partitions, want one"
    if disks.filesystem_type(ctx.root, block.partitions[0].device) == "ntfs":
        return f"{device} is still NTFS-partitioned"
    return None


def partition_script(size_bytes: int) -> str:
    """sfdisk input for one Linux partition over the disk: MBR up to 2 TiB, GPT above."""
    if size_bytes <= MBR_LIMIT_BYTES:
        return f"label: dos\nlabel-id: 0x{OUR_MBR_DISK_ID:08x}\ntype=83\n"
    return f'label: gpt\ntype={LINUX_PARTITION_GPT}, name="{OUR_GPT_NAME}"\n'


def disk_to_work_on(ctx: Context, doing: str) -> str | None:
    """The resource disk an action works on (waiting for a late one), or None, said in the
    log, when ResourceDisk.Format=n or the VM has none."""
    if not DiskOptions.of(ctx).format:
        log.info("resource disk: %s=n, not %s", FORMAT, doing)
        return None
    device = resource_disk(ctx)
    if device is None:
        log.info("no resource disk: no %s", doing)
    return device


def ensure_partitioned(ctx: Context) -> None:
    """Give the resource disk one Linux partition when it is blank or the fresh NTFS disk."""
    opts = DiskOptions.of(ctx)
    device = disk_to_work_on(ctx, "partitioning")
    if device is None:
        return
    facts, reason = require_safe(ctx, device, opts.filesystem)
    fresh_ntfs = any(part.fstype == "ntfs" for part in facts.partitions)
    if facts.table is not None and not fresh_ntfs:
        return  # already one partition of ours
    busy = [m for p in facts.partitions for m in mounts.mounts_of_device(ctx.root, p.device)]
    if busy:
        raise UnsafeOperation(f"refusing to partition {device}: it is mounted at "
                              f"{', '.join(busy)}; unmount it first")
    script = partition_script(facts.size_bytes)
    ctx.run.change(["sfdisk", "--quiet", "--wipe", "always", "--wipe-partitions", "always",
                    command_path(ctx.run, device)], input=script,
                   why=f"one {'MBR' if 'dos' in script else 'GPT'} partition on the resource "
                       f"disk: {reason}")
    reread_partition_table(ctx, device)
    log.info("changed: %s partitioned (%s)", device, reason)


def reread_partition_table(ctx: Context, device: str) -> None:
    """Make the kernel (and udev) see the new table, then wait for partition 1's node.

    sfdisk asks the kernel itself, but that is not always heeded (some kernels ignore
    BLKRRPART on loop devices), so blockdev and partx follow, and partprobe when
    partition 1 is still missing.
    """
    if ctx.run.plan:
        return
    real = command_path(ctx.run, device)
    # Both, always: a partition 1 of the old table (the platform's NTFS) would otherwise
    # look like the new one; partx updates what BLKRRPART ignored (loop devices).
    ctx.run.change(["blockdev", "--rereadpt", real], check=False,
                   why="re-read the partition table")
    ctx.run.change(["partx", "--update", real], check=False, why="re-read the partition table")
    if disks.first_partition(ctx.root, device) is None and shutil.which("partprobe"):
        ctx.run.change(["partprobe", real], check=False, why="re-read the partition table")
    if shutil.which("udevadm"):
        ctx.run.probe(["udevadm", "settle", "--timeout", str(int(PARTITION_NODE_SECONDS))])
    deadline = time.monotonic() + PARTITION_NODE_SECONDS
    while True:
        part = disks.first_partition(ctx.root, device)
        if part is not None and disks.device_number(ctx.root, part.device) is not None \
                and disks.node_readable(ctx.root, part.device):
            return
        if time.monotonic() >= deadline:
            raise CommandFailed(f"{device}: partition 1 did not appear "
                                f"(sysfs: {'yes' if part else 'no'}, node: no) within "
                                f"{PARTITION_NODE_SECONDS:.0f} s of re-reading the table")
        time.sleep(POLL_SECONDS)


# ---------------------------------------------------------------- mkfs

def mkfs_command(filesystem: str, device: str) -> list[str]:
    """The mkfs argv for a filesystem; forced, because the verdict already decided."""
    force = {"xfs": "-f", "btrfs": "-f"}.get(filesystem, "-F")
    return [f"mkfs.{filesystem}", "-q", force, device]


def partition_to_check(ctx: Context) -> tuple[disks.Partition | None, str | None]:
    """Partition 1 of the resource disk for a probe: (partition, None); (None, None) when
    there is nothing to check (Format=n, no disk); (None, problem) when it is missing."""
    if not DiskOptions.of(ctx).format:
        return None, None
    device = present_resource_disk(ctx)
    if device is None:
        return None, None  # nothing to do without a disk
    part = disks.first_partition(ctx.root, device)
    return (part, None) if part is not None else (None, f"{device} has no partition 1")


def mkfs_problem(ctx: Context) -> str | None:
    """Why partition 1 does not carry the configured filesystem, or None."""
    opts = DiskOptions.of(ctx)
    part, problem = partition_to_check(ctx)
    if part is None:
        return problem
    found = disks.filesystem_type(ctx.root, part.device)
    if found != opts.filesystem:
        return f"{part.device} holds {found or 'no filesystem'}, want {opts.filesystem}"
    return None


def ensure_filesystem(ctx: Context) -> None:
    """mkfs.<Filesystem> on partition 1, when the verdict allows and it is not there yet."""
    opts = DiskOptions.of(ctx)
    device = disk_to_work_on(ctx, "formatting")
    if device is None:
        return
    facts, reason = require_safe(ctx, device, opts.filesystem)
    if facts.table is None or not facts.partitions or is_reserved_plus_ntfs(facts):
        if ctx.run.plan:
            ctx.run.record("run", f"mkfs.{opts.filesystem} {device} partition 1",
                           "after partitioning")
            return
        raise ProbeFailed(f"{device} has no partition of this agent's to format; run "
                          "disk:partition first")
    part = facts.partitions[0]
    if part.fstype == opts.filesystem:
        return
    # An empty filesystem of ours in another type: free it (only our swap, our mount) first.
    for target in mounts.mounts_of_device(ctx.root, part.device):
        swapoff_ours(ctx, Path(target) / SWAPFILE_NAME)
        ctx.run.change(["umount", target], why=f"reformat {part.device} as {opts.filesystem}")
    ctx.run.change(mkfs_command(opts.filesystem, command_path(ctx.run, part.device)),
                   why=f"format the resource disk ({reason})")
    log.info("changed: %s formatted %s (%s)", part.device, opts.filesystem, reason)


# ---------------------------------------------------------------- mount

def mount_target(ctx: Context) -> Path:
    """The mount point's real path (what /proc/self/mountinfo shows)."""
    return ctx.root / DiskOptions.of(ctx).mount_point


def mount_problem(ctx: Context) -> str | None:
    """Why the resource disk is not mounted at the mount point, or None."""
    opts = DiskOptions.of(ctx)
    part, problem = partition_to_check(ctx)
    if part is None:
        return problem
    state = mounts.mount_state(ctx.root, part.device, mount_target(ctx))
    return None if state == "mounted" else f"{part.device} at {opts.mount_point}: {state}"


def ensure_mounted(ctx: Context) -> None:
    """Mount partition 1 at MountPoint with MountOptions; remount when it already is there
    (this action runs when the options changed), move it when mounted elsewhere."""
    opts = DiskOptions.of(ctx)
    device = disk_to_work_on(ctx, "mounting")
    if device is None:
        return
    part = disks.first_partition(ctx.root, device)
    if part is None:
        if ctx.run.plan:
            ctx.run.record("run", f"mount {device} partition 1 {opts.mount_point}",
                           "after partitioning")
            return
        raise ProbeFailed(f"{device} has no partition 1 to mount")
    target = mount_target(ctx)
    state = mounts.mount_state(ctx.root, part.device, mount_target(ctx))
    options = opts.mount_options or "defaults"
    if state == "no device":
        raise ProbeFailed(f"cannot mount {part.device}: no such device node")
    if state.startswith("occupied"):
        raise UnsafeOperation(f"cannot mount {part.device} at {opts.mount_point}: "
                              f"{state.split(': ', 1)[1]} is mounted there; unmount it or "
                              f"change {MOUNT_POINT}")
    if state == "mounted":
        ctx.run.change(["mount", "-o", f"remount,{options}", str(target)],
                       why=f"mount options {options}")
        log.info("changed: %s remounted with %s", opts.mount_point, options)
        return
    if state.startswith("elsewhere"):
        old = state.split(": ", 1)[1]
        swapoff_ours(ctx, Path(old) / SWAPFILE_NAME)
        ctx.run.change(["umount", old], why=f"move the resource disk to {opts.mount_point}")
    ctx.fs.mkdir(target, why="resource disk mount point")
    fstype = disks.filesystem_type(ctx.root, part.device)
    argv = ["mount", *(["-t", fstype] if fstype else []), "-o", options,
            command_path(ctx.run, part.device), str(target)]
    ctx.run.change(argv, why=f"mount the resource disk at {opts.mount_point}")
    log.info("changed: %s mounted at %s (%s)", part.device, opts.mount_point, options)


# ---------------------------------------------------------------- README

def readme_problem(ctx: Context) -> str | None:
    """Why the dataloss README is missing or stale on the mounted disk, or None."""
    if not DiskOptions.of(ctx).format or present_resource_disk(ctx) is None:
        return None
    if mount_problem(ctx) is not None:
        return "resource disk not mounted"
    path = mount_target(ctx) / README_NAME
    try:
        return None if path.read_text() == README_TEXT else f"{README_NAME} differs"
    except FileNotFoundError:
        return f"no {README_NAME}"


def ensure_readme(ctx: Context) -> None:
    """Write DATALOSS_WARNING_README.txt at the root of the mounted resource disk."""
    if not DiskOptions.of(ctx).format or resource_disk(ctx) is None:
        log.info("no resource disk mounted by this agent: no README")
        return
    problem = mount_problem(ctx)
    if problem is not None:
        if ctx.run.plan:
            ctx.run.record("write", f"{DiskOptions.of(ctx).mount_point}/{README_NAME}",
                           "after mounting")
            return
        raise ProbeFailed(f"not writing {README_NAME}: {problem}")
    ctx.fs.write(mount_target(ctx) / README_NAME, README_TEXT, mode=0o644,
                 why="dataloss warning on the resource disk")


# ---------------------------------------------------------------- swap file

def swapfile_path(ctx: Context) -> Path:
    """Our swap file's real path (what /proc/swaps shows)."""
    return mount_target(ctx) / SWAPFILE_NAME


def crypt_name(swapfile: Path) -> str:
    """The dm-crypt name of an encrypted swap file: device-mapper names are kernel-global,
    so the name is derived from the file's real path."""
    return "waagent-swap-" + hashlib.sha256(str(swapfile).encode()).hexdigest()[:8]


def active_swap_mb(ctx: Context, swapfile: Path) -> int | None:
    """Size in MiB of our swap (the file, or its dm-crypt device), None when not active."""
    if not ctx.root.is_host and not (ctx.root / "proc/swaps").exists():
        return None  # an offline image: its kernel is not running, nothing is swapped on
    size = mounts.active_swap_size_mb(ctx.root, str(swapfile))
    if size is not None:
        return size
    mapper = disks.device_number(ctx.root, f"/dev/mapper/{crypt_name(swapfile)}")
    if mapper is None:
        return None
    for swap in mounts.active_swaps(ctx.root):
        with contextlib.suppress(OSError):
            if os.stat(swap.path).st_rdev == mapper:
                return (swap.size_kb + 1023) // 1024
    return None


def swap_problem(ctx: Context) -> str | None:
    """Why our swap is not as configured (active at SwapSizeMB, or gone when off), or None."""
    opts = DiskOptions.of(ctx)
    swapfile = swapfile_path(ctx)
    active = active_swap_mb(ctx, swapfile)
    if opts.swap_mb == 0:
        if active is not None:
            return f"swap active {active} MB at {swapfile}, want none"
        return None
    if present_resource_disk(ctx) is None:
        return None
    if active != opts.swap_mb:
        return f"swap active {active or 0} MB, want {opts.swap_mb} MB"
    return None


def swapoff_ours(ctx: Context, swapfile: Path) -> None:
    """Turn off our swap file (or its dm-crypt device) only; never `swapoff -a`."""
    if not ctx.root.is_host and not (ctx.root / "proc/swaps").exists():
        return  # an offline image: nothing of it is swapped on
    if mounts.active_swap_size_mb(ctx.root, str(swapfile)) is not None:
        ctx.run.change(["swapoff", str(swapfile)], why="turn off our swap file")
    name = crypt_name(swapfile)
    mapper = f"/dev/mapper/{name}"
    if disks.device_number(ctx.root, mapper) is not None:
        if active_swap_mb(ctx, swapfile) is not None:
            ctx.run.change(["swapoff", command_path(ctx.run, mapper)],
                           why="turn off our encrypted swap")
        ctx.run.change(["cryptsetup", "close", name], why="close our encrypted swap")


def ensure_swap(ctx: Context) -> None:
    """Our swap file at <MountPoint>/swapfile: SwapSizeMB, 0600, without holes, active;
    removed when swap is off. Only our own file is ever swapped off."""
    opts = DiskOptions.of(ctx)
    swapfile = swapfile_path(ctx)
    if opts.swap_mb == 0 or resource_disk(ctx) is None:
        swapoff_ours(ctx, swapfile)
        if mount_problem(ctx) is None:
            ctx.fs.remove(swapfile, why="swap is off")
        return
    problem = mount_problem(ctx)
    if problem is not None:
        if ctx.run.plan:
            ctx.run.record("run", f"swap file {swapfile}", "after mounting")
            return
        raise ProbeFailed(f"no swap file: {problem}")
    if active_swap_mb(ctx, swapfile) == opts.swap_mb:
        return
    if opts.encrypt_swap:
        missing = encryption_missing(ctx)
        if missing:
            # Fail closed: plain swap would write memory to the disk in clear.
            raise AgentError(f"swap not enabled: {SWAP_ENCRYPTION}=y but {missing}; "
                             f"install cryptsetup and load dm_crypt, or set {SWAP_ENCRYPTION}=n")
    swapoff_ours(ctx, swapfile)
    # A file left by an interrupted run may have holes or a stale size: start over.
    ctx.fs.remove(swapfile, why=f"re-create the swap file at {opts.swap_mb} MB")
    fstype = disks.filesystem_type(ctx.root, resource_partition(ctx))
    allocate_swapfile(ctx, swapfile, opts.swap_mb, fstype)
    if opts.encrypt_swap:
        import secrets  # with base64 and hmac: only encrypted swap needs it

        name = crypt_name(swapfile)
        # Plain dm-crypt with a throw-away random key (on stdin): the swap is unreadable
        # after power-off, and nothing needs to remember the key.
        ctx.run.change(["cryptsetup", "open", "--type", "plain", "--cipher", "aes-xts-plain64",
                        "--key-size", "512", "--key-file", "-", str(swapfile), name],
                       secret_input=secrets.token_hex(64), why="encrypt the swap file")
        target = command_path(ctx.run, f"/dev/mapper/{name}")
    else:
        target = str(swapfile)
    ctx.run.change(["mkswap", target], why="format the swap file")
    ctx.run.change(["swapon", target], why=f"{opts.swap_mb} MB swap on the resource disk")
    log.info("changed: swap on, %s MB at %s%s", opts.swap_mb, ctx.root.system_path(swapfile),
             " (encrypted)" if target != str(swapfile) else "")


def encryption_missing(ctx: Context) -> str | None:
    """What keeps dm-crypt swap from working here, or None."""
    if not ctx.run.chroot and shutil.which("cryptsetup") is None:
        return "cryptsetup is not installed"
    try:
        devices = (ctx.root / "proc/devices").read_text()
    except OSError:
        return "/proc/devices cannot be read"
    if "device-mapper" not in devices:
        return "the kernel has no device-mapper (dm_mod not loaded)"
    return None


def resource_partition(ctx: Context) -> str:
    """Partition 1 of the resource disk (the disk is known to be mounted by now)."""
    device = resource_disk(ctx)
    part = disks.first_partition(ctx.root, device) if device else None
    if part is None:
        raise ProbeFailed("resource disk partition 1 went away")
    return part.device


def allocate_swapfile(ctx: Context, swapfile: Path, size_mb: int, fstype: str | None) -> None:
    """Create a 0600 file of size_mb MiB with every block allocated (swapon refuses holes)."""
    ctx.fs.write(swapfile, b"", mode=0o600, why="swap file (empty, private before sizing)")
    if fstype == "btrfs":
        # btrfs swap files must be NOCOW, set while the file is still empty.
        ctx.run.change(["chattr", "+C", str(swapfile)], why="btrfs swap file without CoW")
    allocated = ctx.run.change(["fallocate", "--length", f"{size_mb}MiB", str(swapfile)],
                               check=False, why=f"allocate {size_mb} MB swap file")
    if not allocated.ok:
        # ext2/ext3 have no fallocate: write the zeros instead.
        ctx.run.change(["dd", "if=" + command_path(ctx.run, "/dev/zero"), f"of={swapfile}", "bs=1M",
                        f"count={size_mb}", "conv=fsync", "status=none"],
                       why=f"write {size_mb} MB swap file")


# ---------------------------------------------------------------- the tasks

def _guarded(probe: Callable[[Context], str | None], ctx: Context) -> Callable[[], str | None]:
    """A probe that cannot read the state says so (the task then runs and its action,
    re-checking, reports the failure) instead of crashing doit's up-to-date check."""
    def check() -> str | None:
        try:
            return probe(ctx)
        except (AgentError, OSError) as err:
            return f"cannot tell: {err}"
    return check


def _inputs(name: str, ctx: Context, *options: str) -> Inputs:
    return Inputs(f"disk:{name}", lambda: ctx.conf.subset(options))


def generate(ctx: Context) -> Iterator[TaskDict]:
    """partition -> mkfs -> mount -> readme -> swapfile; each reruns on its own options or
    when the real state disagrees. None when System Center VMM provisions this VM."""
    if inputs.mode(ctx) == "scvmm":
        return
    opts = DiskOptions.of(ctx)
    steps: list[tuple[str, str, Callable[[Context], None], Callable[[Context], str | None],
                      tuple[str, ...]]] = [
        ("partition", "one partition on the resource disk (MBR; GPT over 2 TiB)",
         ensure_partitioned, partition_problem, (FORMAT,)),
        ("mkfs", f"{opts.filesystem} on the resource disk, only if it holds no data",
         ensure_filesystem, mkfs_problem, (FORMAT, FILESYSTEM)),
        ("mount", f"mount the resource disk at {opts.mount_point}",
         ensure_mounted, mount_problem, (FORMAT, MOUNT_POINT, MOUNT_OPTIONS)),
        ("readme", f"{README_NAME} on the resource disk",
         ensure_readme, readme_problem, (FORMAT, MOUNT_POINT)),
        ("swapfile", f"{opts.swap_mb} MB swap file on the resource disk" if opts.swap_mb
         else "no swap file on the resource disk",
         ensure_swap, swap_problem,
         (FORMAT, MOUNT_POINT, ENABLE_SWAP, SWAP_SIZE_MB, SWAP_ENCRYPTION)),
    ]
    previous = None
    for name, doc, action, probe, options in steps:
        yield {
            "name": name,
            "doc": doc,
            "actions": [(action, [ctx])],
            "task_dep": [f"disk:{previous}"] if previous else [],
            "uptodate": [_inputs(name, ctx, *options), Probe(f"disk:{name}", _guarded(probe, ctx))],
        }
        previous = name
