"""The distribution in the root: identity, family, init system, DHCP client, sshd unit, cloud-init.

Everything is read from files in the root, never from the running host's tools,
so it works on a mounted image as well as on `/`.
Per-family differences that are facts live in one table, FAMILIES.
"""

import os
import re
from pathlib import Path
from typing import NamedTuple

from system.errors import ProbeFailed
from system.root import Root

_OS_RELEASE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Search order of os-release(5), then the files older releases used instead.
_OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
_LEGACY_RELEASE = (
    ("/etc/redhat-release", "rhel"),
    ("/etc/SuSE-release", "sles"),
    ("/etc/debian_version", "debian"),
)


class FamilyFacts(NamedTuple):
    """What differs between distribution families, as facts tasks read."""

    sshd_service: str  # the unit that runs sshd
    admin_group: str  # the group that has sudo rights by default
    network_config: str  # where the distribution keeps interface configuration
    # The agent's unit: images and docs restart it by this name.
    agent_service: str = "waagent"


FAMILIES: dict[str, FamilyFacts] = {
    "debian": FamilyFacts("ssh", "sudo", "/etc/network/interfaces", "walinuxagent"),
    "rhel": FamilyFacts("sshd", "wheel", "/etc/sysconfig/network-scripts"),
    "suse": FamilyFacts("sshd", "wheel", "/etc/sysconfig/network"),
    "coreos": FamilyFacts("sshd", "wheel", "/etc/systemd/network"),
    "unknown": FamilyFacts("sshd", "wheel", "/etc/systemd/network"),
}

# Distribution ids (os-release ID or ID_LIKE words) of each family, most specific first.
_FAMILY_IDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("coreos", frozenset({"flatcar", "coreos", "fedora-coreos", "rhcos"})),
    ("debian", frozenset({"debian", "ubuntu", "raspbian", "linuxmint", "devuan", "kali"})),
    ("suse", frozenset({"sles", "sled", "suse", "opensuse", "opensuse-leap",
                        "opensuse-tumbleweed", "sle-micro", "sle_hpc"})),
    ("rhel", frozenset({"rhel", "centos", "fedora", "almalinux", "rocky", "ol", "amzn",
                        "mariner", "azurelinux", "cloudlinux", "scientific"})),
)


class Distro(NamedTuple):
    """The distribution of the root and the facts the tasks need from it."""

    id: str
    id_like: tuple[str, ...]
    version: str
    name: str
    family: str  # debian, rhel, suse, coreos, unknown
    init_system: str  # systemd, sysvinit, unknown
    dhcp_client: str | None  # NetworkManager, networkd, wicked, dhcpcd, dhclient
    sshd_service: str
    cloud_init_present: bool
    cloud_init_enabled: bool

    @property
    def family_facts(self) -> FamilyFacts:
        """The family's row of FAMILIES."""
        return FAMILIES[self.family]


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines of os-release(5), with shell quoting and escapes undone."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        if not _OS_RELEASE_KEY.fullmatch(key):
            continue
        values[key] = _unquote(raw.strip())
    return values


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        quote, body = raw[0], raw[1:-1]
        if quote == "'":
            return body
        return re.sub(r"\\([\\$\"`])", r"\1", body)
    return re.sub(r"\\(.)", r"\1", raw)


def family_of(distro_id: str, id_like: tuple[str, ...] = (), variant_id: str = "") -> str:
    """The family of a distribution: its own id first, then the ids it says it is like."""
    if variant_id == "coreos":
        return "coreos"  # Fedora CoreOS says ID=fedora VARIANT_ID=coreos
    for candidate in (distro_id, *id_like):
        for family, ids in _FAMILY_IDS:
            if candidate.lower() in ids:
                return family
    return "unknown"


def os_release(root: Root) -> dict[str, str]:
    """The os-release keys of the root (or ID/VERSION_ID synthesised from legacy files)."""
    for system_path in _OS_RELEASE:
        try:
            return parse_os_release(root.follow(system_path).read_text(errors="replace"))
        except FileNotFoundError:
            continue
        except OSError as err:
            raise ProbeFailed(f"distribution: cannot read {system_path}: {err.strerror}") \
                from None
    for system_path, distro_id in _LEGACY_RELEASE:
        try:
            text = root.follow(system_path).read_text(errors="replace")
        except FileNotFoundError:
            continue
        except OSError as err:
            raise ProbeFailed(f"distribution: cannot read {system_path}: {err.strerror}") \
                from None
        version = re.search(r"(\d+(?:\.\d+)*)", text)
        return {"ID": distro_id, "NAME": text.strip().splitlines()[0] if text.strip() else "",
                "VERSION_ID": version.group(1) if version else ""}
    raise ProbeFailed("distribution: none of /etc/os-release, /usr/lib/os-release, "
                      "/etc/redhat-release, /etc/SuSE-release, /etc/debian_version exists")


