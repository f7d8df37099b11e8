"""Where the WireServer is: discovery in the order of PLATFORM.md section 1.

1. the cached `<Lib.Dir>/WireServerEndpoint` (a valid IPv4 address);
2. a route to 168.63.129.16 in `/proc/net/route` (destination `10813FA8`);
3. DHCP option 245 in lease files: dhclient, systemd-networkd, NetworkManager, dhcpcd;
4. a DHCP DISCOVER of our own on the primary NIC, reading option 245 from the offer;
5. the fixed address 168.63.129.16.
`Protocol.EndpointDiscovery=static` goes straight to the fixed address.

Every file is read through the Root. The DISCOVER is sent by an injectable function;
by default it is sent only when the Root is the running system's `/`, so a test
(always a temporary Root) can never broadcast.
"""

import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from conf.config import Config
from system.fs import FileSystem
from system.root import Root
from wire.errors import WireError

if TYPE_CHECKING:
    import datetime

log = logging.getLogger("waagent.wire.endpoint")

FIXED_ENDPOINT = "168.63.129.16"
ENDPOINT_FILE = "WireServerEndpoint"
# 168.63.129.16 as /proc/net/route writes it: little-endian hex.
ROUTE_DESTINATION = "10813FA8"
DHCP_TIMEOUT = 10.0

# Lease files by client, in the order they are consulted (PLATFORM.md section 1).
DHCLIENT_LEASES = ("/var/lib/dhcp/dhclient*.leases", "/var/lib/dhcp/dhclient*.lease",
                   "/var/lib/dhclient/*.leases", "/var/lib/dhclient/*.lease",
                   "/var/lib/dhcp3/dhclient*.leases")
NETWORKD_LEASES = ("/run/systemd/netif/leases/*",)
NETWORKMANAGER_LEASES = ("/var/lib/NetworkManager/*.lease",)
DHCPCD_LEASES = ("/var/lib/dhcpcd/*.lease", "/var/lib/dhcpcd5/*.lease",
                 "/var/db/dhcpcd/*.lease")

# (interface, DISCOVER packet, timeout) -> the first matching reply, or None.
DhcpSender = Callable[[str, bytes, float], bytes | None]


class Endpoint(NamedTuple):
    """The WireServer address and where it came from (for logs and the plan)."""

    address: str
    source: str

    def __str__(self) -> str:
        return f"{self.address} (from {self.source})"


def discover_endpoint(
    root: Root,
    conf: Config,
    *,
    use_cache: bool = True,
    dhcp_sender: DhcpSender | None = None,
    interface: str | None = None,
    now: "datetime.datetime | None" = None,
) -> Endpoint:
    """The WireServer endpoint, from the first source that knows it.

    `use_cache=False` re-discovers (after HTTP 410 or repeated connection errors).
    `dhcp_sender` replaces the real DHCP broadcast (tests pass a fake); without it the
    DISCOVER is sent only when `root` is the running system.
    """
    if conf.text("Protocol.EndpointDiscovery") == "static":
        return Endpoint(FIXED_ENDPOINT, "Protocol.EndpointDiscovery=static")
    lib_dir = conf.required_path("Lib.Dir")
    if use_cache:
        cached = cached_endpoint(root, lib_dir)
        if cached is not None:
            return Endpoint(cached, f"cache {lib_dir}/{ENDPOINT_FILE}")
    try:
        routes = (root / "proc/net/route").read_text()
    except OSError:
        routes = ""
    if has_wireserver_route(routes):
        return Endpoint(FIXED_ENDPOINT, "route table (/proc/net/route)")
    if now is None:
        import datetime  # here, as wire.dhcp below: a boot finds the cached endpoint

        now = datetime.datetime.now(datetime.UTC)
    leased = endpoint_from_leases(root, now)
    if leased is not None:
        return leased
    sender = dhcp_sender if dhcp_sender is not None else (
        broadcast_discover if root.is_host else None)
    if sender is not None:
        nic = interface or primary_interface(root, routes)
        if nic is not None:
            offered = endpoint_from_dhcp_request(root, nic, sender)
            if offered is not None:
                return offered
    return Endpoint(FIXED_ENDPOINT, "fixed address")


def cached_endpoint(root: Root, lib_dir: str) -> str | None:
    """The endpoint cached by an earlier run, if the file holds a valid IPv4 address."""
    path = root / lib_dir / ENDPOINT_FILE
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        log.warning("cannot read %s/%s: %s", lib_dir, ENDPOINT_FILE, err)
        return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        log.warning("%s/%s holds %r, not an IPv4 address: ignored", lib_dir, ENDPOINT_FILE,
                    text[:40])
        return None


def remember_endpoint(fs: FileSystem, root: Root, conf: Config, address: str) -> bool:
    """Cache the endpoint for the next run; False when it was already cached."""
    lib_dir = root / conf.required_path("Lib.Dir")
    fs.mkdir(lib_dir, mode=0o700, why="agent state directory (holds private keys)")
    return fs.write(lib_dir / ENDPOINT_FILE, address, mode=0o644,
                    why="cache the WireServer endpoint")


