"""Routes towards the WireServer: what the DHCP lease offers and what the kernel has.

Read only (DESIGN rule 1). The lease is the newest one of the DHCP client that manages the
network (dhclient, systemd-networkd, NetworkManager, dhcpcd; the lease files
`wire.endpoint` reads for option 245), with its routers (option 3) and classless static
routes (option 121, RFC 3442, and Microsoft's option 249, same encoding). The kernel's
IPv4 routes come from `/proc/net/route` (the reader's network namespace), and the DHCP
clients' processes from `/proc/<pid>/comm`.
"""

import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from system.root import Root
from wire.errors import WireError

CLASSLESS_OPTIONS = (121, 249)
# Process names (as /proc/<pid>/comm holds them, 15 characters) of DHCP clients.
DHCP_CLIENT_PROCESSES = ("dhclient", "dhcpcd", "systemd-network", "NetworkManager",
                         "wickedd-dhcp4", "udhcpc")
ANY = ipaddress.IPv4Address("0.0.0.0")
_RTF_UP = 0x1


class StaticRoute(NamedTuple):
    """A route a DHCP server gave: a network and its gateway (0.0.0.0: on the link)."""

    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address


class LeaseRoutes(NamedTuple):
    """The routes a lease carries, and where it was read."""

    source: str
    interface: str | None
    routers: tuple[ipaddress.IPv4Address, ...]
    classless: tuple[StaticRoute, ...]


class PlatformRoute(NamedTuple):
    """The route to add so that the endpoint is reached: `ip route add DEST [via GW] [dev IF]`."""

    destination: str  # a.b.c.d/32
    gateway: str | None  # None: on the link
    interface: str | None
    reason: str

    def argv(self) -> list[str]:
        """The `ip` command that adds it."""
        argv = ["ip", "-4", "route", "add", self.destination]
        if self.gateway:
            argv += ["via", self.gateway]
        if self.interface:
            argv += ["dev", self.interface]
        return argv

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        dev = f" dev {self.interface}" if self.interface else ""
        return f"{self.destination}{via}{dev}"


# -- parsers -------------------------------------------------------------------------------

def parse_classless_routes(data: bytes) -> tuple[StaticRoute, ...]:
    """RFC 3442 option data: (prefix length, significant octets of the network, gateway)..."""
    routes = []
    position = 0
    while position < len(data):
        width = data[position]
        if width > 32:
            raise WireError(f"classless route with a /{width} prefix: not an IPv4 route")
        size = (width + 7) // 8
        end = position + 1 + size + 4
        if end > len(data):
            raise WireError("classless static routes option is truncated")
        network_bytes = data[position + 1:position + 1 + size].ljust(4, b"\0")
        gateway = ipaddress.IPv4Address(data[position + 1 + size:end])
        network = ipaddress.IPv4Network((int.from_bytes(network_bytes, "big"), width),
                                        strict=False)
        routes.append(StaticRoute(network, gateway))
        position = end
    return tuple(routes)


def _option_value_bytes(value: str) -> bytes:
    """dhclient's rendering of an option: `25,192,0,2,128,...` (declared as an array of
    bytes, as Debian's dhclient.conf does) or `19:c0:00:...` (an unknown option)."""
    text = value.strip()
    if re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
        return bytes(int(part) for part in text.split(","))
    from wire.dhcp import option_bytes

    return option_bytes(text)


# (Compiled where used, by re's cache: only a host with a dhclient lease reads them.)
_LEASE_BLOCK = r"(?s)lease\s*\{(.*?)\}"
_LEASE_OPTION = r"option\s+([\w-]+)\s+(.+?);"
_LEASE_INTERFACE = r'interface\s+"([^"]+)"\s*;'
_DHCLIENT_CLASSLESS = {"rfc3442-classless-static-routes", "unknown-121",
                       "ms-classless-static-routes", "unknown-249"}


def routes_from_dhclient_leases(text: str, source: str) -> LeaseRoutes | None:
    """The routes of the last lease in a dhclient lease file (dhclient appends renewals)."""
    blocks = re.findall(_LEASE_BLOCK, text)
    if not blocks:
        return None
    block = blocks[-1]
    routers: list[ipaddress.IPv4Address] = []
    classless: list[StaticRoute] = []
    for name, value in re.findall(_LEASE_OPTION, block):
        if name == "routers":
            routers += _addresses(value.replace(",", " ").split())
        elif name in _DHCLIENT_CLASSLESS and not classless:
            try:
                classless += parse_classless_routes(_option_value_bytes(value))
            except (WireError, ValueError):
                continue  # an unreadable option is no route; the routers still are
    interface = re.search(_LEASE_INTERFACE, block)
    return LeaseRoutes(source, interface.group(1) if interface else None, tuple(routers),
                       tuple(classless))


def routes_from_networkd_lease(text: str, source: str) -> LeaseRoutes:
    """systemd-networkd's lease: `ROUTER=a b`, `CLASSLESS_ROUTES=net/len,gw ...`."""
    values = dict(line.strip().partition("=")[::2] for line in text.splitlines() if "=" in line)
    classless = []
    for entry in values.get("CLASSLESS_ROUTES", "").split():
        network, _, gateway = entry.partition(",")
        try:
            classless.append(StaticRoute(ipaddress.IPv4Network(network, strict=False),
                                         ipaddress.IPv4Address(gateway or "0.0.0.0")))
        except ValueError:
            continue
    return LeaseRoutes(source, None, tuple(_addresses(values.get("ROUTER", "").split())),
                       tuple(classless))


