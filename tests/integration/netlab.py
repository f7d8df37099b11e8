"""A two-namespace network for the network area's tests: a VM side and a platform side.

`vm` is a network namespace with a private mount namespace over the host's file system,
in which /var/log, /var/lib/dhcp, /run/wgx and /etc/systemd/system are empty tmpfs: the
agent runs there with root=/ (so its kernel commands are live) against the namespace's
own routes and netfilter, and every file it writes lands in those tmpfs or in the test's
temporary Lib.Dir. `platform` is a plain network namespace joined to it by a veth pair
(vm side `eth0`, platform side `veth-p`) on the documentation network 192.0.2.0/24.
Everything is removed on exit, also after a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
# Emptied inside the VM side's mount namespace, so that nothing the tests run there
# writes the host's copies.
PRIVATE_DIRS = ("/var/log", "/var/lib/dhcp", "/etc/systemd/system")
TOOLS = ("ip", "nsenter", "unshare", "setpriv", "nft", "iptables")
# Any user can run it (the venv's may live under /root): for connections as another user.
SYSTEM_PYTHON = "/usr/bin/python3"


def require(*tools: str) -> None:
    """Skip unless root with the tools (CI has them all: scripts/setup.sh)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces")
    missing = [tool for tool in (*TOOLS, *tools, SYSTEM_PYTHON) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            check=False, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


class NetLab:
    """`with NetLab(tmp_path) as lab:` -- lab.vm([...]), lab.platform([...])."""

    def __init__(self, tmp: Path, *, vm_address: str = "192.0.2.2/24",
                 platform_address: str = "192.0.2.1/24") -> None:
        tag = secrets.token_hex(3)
        self.vm_ns = f"wgx-vm-{tag}"
        self.platform_ns = f"wgx-pf-{tag}"
        self.tmp = tmp
        self.vm_address = vm_address
        self.platform_address = platform_address
        self.holder: subprocess.Popen[bytes] | None = None
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> NetLab:
        try:
            self._build()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _build(self) -> None:
        for ns in (self.vm_ns, self.platform_ns):
            run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", "eth0", "netns", self.vm_ns, "type", "veth", "peer", "name",
             "veth-p", "netns", self.platform_ns])
        self.platform(["ip", "link", "set", "lo", "up"])
        self.platform(["ip", "link", "set", "veth-p", "up"])
        if self.platform_address:
            self.platform(["ip", "addr", "add", self.platform_address, "dev", "veth-p"])
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.vm_ns, "unshare", "--mount", "--propagation",
             "private", "sleep", "3600"])
        deadline = time.monotonic() + 10
        while run(["nsenter", "-t", str(self.holder.pid), "-m", "true"], check=False).returncode \
                or self._same_mounts():
            if time.monotonic() > deadline:
                raise AssertionError("the VM side's mount namespace did not come up")
            time.sleep(0.05)
        for directory in PRIVATE_DIRS:
            if Path(directory).is_dir():
                self.vm(["mount", "-t", "tmpfs", "wgx", directory])
        self.vm(["ip", "link", "set", "lo", "up"])
        self.vm(["ip", "link", "set", "eth0", "up"])
        if self.vm_address:
            self.vm(["ip", "addr", "add", self.vm_address, "dev", "eth0"])

    def _same_mounts(self) -> bool:
        assert self.holder is not None
        try:
            return os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == os.readlink(
                "/proc/self/ns/mnt") or Path(f"/proc/{self.holder.pid}/comm").read_text().strip() != "sleep"
        except OSError:
            return True

    def vm_argv(self, argv: Sequence[str]) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", *argv]

    def vm(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run in the VM side (its network and its private mounts)."""
        return run(self.vm_argv(argv), **kwargs)  # type: ignore[arg-type]

    def platform(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run in the platform side."""
        return run(["ip", "netns", "exec", self.platform_ns, *argv], **kwargs)  # type: ignore[arg-type]

    def start(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """A long-running process (a server), stopped at exit."""
        process = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def listen(self, address: str, *ports: int) -> None:
        """TCP listeners on the platform side that accept and close, until exit."""
        code = ("import socket, threading, sys\n"
                "def serve(port):\n"
                "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                f"    s.bind(({address!r}, port)); s.listen(16)\n"
                "    while True:\n"
                "        c, _ = s.accept(); c.sendall(b'hi'); c.close()\n"
                "ts = [threading.Thread(target=serve, args=(int(p),), daemon=True) for p in sys.argv[1:]]\n"
                "[t.start() for t in ts]; [t.join() for t in ts]\n")
        self.start(["ip", "netns", "exec", self.platform_ns, sys.executable, "-c", code,
                    *map(str, ports)])
        deadline = time.monotonic() + 10
        for port in ports:
            while not self.platform([SYSTEM_PYTHON, "-c", _connect(address, port, 1)],
                                    check=False).returncode == 0:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no listener on {address}:{port}")
                time.sleep(0.05)

    def connects(self, address: str, port: int, *, uid: int = 0, timeout: float = 2) -> bool:
        """Whether a TCP connection from the VM side, as `uid`, is accepted."""
        prefix = [] if uid == 0 else ["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                      "--clear-groups"]
        return self.vm([*prefix, SYSTEM_PYTHON, "-c", _connect(address, port, timeout)],
                       check=False, timeout=timeout + 10).returncode == 0

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        for process in [*self.processes, *([self.holder] if self.holder else [])]:
            process.kill()
            process.wait(timeout=10)
        for ns in (self.vm_ns, self.platform_ns):
            # Stray processes (a daemonized dhclient) die with no namespace left to them.
            listed = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in listed:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            run(["ip", "netns", "delete", ns], check=False)


def _connect(address: str, port: int, timeout: float) -> str:
    return (f"import socket; socket.create_connection(({address!r}, {port}), "
            f"timeout={timeout}).close()")


def waagent(lab: NetLab, *args: str) -> subprocess.CompletedProcess[str]:
    """The agent on the VM side, root=/ (that side's kernel, the private mounts)."""
    return lab.vm([str(BIN / "waagent"), *args], check=False, timeout=120)