def init_system(root: Root) -> str:
    """"systemd" when it runs (/run/systemd/system) or is installed; "sysvinit"; "unknown"."""
    if (root / "run/systemd/system").is_dir():
        return "systemd"
    for system_path in ("lib/systemd/systemd", "usr/lib/systemd/systemd"):
        if (root / system_path).exists():
            return "systemd"
    if (root / "etc/inittab").exists() or (root / "etc/init.d").is_dir():
        return "sysvinit"
    return "unknown"


_UNIT_DIRS = ("etc/systemd/system", "run/systemd/system", "run/systemd/generator",
              "run/systemd/generator.early", "run/systemd/generator.late")


def unit_enabled(root: Root, *units: str) -> bool:
    """True when one of the units is wanted by a target (a .wants link) or aliased in /etc."""
    for unit_dir in _UNIT_DIRS:
        try:
            wants = [d for d in (root / unit_dir).iterdir() if d.name.endswith(".wants")]
        except OSError:
            continue
        for directory in wants:
            for unit in units:
                # lexists, not exists: links in an image root point at absolute paths that
                # only resolve inside that root.
                if os.path.lexists(directory / unit):
                    return True
    return False


def unit_installed(root: Root, unit: str) -> bool:
    """True when a unit file of that name exists in the root."""
    return any((root / d / unit).exists() for d in ("etc/systemd/system", "lib/systemd/system",
                                                   "usr/lib/systemd/system"))


def _exists(root: Root, *paths: str) -> bool:
    return any((root / p).exists() for p in paths)


def dhcp_client(root: Root) -> str | None:
    """The DHCP client that manages the network: running or enabled wins over installed.

    NetworkManager, networkd, wicked, dhcpcd, dhclient; None when none is found.
    """
    running = (
        ("NetworkManager", ("run/NetworkManager/NetworkManager.pid",)),
        ("networkd", ("run/systemd/netif/links", "run/systemd/netif/leases")),
        ("wicked", ("run/wicked",)),
        ("dhcpcd", ("run/dhcpcd.pid", "run/dhcpcd/pid", "run/dhcpcd")),
    )
    enabled = (
        ("NetworkManager", ("NetworkManager.service", "dbus-org.freedesktop.NetworkManager.service")),
        ("networkd", ("systemd-networkd.service", "dbus-org.freedesktop.network1.service")),
        ("wicked", ("wicked.service",)),
        ("dhcpcd", ("dhcpcd.service",)),
    )
    for client, markers in running:
        if _exists(root, *markers):
            return client
    for client, units in enabled:
        if unit_enabled(root, *units) or any(
                (root / "etc/systemd/system" / unit).is_symlink() for unit in units[1:]):
            return client
    if (root / "etc/network/interfaces").exists() and _exists(root, "sbin/dhclient",
                                                                "usr/sbin/dhclient"):
        return "dhclient"  # ifupdown runs dhclient
    for client, paths in (("dhcpcd", ("sbin/dhcpcd", "usr/sbin/dhcpcd")),
                          ("dhclient", ("sbin/dhclient", "usr/sbin/dhclient"))):
        if _exists(root, *paths):
            return client
    return None


def sshd_service(root: Root, family: str) -> str:
    """The sshd unit name: the family's, unless only the other name exists in the root."""
    preferred = FAMILIES[family].sshd_service
    other = "sshd" if preferred == "ssh" else "ssh"
    if not unit_installed(root, preferred + ".service") and \
            unit_installed(root, other + ".service"):
        return other
    return preferred


def cloud_init_present(root: Root) -> bool:
    """True when cloud-init is installed in the root."""
    return _exists(root, "usr/bin/cloud-init", "bin/cloud-init", "usr/local/bin/cloud-init")


def cloud_init_enabled(root: Root) -> bool:
    """True when cloud-init is installed and will run at boot.

    Off when /etc/cloud/cloud-init.disabled exists or the kernel command line says
    cloud-init=disabled; on systemd, one of its units must be wanted by a target.
    """
    if not cloud_init_present(root):
        return False
    if (root / "etc/cloud/cloud-init.disabled").exists():
        return False
    cmdline = _optional_text(root / "proc/cmdline")
    if cmdline and "cloud-init=disabled" in cmdline.split():
        return False
    if init_system(root) != "systemd":
        return True
    return unit_enabled(root, "cloud-init.target", "cloud-init.service",
                        "cloud-init-local.service", "cloud-config.service",
                        "cloud-final.service")


def _optional_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def distro(root: Root) -> Distro:
    """Everything this module knows about the root's distribution."""
    release = os_release(root)
    distro_id = release.get("ID", "linux").lower() or "linux"
    id_like = tuple(word.lower() for word in release.get("ID_LIKE", "").split())
    family = family_of(distro_id, id_like, release.get("VARIANT_ID", "").lower())
    return Distro(
        id=distro_id,
        id_like=id_like,
        version=release.get("VERSION_ID", ""),
        name=release.get("PRETTY_NAME") or release.get("NAME", distro_id),
        family=family,
        init_system=init_system(root),
        dhcp_client=dhcp_client(root),
        sshd_service=sshd_service(root, family),
        cloud_init_present=cloud_init_present(root),
        cloud_init_enabled=cloud_init_enabled(root),
    )
