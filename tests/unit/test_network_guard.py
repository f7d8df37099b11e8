"""The test-wide guard refuses traffic outside loopback and the test namespaces."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import ForbiddenNetworkAccess


@pytest.mark.parametrize("address", ["168.63.129.16", "169.254.169.254", "10.0.0.1",
                                     "8.8.8.8"])
def test_platform_and_outside_addresses_are_refused(address: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(ForbiddenNetworkAccess):
            sock.connect((address, 80))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(ForbiddenNetworkAccess):
            sock.sendto(b"x", (address, 67))


def test_host_names_are_refused() -> None:
    with pytest.raises(ForbiddenNetworkAccess):
        socket.create_connection(("example.com", 80), timeout=1)


def test_loopback_is_allowed() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