def routes_from_dhcp_message(data: bytes, source: str, interface: str | None) -> LeaseRoutes:
    """Routes of a raw DHCP message (dhcpcd's `.lease` files, an offer)."""
    from wire.dhcp import parse_dhcp_message

    message = parse_dhcp_message(data)
    classless: tuple[StaticRoute, ...] = ()
    for code in CLASSLESS_OPTIONS:
        if code in message.options:
            try:
                classless = parse_classless_routes(message.options[code])
            except WireError:
                continue
            break
    return LeaseRoutes(source, interface,
                       tuple(ipaddress.IPv4Address(r) for r in message.routers), classless)


def _addresses(words: list[str]) -> list[ipaddress.IPv4Address]:
    found = []
    for word in words:
        try:
            found.append(ipaddress.IPv4Address(word.strip()))
        except ValueError:
            continue
    return found


def parse_route_table(text: str) -> list[tuple[str, ipaddress.IPv4Network, int]]:
    """`/proc/net/route`: (interface, destination network, flags) of each route."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
            mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
            network = ipaddress.IPv4Network(f"{destination}/{mask}", strict=False)
            flags = int(fields[3], 16)
        except (ValueError, OverflowError):  # not hex, or not 32 bits
            continue
        routes.append((fields[0], network, flags))
    return routes


def route_to(table: str, address: str) -> str | None:
    """The kernel's route (`dest/len dev IF`) that covers `address`, or None: the endpoint is
    not reachable, not even through a default route."""
    target = ipaddress.IPv4Address(address)
    matches = [(network.prefixlen, interface, network)
               for interface, network, flags in parse_route_table(table)
               if flags & _RTF_UP and target in network]
    if not matches:
        return None
    _, interface, network = max(matches, key=lambda m: m[0])
    return f"{network} dev {interface}"


def platform_route(lease: LeaseRoutes, address: str) -> PlatformRoute | None:
    """The route towards `address` the lease gives, or None.

    With classless routes present their most specific one covering the address decides
    and the routers are ignored (RFC 3442); else the first router is the gateway.
    """
    target = ipaddress.IPv4Address(address)
    destination = f"{target}/32"
    if lease.classless:
        covering = [route for route in lease.classless if target in route.network]
        if not covering:
            return None
        best = max(covering, key=lambda route: route.network.prefixlen)
        gateway = None if best.gateway == ANY else str(best.gateway)
        if gateway is None and lease.interface is None:
            return None  # on the link, but which link is unknown
        return PlatformRoute(destination, gateway, lease.interface,
                             f"classless static route {best.network} via {best.gateway} "
                             f"in {lease.source}")
    if lease.routers:
        return PlatformRoute(destination, str(lease.routers[0]), lease.interface,
                             f"router {lease.routers[0]} in {lease.source}")
    return None


# -- reading the root ----------------------------------------------------------------------

def _lease_files(root: Root, patterns: tuple[str, ...]) -> list[Path]:
    found: dict[Path, float] = {}
    for pattern in patterns:
        directory, _, name = pattern.rpartition("/")
        try:
            for path in (root / directory).glob(name):
                if path.is_file():
                    found[path] = path.stat().st_mtime
        except OSError:
            continue
    return sorted(found, key=lambda p: found[p], reverse=True)


def lease_routes(root: Root) -> LeaseRoutes | None:
    """The routes of the newest lease file that has any, by client (as option 245 is read)."""
    # Where the lease files are: the endpoint discovery's list (imported here: the module
    # is read by checks that may not get this far).
    from wire import endpoint as lease_places

    clients = (("dhclient", lease_places.DHCLIENT_LEASES),
               ("systemd-networkd", lease_places.NETWORKD_LEASES),
               ("NetworkManager", lease_places.NETWORKMANAGER_LEASES),
               ("dhcpcd", lease_places.DHCPCD_LEASES))
    for kind, patterns in clients:
        for path in _lease_files(root, patterns):
            source = f"{kind} lease {root.system_path(path)}"
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found: LeaseRoutes | None
            if kind == "dhcpcd":
                interface = path.name.removeprefix("dhcpcd-").removesuffix(".lease")
                try:
                    found = routes_from_dhcp_message(data, source, interface or None)
                except WireError:
                    continue
            else:
                text = data.decode("utf-8", errors="replace")
                if "lease {" in text or kind == "dhclient":
                    found = routes_from_dhclient_leases(text, source)
                else:
                    found = routes_from_networkd_lease(text, source)
            if found is not None and (found.routers or found.classless):
                return found
    return None


def route_table(root: Root) -> str:
    """`/proc/net/route` of the root (the reader's network namespace)."""
    return (root / "proc/net/route").read_text()


def dhcp_client_pids(root: Root, known: Sequence[int] = ()) -> list[int]:
    """PIDs of the running DHCP client processes, sorted (a restart changes them).

    When every PID in `known` (the last answer) still runs a DHCP client, that is the
    answer, without listing every process: waagent's monitor looks again only when one of
    its PIDs is gone, and a VM runs hundreds of processes."""
    proc = root / "proc"
    if known and all(_process_name(proc, str(pid)) in DHCP_CLIENT_PROCESSES for pid in known):
        return sorted(known)
    with os.scandir(proc) as entries:
        return sorted(int(entry.name) for entry in entries if entry.name.isdigit()
                      and _process_name(proc, entry.name) in DHCP_CLIENT_PROCESSES)


def _process_name(proc: Path, pid: str) -> str | None:
    """/proc/PID/comm, or None for a process that is gone."""
    try:
        with open(os.path.join(proc, pid, "comm"), "rb") as comm:
            return comm.read().decode(errors="replace").strip()
    except OSError:
        return None
