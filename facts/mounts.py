"""Mounts (/proc/self/mountinfo) and active swaps (/proc/swaps), read through the Root;
where a block device is mounted."""

import contextlib
import os
import re
from pathlib import Path
from typing import NamedTuple

from facts import disks
from facts.hardware import read_text
from system.errors import ProbeFailed
from system.root import Root

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """The kernel escapes space, tab, newline and backslash in paths as \\ooo."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


class Mount(NamedTuple):
    """A mounted filesystem. `options` merges the per-mount and superblock options."""

    source: str
    target: str
    fstype: str
    options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        """True when mounted read-only."""
        return "ro" in self.options


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    """Parse /proc/<pid>/mountinfo (see proc(5)); malformed lines raise ValueError."""
    mounts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            target, mount_options = fields[4], fields[5]
            fstype, source, super_options = fields[separator + 1:separator + 4]
        except (ValueError, IndexError):
            raise ValueError(f"mountinfo line {number} is malformed: {line!r}") from None
        options = tuple(dict.fromkeys(mount_options.split(",") + super_options.split(",")))
        mounts.append(Mount(_unescape(source), _unescape(target), fstype, options))
    return tuple(mounts)


def parse_proc_mounts(text: str) -> tuple[Mount, ...]:
    """Parse /proc/mounts (fstab format), the fallback when mountinfo is missing."""
    mounts = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 4:
            raise ValueError(f"mounts line {number} is malformed: {line!r}")
        mounts.append(Mount(_unescape(fields[0]), _unescape(fields[1]), fields[2],
                            tuple(fields[3].split(","))))
    return tuple(mounts)


def mounts(root: Root) -> tuple[Mount, ...]:
    """The mounts seen by this process, in mount order (later mounts hide earlier ones)."""
    if (root / "proc/self/mountinfo").exists():
        text = read_text(root, "/proc/self/mountinfo", "mounts")
        parse = parse_mountinfo
    else:
        text = read_text(root, "/proc/mounts", "mounts")
        parse = parse_proc_mounts
    try:
        return parse(text)
    except ValueError as err:
        raise ProbeFailed(f"mounts: {err}") from None


def mount_at(root: Root, target: str) -> Mount | None:
    """The filesystem visible at `target` (the last mount there), or None."""
    wanted = target.rstrip("/") or "/"
    found = None
    for mount in mounts(root):
        if mount.target == wanted:
            found = mount
    return found


def mounts_of(root: Root, source: str) -> tuple[Mount, ...]:
    """Every mount whose source is `source` (e.g. "/dev/sdb1")."""
    return tuple(m for m in mounts(root) if m.source == source)



def mounts_of_device(root: Root, device: str) -> list[str]:
    """Real paths where a block device is mounted, by device number (mount(8) may have
    been given any name of the node)."""
    wanted = disks.device_number(root, device)
    if wanted is None:
        return []
    fstype = disks.filesystem_type(root, device)
    found = []
    for mount in mounts(root):
        # stat only candidates: a stat of a dead network mount would hang
        if mount.fstype != fstype if fstype else not mount.source.startswith("/"):
            continue
        with contextlib.suppress(OSError):
            # The source node, or the target's st_dev (btrfs shows an anonymous one).
            if (mount.source.startswith("/") and os.stat(mount.source).st_rdev == wanted) \
                    or os.stat(mount.target).st_dev == wanted:
                found.append(mount.target)
    return list(dict.fromkeys(found))


def mount_state(root: Root, partition: str, target: Path) -> str:
    """Where `partition` is mounted, seen from `target` (a real path). One of: "mounted"
    (at target), "not mounted", "no device", "elsewhere: <path>", "occupied: <what>"
    (another filesystem is mounted at target)."""
    if disks.device_number(root, partition) is None:
        return "no device"
    places = mounts_of_device(root, partition)
    if str(target) in places:
        return "mounted"
    if os.path.ismount(target):
        other = mount_at(root, str(target))
        return f"occupied: {other.source if other else 'another filesystem'}"
    if places:
        return f"elsewhere: {places[0]}"
    return "not mounted"

class Swap(NamedTuple):
    """An active swap area."""

    path: str
    type: str  # "file" or "partition"
    size_kb: int
    used_kb: int
    priority: int


def parse_swaps(text: str) -> tuple[Swap, ...]:
    """Parse /proc/swaps (header line first)."""
    swaps = []
    for number, line in enumerate(text.splitlines()[1:], 2):
        fields = line.split()
        if not fields:
            continue
        try:
            path, kind, size, used, priority = fields[:5]
            swaps.append(Swap(_unescape(path), kind, int(size), int(used), int(priority)))
        except ValueError:
            raise ValueError(f"swaps line {number} is malformed: {line!r}") from None
    return tuple(swaps)


def active_swaps(root: Root) -> tuple[Swap, ...]:
    """Active swap areas; an empty tuple means no swap is on, never "could not tell"."""
    text = read_text(root, "/proc/swaps", "active swaps")
    try:
        return parse_swaps(text)
    except ValueError as err:
        raise ProbeFailed(f"active swaps: {err}") from None


def active_swap_size_mb(root: Root, path: str) -> int | None:
    """Size in MiB of an active swap area at `path`, or None when it is not on.

    The kernel leaves the header page out of Size (a 2048 MiB file shows 2097148 KiB),
    so the size is rounded up to whole MiB.
    """
    for swap in active_swaps(root):
        if swap.path == path:
            return (swap.size_kb + 1023) // 1024
    return None
