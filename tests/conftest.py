"""Test-wide rules: no traffic outside loopback and our own namespaces; no skips in CI."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fixtures import FIXTURES

# Loopback, and the documentation network our e2e namespaces use (never routed).
ALLOWED_NETWORKS = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("192.0.2.0/24"),
)


class ForbiddenNetworkAccess(AssertionError):
    """A test tried to reach an address outside loopback and the test namespaces."""


def _check_address(address: object) -> None:
    if not isinstance(address, tuple) or not address:
        return  # AF_UNIX paths, netlink
    host = address[0]
    if not isinstance(host, str):
        return
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        # A name: only localhost may be resolved by tests.
        if host in ("localhost", "localhost.localdomain", ""):
            return
        raise ForbiddenNetworkAccess(f"test tried to connect to host name {host!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if not any(ip in net for net in ALLOWED_NETWORKS):
        raise ForbiddenNetworkAccess(f"test tried to reach {ip}: only 127.0.0.0/8 and "
                                     "the test namespaces (192.0.2.0/24) are allowed")


_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sendto = socket.socket.sendto


def _guarded_connect(self: socket.socket, address: object) -> None:
    _check_address(address)
    _real_connect(self, address)  # type: ignore[arg-type]


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    _check_address(address)
    return _real_connect_ex(self, address)  # type: ignore[arg-type]


def _guarded_sendto(self: socket.socket, data: bytes, *args: object) -> int:
    _check_address(args[-1])
    return _real_sendto(self, data, *args)  # type: ignore[call-overload,no-any-return]


def _guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
    # A DNS lookup is traffic too: only literal allowed addresses and localhost resolve.
    if host is not None:
        _check_address((host.decode() if isinstance(host, bytes) else str(host), 0))
    return _real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    socket.getaddrinfo = _guarded_getaddrinfo  # type: ignore[assignment]
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign,assignment]
    socket.socket.sendto = _guarded_sendto  # type: ignore[method-assign,assignment]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI every tool is installed and we are root: a skip there is a failure."""
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; in CI nothing may skip",
                            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def need_root() -> None:
    """Skip (outside CI) when the test needs root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")


def need_tools(*tools: str) -> None:
    """Skip (outside CI) when a system tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip("missing tools: " + ", ".join(missing))


@pytest.fixture
def fixtures() -> Path:
    """The shared sample platform documents."""
    return FIXTURES


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """An empty VM root directory."""
    root = tmp_path / "vm"
    root.mkdir()
    yield root
