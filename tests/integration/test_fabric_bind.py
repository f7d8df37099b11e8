"""The emulator listens only on the address it was given, and what it serves names only
that address (never the platform's)."""

from __future__ import annotations

import socket

import requests

from fabric import Fabric, default_scenario

HEADERS = {"x-ms-version": "2012-11-30", "x-ms-agent-name": "test"}


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on `port` (from /proc/net/tcp)."""
    found = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        address, hex_port = fields[1].split(":")
        if int(hex_port, 16) == port and fields[3] == "0A":
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_fabric_listens_only_on_its_address() -> None:
    with Fabric(default_scenario(), bind="127.0.0.2") as fabric:
        for port in fabric.ports.values():
            assert listening_addresses(port) == {"127.0.0.2"}
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, "not on other addresses"
        state = requests.get(f"{fabric.wire_url}/machine/?comp=goalstate", headers=HEADERS,
                             timeout=10)
        assert state.status_code == 200
        assert "168.63.129.16" not in state.text
        assert "127.0.0.2" in state.text