def has_wireserver_route(route_table: str) -> bool:
    """True when `/proc/net/route` text has a route to 168.63.129.16."""
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 1 and fields[1].upper() == ROUTE_DESTINATION:
            return True
    return False


def primary_interface(root: Root, route_table: str | None = None) -> str | None:
    """The NIC of the default route, else the first non-loopback NIC in /sys/class/net."""
    if route_table is None:
        try:
            route_table = (root / "proc/net/route").read_text()
        except OSError:
            route_table = ""
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
            return fields[0]
    try:
        names = sorted(p.name for p in (root / "sys/class/net").iterdir())
    except OSError:
        return None
    return next((n for n in names if n != "lo"), None)


def _lease_files(root: Root, patterns: tuple[str, ...]) -> list[Path]:
    """Existing lease files matching the patterns, newest first."""
    found: dict[Path, float] = {}
    for pattern in patterns:
        directory, _, name = pattern.rpartition("/")
        base = root / directory
        try:
            for path in base.glob(name):
                if path.is_file():
                    found[path] = path.stat().st_mtime
        except OSError:
            continue
    return sorted(found, key=lambda p: found[p], reverse=True)


def _leases(root: Root) -> Iterator[tuple[str, Path]]:
    for kind, patterns in (("dhclient", DHCLIENT_LEASES), ("systemd-networkd", NETWORKD_LEASES),
                           ("NetworkManager", NETWORKMANAGER_LEASES),
                           ("dhcpcd", DHCPCD_LEASES)):
        for path in _lease_files(root, patterns):
            yield kind, path


def endpoint_from_leases(root: Root, now: "datetime.datetime") -> Endpoint | None:
    """Option 245 from the DHCP clients' lease files, by client, newest file first."""
    from wire import dhcp

    for kind, path in _leases(root):
        try:
            data = path.read_bytes()
        except OSError as err:
            log.debug("cannot read lease file %s: %s", path, err)
            continue
        address: str | None
        if kind == "dhcpcd":
            address = dhcp.endpoint_from_dhcpcd_lease(data)
        else:
            text = data.decode("utf-8", errors="replace")
            if kind == "dhclient" or "lease {" in text:  # NetworkManager's dhclient plugin
                address = dhcp.endpoint_from_dhclient_leases(text, now)
            else:
                address = dhcp.endpoint_from_networkd_lease(text)
        if address is not None:
            return Endpoint(address, f"{kind} lease {root.system_path(path)}")
    return None


def endpoint_from_dhcp_request(root: Root, interface: str, sender: DhcpSender,
                               timeout: float = DHCP_TIMEOUT) -> Endpoint | None:
    """Send a DHCP DISCOVER on `interface` through `sender`; option 245 of the offer."""
    import secrets

    from wire import dhcp

    try:
        mac_text = (root / "sys/class/net" / interface / "address").read_text().strip()
        mac = bytes.fromhex(mac_text.replace(":", ""))
    except (OSError, ValueError) as err:
        log.info("no DHCP request on %s: cannot read its MAC address (%s)", interface, err)
        return None
    if len(mac) != 6:
        log.info("no DHCP request on %s: MAC %s is not Ethernet", interface, mac_text)
        return None
    xid = secrets.token_bytes(4)
    try:
        reply = sender(interface, dhcp.build_discover(mac, xid), timeout)
    except OSError as err:
        log.info("DHCP request on %s failed: %s", interface, err)
        return None
    if reply is None:
        log.info("no DHCP offer on %s within %.0f s", interface, timeout)
        return None
    try:
        message = dhcp.parse_dhcp_message(reply)
    except WireError as err:  # a bad reply is no answer: discovery goes on
        log.info("unreadable DHCP reply on %s: %s", interface, err)
        return None
    if message.xid != xid or message.op != 2:
        log.info("DHCP reply on %s is not an answer to our request: ignored", interface)
        return None
    address = message.wireserver_endpoint
    if address is None:
        log.info("DHCP offer on %s has no option 245", interface)
        return None
    return Endpoint(address, f"DHCP offer on {interface}")


def broadcast_discover(interface: str, packet: bytes, timeout: float) -> bytes | None:
    """Broadcast a DHCP DISCOVER on `interface` (UDP 68 -> 67) and wait for the reply.

    Needs root (port 68, SO_BINDTODEVICE). Only `discover_endpoint` on the host root
    calls this; tests inject their own sender.
    """
    if os.geteuid() != 0:
        log.info("not root: no DHCP request of our own")
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind(("0.0.0.0", 68))  # noqa: S104 - DHCP clients listen on all addresses
        sock.sendto(packet, ("255.255.255.255", 67))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                reply, _sender = sock.recvfrom(4096)
            except TimeoutError:
                return None
            if len(reply) > 8 and reply[0] == 2 and reply[4:8] == packet[4:8]:
                return reply
    return None
