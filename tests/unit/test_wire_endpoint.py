"""Endpoint discovery and DHCP formats, in a temporary Root; nothing is ever broadcast."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from conf.config import default_config
from system.fs import FileSystem
from system.root import Root
from system.runner import Runner
from tests.support.fixtures import FIXTURES
from wire import dhcp
from wire.endpoint import (
    FIXED_ENDPOINT,
    cached_endpoint,
    discover_endpoint,
    endpoint_from_dhcp_request,
    has_wireserver_route,
    primary_interface,
    remember_endpoint,
)
from wire.errors import WireError

WALA = FIXTURES / "walinuxagent"
NOW = datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC)
ROUTES_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
ROUTES_DEFAULT = ROUTES_HEADER + (
    "eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    "eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n")
ROUTES_WIRESERVER = ROUTES_DEFAULT + "eth0\t10813FA8\t0100000A\t0007\t0\t0\t100\tFFFFFFFF\t0\t0\t0\n"


def never_send(interface: str, packet: bytes, timeout: float) -> bytes | None:
    raise AssertionError("discovery must not reach the DHCP request here")


def place(root: Root, system_path: str, data: str | bytes, mtime: float | None = None) -> Path:
    path = root / system_path
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path)


# -- pure DHCP parsers against the fixtures -------------------------------------------------

def test_raw_dhcp_reply_fixture() -> None:
    message = dhcp.parse_dhcp_message((WALA / "dhcp").read_bytes())
    assert message.message_type == "OFFER"
    assert message.wireserver_endpoint == "10.62.144.140"
    assert message.routers == ("10.62.144.1",)


def test_dhclient_leases_fixture_newest_unexpired() -> None:
    text = (WALA / "dhcp.leases").read_text()
    assert dhcp.endpoint_from_dhclient_leases(text, NOW) == "168.63.129.16"


def test_dhclient_leases_multi_picks_last_unexpired() -> None:
    text = (WALA / "dhcp.leases.multi").read_text()
    assert dhcp.endpoint_from_dhclient_leases(text, NOW) == "168.63.129.2"


def test_dhclient_leases_custom_dns_fixture() -> None:
    text = (WALA / "dhcp.leases.custom.dns").read_text()
    assert dhcp.endpoint_from_dhclient_leases(text, NOW) == "168.63.129.16"


def test_dhclient_all_leases_expired() -> None:
    text = (WALA / "dhcp.leases.multi").read_text()
    far_future = datetime.datetime(2200, 1, 1, tzinfo=datetime.UTC)
    assert dhcp.endpoint_from_dhclient_leases(text, far_future) is None


def test_dhclient_epoch_expiry_and_quoted_value() -> None:
    text = ('lease {\n  option unknown-245 "ABCD";\n  expire epoch 4000000000; # 2096\n}\n'
            'lease {\n  option unknown-245 "\\250?\\201\\020";\n  expire epoch 1; # 1970\n}\n')
    assert dhcp.endpoint_from_dhclient_leases(text, NOW) == "65.66.67.68"
    assert dhcp.option_bytes('"\\250?\\201\\020"') == bytes([0xA8, 0x3F, 0x81, 0x10])


def test_dhclient_unreadable_value_is_named() -> None:
    with pytest.raises(WireError, match="neither hex bytes nor a string"):
        dhcp.option_bytes("zz:yy")


def test_dhcpcd_lease_fixtures() -> None:
    assert dhcp.endpoint_from_dhcpcd_lease(
        (FIXTURES / "cloudinit/net/dhcp/eth0.lease").read_bytes()) == "168.63.129.16"
    assert dhcp.endpoint_from_dhcpcd_lease(
        (FIXTURES / "cloudinit/net/dhcp/enp24s0.lease").read_bytes()) is None


def test_networkd_lease() -> None:
    text = "# This is private data. Do not parse.\nADDRESS=10.0.0.4\nOPTION_245=A83F8110\n"
    assert dhcp.endpoint_from_networkd_lease(text) == "168.63.129.16"
    assert dhcp.endpoint_from_networkd_lease("ADDRESS=10.0.0.4\n") is None
    assert dhcp.endpoint_from_networkd_lease("OPTION_245=A83F81\n") is None


@pytest.mark.parametrize("data", [b"", b"\x02" * 100, bytes(240), (WALA / "dhcp").read_bytes()[:250]])
def test_malformed_dhcp_messages_are_named(data: bytes) -> None:
    with pytest.raises(WireError, match="DHCP"):
        dhcp.parse_dhcp_message(data)


def test_discover_packet() -> None:
    mac = bytes.fromhex("000d3a3382e8")
    packet = dhcp.build_discover(mac, b"\x01\x02\x03\x04")
    assert len(packet) >= 300
    message = dhcp.parse_dhcp_message(packet)
    assert message.op == 1 and message.message_type == "DISCOVER"
    assert message.xid == b"\x01\x02\x03\x04" and message.client_mac == mac
    assert dhcp.WIRESERVER_OPTION in message.options[55]
    assert packet[10:12] == b"\x80\x00"  # broadcast flag


def test_route_table() -> None:
    assert has_wireserver_route(ROUTES_WIRESERVER)
    assert not has_wireserver_route(ROUTES_DEFAULT)
    assert not has_wireserver_route("")


# -- discovery order ------------------------------------------------------------------------

def test_static_discovery_skips_everything(root: Root) -> None:
    conf = default_config().replace(Protocol__EndpointDiscovery="static")
    place(root, "var/lib/waagent/WireServerEndpoint", "10.0.0.9")
    found = discover_endpoint(root, conf, dhcp_sender=never_send)
    assert (found.address, found.source) == (FIXED_ENDPOINT, "Protocol.EndpointDiscovery=static")


def test_cache_comes_first(root: Root) -> None:
    place(root, "var/lib/waagent/WireServerEndpoint", "10.0.0.9\n")
    place(root, "proc/net/route", ROUTES_WIRESERVER)
    found = discover_endpoint(root, default_config(), dhcp_sender=never_send)
    assert found.address == "10.0.0.9" and "WireServerEndpoint" in found.source


def test_invalid_cache_is_ignored(root: Root) -> None:
    place(root, "var/lib/waagent/WireServerEndpoint", "not-an-address")
    place(root, "proc/net/route", ROUTES_WIRESERVER)
    assert cached_endpoint(root, "/var/lib/waagent") is None
    found = discover_endpoint(root, default_config(), dhcp_sender=never_send)
    assert (found.address, found.source) == (FIXED_ENDPOINT, "route table (/proc/net/route)")


def test_cache_bypassed_for_rediscovery(root: Root) -> None:
    place(root, "var/lib/waagent/WireServerEndpoint", "10.0.0.9")
    place(root, "proc/net/route", ROUTES_WIRESERVER)
    found = discover_endpoint(root, default_config(), use_cache=False, dhcp_sender=never_send)
    assert found.source.startswith("route")


def test_custom_lib_dir_cache(root: Root) -> None:
    conf = default_config().replace(Lib__Dir="/srv/agent")
    place(root, "srv/agent/WireServerEndpoint", "10.0.0.7")
    assert discover_endpoint(root, conf, dhcp_sender=never_send).address == "10.0.0.7"


def test_dhclient_lease_file(root: Root) -> None:
    place(root, "proc/net/route", ROUTES_DEFAULT)
    place(root, "var/lib/dhcp/dhclient.eth0.leases", (WALA / "dhcp.leases.multi").read_text())
    found = discover_endpoint(root, default_config(), dhcp_sender=never_send, now=NOW)
    assert found.address == "168.63.129.2"
    assert found.source == "dhclient lease /var/lib/dhcp/dhclient.eth0.leases"


def test_newest_dhclient_file_wins(root: Root) -> None:
    old = "lease {\n  option unknown-245 a8:3f:81:01;\n  expire never;\n}\n"
    new = "lease {\n  option unknown-245 a8:3f:81:02;\n  expire never;\n}\n"
    place(root, "var/lib/dhclient/dhclient-old.lease", old, mtime=1_000_000)
    place(root, "var/lib/dhclient/dhclient-new.lease", new, mtime=2_000_000)
    assert discover_endpoint(root, default_config(), dhcp_sender=never_send,
                             now=NOW).address == "168.63.129.2"


def test_networkd_lease_file(root: Root) -> None:
    place(root, "run/systemd/netif/leases/2", "ADDRESS=10.0.0.4\nOPTION_245=0A3E908C\n")
    found = discover_endpoint(root, default_config(), dhcp_sender=never_send, now=NOW)
    assert found.address == "10.62.144.140"
    assert found.source == "systemd-networkd lease /run/systemd/netif/leases/2"


def test_networkmanager_lease_files(root: Root) -> None:
    place(root, "var/lib/NetworkManager/internal-uuid-eth0.lease", "OPTION_245=A83F8110\n")
    found = discover_endpoint(root, default_config(), dhcp_sender=never_send, now=NOW)
    assert found.source.startswith("NetworkManager lease") and found.address == "168.63.129.16"


def test_networkmanager_dhclient_plugin_lease(root: Root) -> None:
    place(root, "var/lib/NetworkManager/dhclient-uuid-eth0.lease",
          (WALA / "dhcp.leases").read_text())
    found = discover_endpoint(root, default_config(), dhcp_sender=never_send, now=NOW)
    assert found.source.startswith("NetworkManager lease") and found.address == "168.63.129.16"


def test_dhcpcd_lease_file(root: Root) -> None:
    place(root, "var/lib/dhcpcd/eth0.lease", (FIXTURES / "cloudinit/net/dhcp/eth0.lease").read_bytes())
    place(root, "var/lib/dhcpcd/enp24s0.lease",
          (FIXTURES / "cloudinit/net/dhcp/enp24s0.lease").read_bytes())
    found = discover_endpoint(root, default_config(), dhcp_sender=never_send, now=NOW)
    assert (found.address, found.source) == ("168.63.129.16",
                                             "dhcpcd lease /var/lib/dhcpcd/eth0.lease")


def test_route_beats_leases(root: Root) -> None:
    place(root, "proc/net/route", ROUTES_WIRESERVER)
    place(root, "run/systemd/netif/leases/2", "OPTION_245=0A3E908C\n")
    assert discover_endpoint(root, default_config(), dhcp_sender=never_send).source.startswith(
        "route")


def _offer_for(packet: bytes, option_245: bytes | None = b"\x0a\x3e\x90\x8c",
               xid: bytes | None = None) -> bytes:
    request = dhcp.parse_dhcp_message(packet)
    header = bytearray(packet[:236])
    header[0] = 2
    header[4:8] = xid or request.xid
    header[16:20] = bytes([10, 0, 0, 4])
    options = dhcp.MAGIC_COOKIE + bytes([53, 1, 2])
    if option_245 is not None:
        options += bytes([245, len(option_245)]) + option_245
    return bytes(header) + options + b"\xff"


def _nic(root: Root, name: str = "eth0", mac: str = "00:0d:3a:33:82:e8") -> None:
    place(root, f"sys/class/net/{name}/address", mac + "\n")
    place(root, "sys/class/net/lo/address", "00:00:00:00:00:00\n")


def test_own_dhcp_request_when_nothing_else_knows(root: Root) -> None:
    place(root, "proc/net/route", ROUTES_DEFAULT)
    _nic(root)
    sent: list[tuple[str, bytes]] = []

    def fake_sender(interface: str, packet: bytes, timeout: float) -> bytes | None:
        sent.append((interface, packet))
        return _offer_for(packet)

    found = discover_endpoint(root, default_config(), dhcp_sender=fake_sender, now=NOW)
    assert (found.address, found.source) == ("10.62.144.140", "DHCP offer on eth0")
    (interface, packet), = sent
    assert interface == "eth0"
    assert dhcp.parse_dhcp_message(packet).client_mac == bytes.fromhex("000d3a3382e8")


@pytest.mark.parametrize("reply", ["none", "no-245", "wrong-xid", "garbage", "oserror"])
def test_unusable_dhcp_answers_fall_back_to_the_fixed_address(root: Root, reply: str) -> None:
    _nic(root)

    def fake_sender(interface: str, packet: bytes, timeout: float) -> bytes | None:
        if reply == "oserror":
            raise PermissionError("port 68 needs root")
        return {"none": None, "no-245": _offer_for(packet, None),
                "wrong-xid": _offer_for(packet, xid=b"zzzz"), "garbage": b"nope"}[reply]

    found = discover_endpoint(root, default_config(), dhcp_sender=fake_sender, now=NOW)
    assert (found.address, found.source) == (FIXED_ENDPOINT, "fixed address")


def test_sandbox_root_never_broadcasts_by_default(root: Root,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import wire.endpoint

    monkeypatch.setattr(wire.endpoint, "broadcast_discover", never_send)
    _nic(root)
    assert discover_endpoint(root, default_config(), now=NOW).source == "fixed address"


def test_dhcp_request_without_mac_is_skipped(root: Root) -> None:
    assert endpoint_from_dhcp_request(root, "eth9", never_send) is None


def test_primary_interface(root: Root) -> None:
    assert primary_interface(root, ROUTES_DEFAULT.replace("eth0", "enp1s0")) == "enp1s0"
    _nic(root, "eth1")
    assert primary_interface(root, "") == "eth1"


def test_remember_endpoint(root: Root) -> None:
    fs = FileSystem(Runner(root=root))
    conf = default_config()
    assert remember_endpoint(fs, root, conf, "168.63.129.16")
    assert not remember_endpoint(fs, root, conf, "168.63.129.16")
    assert cached_endpoint(root, "/var/lib/waagent") == "168.63.129.16"
