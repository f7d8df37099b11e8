"""DHCP: raw messages (an offer, dhcpcd's lease files), dhclient and systemd-networkd lease
files (wire/dhcp.py), and the routes they carry (facts/routes.py)."""

from __future__ import annotations

import datetime
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facts.routes import (
    parse_classless_routes,
    parse_route_table,
    platform_route,
    route_to,
    routes_from_dhclient_leases,
    routes_from_dhcp_message,
    routes_from_networkd_lease,
)
from tests.campaigns.harness import campaign, holds
from tests.campaigns.strategies import TEXT_TOKENS, fixture_files, mutated, mutations_of
from wire.dhcp import (
    MAGIC_COOKIE,
    endpoint_from_dhclient_leases,
    endpoint_from_dhcpcd_lease,
    endpoint_from_networkd_lease,
    parse_dhcp_message,
)
from wire.errors import WireError

pytestmark = pytest.mark.campaign

NOW = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
WIRESERVER = "168.63.129.16"

OPTION_CODES = st.sampled_from([0, 1, 3, 6, 15, 51, 53, 54, 121, 245, 249, 255])


@st.composite
def dhcp_message(draw: st.DrawFn) -> bytes:
    """The fixed BOOTP header, the magic cookie, then options: code, length (mostly right),
    value; routes in RFC 3442 form now and then."""
    header = bytearray(draw(st.binary(min_size=236, max_size=236)))
    header[0] = draw(st.sampled_from([1, 2, header[0]]))
    header[2] = draw(st.sampled_from([6, 16, 255, header[2]]))
    options = bytearray(MAGIC_COOKIE)
    for _ in range(draw(st.integers(0, 8))):
        code = draw(OPTION_CODES)
        if code in (121, 249) and draw(st.booleans()):
            value = b"".join(
                bytes([width]) + draw(st.binary(min_size=(width + 7) // 8,
                                                max_size=(width + 7) // 8)) + draw(
                    st.binary(min_size=4, max_size=4))
                for width in draw(st.lists(st.integers(0, 33), max_size=3)))
        else:
            value = draw(st.binary(max_size=12))
        length = len(value) if draw(st.integers(0, 5)) else draw(st.integers(0, 255))
        options += bytes([code, length & 0xFF]) + value
    if draw(st.booleans()):
        options.append(255)
    return bytes(header + options)


def _message(data: bytes) -> None:
    message = parse_dhcp_message(data)
    message.message_type, message.wireserver_endpoint, message.routers  # noqa: B018
    lease = routes_from_dhcp_message(data, "offer", "eth0")
    platform_route(lease, WIRESERVER)
    assert endpoint_from_dhcpcd_lease(data) in (None, message.wireserver_endpoint)


@campaign(1.5)
@given(st.one_of(dhcp_message(), mutations_of(fixture_files("walinuxagent/dhcp",
                                                            "cloudinit/net/dhcp/*.lease"))))
def test_dhcp_message(data: bytes) -> None:
    holds("DHCP offer", lambda: _message(data), (WireError,), size=len(data))


@campaign(0.5)
@given(st.binary(max_size=40))
def test_classless_routes(data: bytes) -> None:
    holds("DHCP offer", lambda: parse_classless_routes(data), (WireError,), size=len(data))


OPTION_VALUE = st.one_of(
    st.lists(st.integers(0, 300), max_size=6).map(lambda b: ":".join(f"{x:x}" for x in b)),
    st.lists(st.integers(0, 300), max_size=10).map(lambda b: ",".join(map(str, b))),
    st.text(max_size=8).map(lambda t: '"' + t + '"'),
    st.sampled_from(['"\\250?\\201\\020"', '"\\777"', '"\\é"', '"\\\u0101"', '"\\',
                     "a8:3f:81:10", "zz"]))
EXPIRE = st.one_of(
    st.sampled_from(["never", "epoch 1700000000", "epoch ²", "epoch 99999999999999999999",
                     "epoch", "4 2023/01/01 00:00:00", "4 9999/12/31 23:59:59", "x"]),
    st.integers().map(lambda n: f"epoch {n}"))
LEASE_LINE = st.one_of(
    st.tuples(st.sampled_from(["unknown-245", "routers", "rfc3442-classless-static-routes",
                               "unknown-121", "ms-classless-static-routes", "subnet-mask"]),
              OPTION_VALUE).map(lambda kv: f"  option {kv[0]} {kv[1]};"),
    EXPIRE.map(lambda e: f"  expire {e};"),
    st.sampled_from(['  interface "eth0";', "  fixed-address 10.0.0.4;", "  renew 0;", "}"]))


@st.composite
def dhclient_leases(draw: st.DrawFn) -> bytes:
    blocks = []
    for _ in range(draw(st.integers(0, 3))):
        # Most blocks carry option 245 and an expiry: the lines a lease is judged by.
        lines = draw(st.lists(LEASE_LINE, max_size=4))
        if draw(st.integers(0, 3)):
            lines.insert(0, f"  option unknown-245 {draw(OPTION_VALUE)};")
        if draw(st.integers(0, 3)):
            lines.append(f"  expire {draw(EXPIRE)};")
        blocks.append("lease {\n" + "\n".join(lines) + "\n}")
    return draw(mutated("\n".join(blocks).encode(), TEXT_TOKENS, 2))


def _leases(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")  # as wire.endpoint and facts.routes read
    endpoint_from_dhclient_leases(text, NOW)
    endpoint_from_networkd_lease(text)
    for lease in (routes_from_dhclient_leases(text, "dhclient"),
                  routes_from_networkd_lease(text, "networkd")):
        if lease is not None:
            platform_route(lease, WIRESERVER)


@campaign(2)
@given(st.one_of(dhclient_leases(), mutations_of(fixture_files("walinuxagent/dhcp.leases*"),
                                                 TEXT_TOKENS)))
def test_dhclient_leases(data: bytes) -> None:
    holds("DHCP lease files", lambda: _leases(data), size=len(data))


NETWORKD_LINE = st.one_of(
    st.tuples(st.sampled_from(["OPTION_245", "ROUTER", "CLASSLESS_ROUTES", "ADDRESS"]),
              st.one_of(st.text(max_size=12), st.sampled_from(
                  ["A83F8110", "a83f811", "10.0.0.1 10.0.0.2", "0.0.0.0/0,10.0.0.1",
                   "168.63.129.16/32,0.0.0.0 1.2.3.4/33,x"]))).map("=".join),
    st.text(max_size=20))


@campaign(1)
@given(st.lists(NETWORKD_LINE, max_size=6).map(lambda lines: "\n".join(lines).encode()))
def test_networkd_leases(data: bytes) -> None:
    holds("DHCP lease files", lambda: _leases(data), size=len(data))


ROUTE_LINE = st.tuples(
    st.sampled_from(["eth0", "lo", ""]),
    st.one_of(st.integers(-1, 2**40).map(lambda n: f"{n:X}"), st.sampled_from(["x", "-1"])),
    st.sampled_from(["0001", "0003", "zz"]),
    st.one_of(st.integers(0, 2**40).map(lambda n: f"{n:08X}"), st.just("FFFFFFFFFF")),
).map(lambda f: f"{f[0]}\t{f[1]}\t00000000\t{f[2]}\t0\t0\t0\t{f[3]}\t0\t0\t0")


@campaign(0.5)
@given(st.lists(ROUTE_LINE, max_size=4))
def test_route_table(lines: list[str]) -> None:
    table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n" \
        + "\n".join(lines)
    holds("DHCP lease files", lambda: (parse_route_table(table), route_to(table, WIRESERVER)),
          size=len(table))


def test_seed_message_parses() -> None:
    """The raw DHCP fixture is a reply with option 245: the campaign starts from a real one."""
    data = fixture_files("walinuxagent/dhcp")[0]
    assert parse_dhcp_message(data).wireserver_endpoint is not None
    assert struct.unpack_from("!4s", data, 236)[0] == MAGIC_COOKIE
