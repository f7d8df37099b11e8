"""Hardware facts: the VM id (DMI), the kernel release, the network interfaces.

Each fact is a function of what it reads through the Root; its parser is a
separate function tested from captured text.
"""

import re
from pathlib import Path
from typing import NamedTuple

from system.errors import ProbeFailed
from system.root import Root

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ARPHRD_LOOPBACK = 772


def read_text(root: Root, system_path: str, what: str) -> str:
    """A file's text through the Root (a final link followed inside it, as a chroot reads
    it); ProbeFailed (naming `what`) when it cannot be read."""
    path = root.follow(system_path)
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ProbeFailed(f"{what}: {system_path} does not exist") from None
    except OSError as err:
        raise ProbeFailed(f"{what}: cannot read {system_path}: {err.strerror}") from None


def vm_id_from_product_uuid(text: str) -> str:
    """The platform's vmId from DMI product_uuid: first three groups byte-swapped, lower-case.

    SMBIOS stores those groups little-endian; IMDS shows the swapped form (PLATFORM.md 5).
    """
    value = text.strip()
    if not _UUID.fullmatch(value):
        raise ValueError(f"product_uuid {value!r} is not a UUID")
    groups = value.lower().split("-")
    swapped = ["".join(reversed([g[i:i + 2] for i in range(0, len(g), 2)])) for g in groups[:3]]
    return "-".join(swapped + groups[3:])


def same_vm_id(recorded: str, current: str) -> bool:
    """Whether a VM id another agent recorded names this VM, compared as waagent does
    (`is_current_instance_id`): in any case, or with its first three groups still in
    SMBIOS byte order, as some agents kept them."""
    recorded, current = recorded.strip().lower(), current.lower()
    if recorded == current:
        return True
    try:
        return vm_id_from_product_uuid(recorded) == current
    except ValueError:
        return False


def vm_id(root: Root) -> str:
    """This VM's id, keyed per-VM work (a VM from a captured image has a new one)."""
    text = read_text(root, "/sys/class/dmi/id/product_uuid", "VM id")
    try:
        return vm_id_from_product_uuid(text)
    except ValueError as err:
        raise ProbeFailed(f"VM id: {err}") from None


def kernel_release(root: Root) -> str:
    """The running kernel's release string (`uname -r`)."""
    release = read_text(root, "/proc/sys/kernel/osrelease", "kernel release").strip()
    if not release:
        raise ProbeFailed("kernel release: /proc/sys/kernel/osrelease is empty")
    return release


def kernel_version(release: str) -> tuple[int, ...]:
    """The leading numbers of a kernel release: "2.6.32-504.el6" -> (2, 6, 32)."""
    match = re.match(r"^(\d+(?:\.\d+)*)", release.strip())
    if not match:
        raise ValueError(f"kernel release {release!r} does not start with a version number")
    return tuple(int(part) for part in match.group(1).split("."))


def kernel_older_than(release: str, version: tuple[int, ...]) -> bool:
    """True when the release is before `version`, e.g. (2, 6, 37) for the NUMA rule."""
    have = kernel_version(release)
    width = max(len(have), len(version))
    return have + (0,) * (width - len(have)) < version + (0,) * (width - len(version))


class Nic(NamedTuple):
    """A network interface from /sys/class/net."""

    name: str
    mac: str | None
    is_virtual: bool  # no backing device: bridges, veth, tun, bonds, lo
    is_loopback: bool
    operstate: str | None = None


def nics(root: Root) -> tuple[Nic, ...]:
    """Network interfaces, sorted by name."""
    base = root / "sys/class/net"
    try:
        entries = sorted(base.iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        raise ProbeFailed("NICs: /sys/class/net does not exist (is sysfs mounted?)") from None
    except OSError as err:
        raise ProbeFailed(f"NICs: cannot list /sys/class/net: {err.strerror}") from None
    return tuple(_nic(entry) for entry in entries)


def _nic(path: Path) -> Nic:
    mac = _optional(path / "address")
    kind = _optional(path / "type")
    loopback = path.name == "lo" or kind == str(_ARPHRD_LOOPBACK)
    # A physical (or VMBus/PCI) NIC has a device link; virtual ones live under devices/virtual.
    virtual = not (path / "device").exists() or "/virtual/" in _link_target(path)
    return Nic(
        name=path.name,
        mac=mac.lower() if mac and mac != "00:00:00:00:00:00" else None,
        is_virtual=virtual or loopback,
        is_loopback=loopback,
        operstate=_optional(path / "operstate"),
    )


def _optional(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _link_target(path: Path) -> str:
    try:
        return str(path.readlink()) if path.is_symlink() else ""
    except OSError:
        return ""
