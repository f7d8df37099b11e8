"""A VM on this machine: a real Debian root in namespaces, the fabric in the network next door.

    with lab(work, scenario_file, conf=...) as vm_lab:
        vm_lab.vm.run(["waagent", "provision"])
        vm_lab.ssh("hostname")

What a lab is made of, each undone in reverse order on leaving, also on failure:
- two network namespaces joined by a veth pair on documentation addresses: "fabric"
  (192.0.2.1) and "vm" (eth0, 192.0.2.10 by DHCP). The VM namespace has no default
  route, so nothing an agent tries (IMDS, 168.63.129.16) can leave it;
- dnsmasq in the fabric namespace: DHCP with option 245 = the fabric, as on Azure;
- the fabric (`waagent-fabric serve`) on 192.0.2.1, WireServer on port 80 and
  HostGAPlugin on 32526 as the agents expect, IMDS on 169.254.169.254:80 (an address
  of the fabric's namespace, routed over the VM's link; also on the WireServer port);
  its record file is read by the tests;
- two loop devices: the scenario's provisioning ISO (the VM's /dev/sr0) and a sparse
  resource disk (behind /dev/disk/azure/resource);
- the VM: a fresh copy of the cached Debian root (Debian 12 by default, or `suite=` another
  release: see debian_root.SUITES), entered in new mount, UTS and PID
  namespaces inside the VM network namespace, with its own /proc, /sys (the scenario's
  DMI product_uuid added), a minimal /dev and /run, chrooted; PID 1 is a small reaper.
  Commands run in it with nsenter, as if typed on its console.

Nothing of the host is changed: every namespace, mount, loop device and process here is
made by the lab and removed by it (mounts die with the VM's mount namespace). The test
process itself never opens a socket: ssh and the agents run inside the namespaces.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabric import build_media, load_scenario
from fabric.scenario import Scenario
from tests.sandbox import product_uuid_for
from tests.support import debian_root

REPO = Path(__file__).resolve().parents[2]
FABRIC_ADDRESS = "192.0.2.1"
VM_ADDRESS = "192.0.2.10"
IMDS_ADDRESS = "169.254.169.254"  # held by the fabric's namespace only (Network.__enter__)
# The fabric's control channel, on the fabric namespace's own loopback: only the lab's
# `ip netns exec` reaches it (FabricServer.control), never the VM.
CONTROL_PORT = 8081
# What the agent needs in the VM besides the default root: python3 to run, sfdisk (fdisk)
# to partition the resource disk, mkfs.ext4 (e2fsprogs: in minbase up to Debian 12, not
# in 13) to format it, openssl for the transport pair and certificates.
OUR_PACKAGES: tuple[str, ...] = (*debian_root.DEFAULT_PACKAGES, "python3", "fdisk",
                                 "e2fsprogs", "openssl")
# The agent's Python dependencies are copied from this interpreter's environment. Those of
# them with modules compiled for this Python only (cpython-3XX, not the stable ABI) come
# from the VM's Debian release when its python3 is another: distribution name -> package.
DEBIAN_BUILDS: dict[str, str] = {
    "cffi": "python3-cffi",  # _cffi_backend, which cryptography's bindings load
    "pyyaml": "python3-yaml",
    "charset-normalizer": "python3-charset-normalizer",
}
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# The published agent for the benchmarks, and xorriso to read its DVD (see bench/ready.py).
WAAGENT_PACKAGES: tuple[str, ...] = (*OUR_PACKAGES, "waagent", "xorriso")
HOST_TOOLS = ("ip", "unshare", "nsenter", "chroot", "losetup", "mount", "mknod", "dnsmasq",
              "ssh")
VM_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
          "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
# Where the agent is installed in the VM, and its launcher (first in PATH, as /usr/sbin
# would hold a distribution's waagent).
AGENT_DIR = "opt/waagent-graph"
AGENT_LAUNCHER = "usr/local/sbin/waagent"
AGENT_PACKAGES = ("conf", "facts", "wire", "system", "graph", "tasks")
LAUNCHER = """\
#!/bin/sh
# waagent-graph, installed by tests/e2e/harness.py
PYTHONPATH=/{dir} exec /usr/bin/python3 -c \
'import sys; from graph.cli import main; sys.exit(main())' "$@"
"""
COMMAND_TIMEOUT = 300
_tags = itertools.count()


def root_packages(packages: Sequence[str] = OUR_PACKAGES, suite: str = debian_root.SUITE,
                  install_ours: bool = True) -> tuple[str, ...]:
    """The Debian packages of a lab's root: `packages`, and when our agent goes into a root
    whose python3 is not this one, the Debian builds of its compiled dependencies."""
    if not install_ours or debian_root.SUITES[suite].python == HOST_PYTHON:
        return tuple(packages)
    return (*packages, *sorted(DEBIAN_BUILDS.values()))


def skip_reason(packages: Sequence[str] = OUR_PACKAGES,
                suite: str = debian_root.SUITE) -> str | None:
    """Why a lab cannot be had here (None when it can)."""
    if os.geteuid() != 0:
        return "the e2e lab needs root (namespaces, loop devices, chroot)"
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        return "missing tools: " + ", ".join(missing)
    return debian_root.skip_reason(root_packages(packages, suite), suite)


@dataclass
class Captured:
    """A finished command: exit status and output."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def check(self) -> Captured:
        if self.returncode != 0:
            raise AssertionError(f"{' '.join(self.argv)} exited {self.returncode}:\n"
                                 f"{self.output[-4000:]}")
        return self


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
        env: dict[str, str] | None = None, timeout: float = COMMAND_TIMEOUT) -> Captured:
    """Run a command, output to temporary files: a daemon it starts (dhclient, sshd) may keep
    its copies of stdout/stderr, which would block a pipe reader until the VM dies."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        done = subprocess.run(list(argv), stdout=out, stderr=err, timeout=timeout, env=env,
                              input=input.encode() if input is not None else None,
                              stdin=None if input is not None else subprocess.DEVNULL)
        out.seek(0)
        err.seek(0)
        result = Captured(list(argv), done.returncode, out.read().decode(errors="replace"),
                          err.read().decode(errors="replace"))
    return result.check() if check else result


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- the network


class Network:
    """Two network namespaces joined by a veth pair: fabric (veth0) and vm (eth0)."""

    def __init__(self, tag: str) -> None:
        self.fabric_ns = f"waagent-e2e-fabric-{tag}"
        self.vm_ns = f"waagent-e2e-vm-{tag}"
        self._made: list[str] = []

    def __enter__(self) -> Network:
        try:
            for ns in (self.fabric_ns, self.vm_ns):
                run(["ip", "netns", "add", ns])
                self._made.append(ns)
            # Created straight in the namespaces: no interface ever exists on the host.
            run(["ip", "link", "add", "veth0", "netns", self.fabric_ns, "type", "veth",
                 "peer", "name", "eth0", "netns", self.vm_ns])
            run(["ip", "-n", self.fabric_ns, "addr", "add", f"{FABRIC_ADDRESS}/24",
                 "dev", "veth0"])
            for ns, nic in ((self.fabric_ns, "veth0"), (self.fabric_ns, "lo"),
                            (self.vm_ns, "lo"), (self.vm_ns, "eth0")):
                run(["ip", "-n", ns, "link", "set", nic, "up"])
            # IMDS where agents look for it: the fabric also holds 169.254.169.254, and the VM
            # reaches it over its link. Only once both namespaces are shown to have no way out.
            for ns in (self.fabric_ns, self.vm_ns):
                assert_no_route_out(ns)
            run(["ip", "-n", self.fabric_ns, "addr", "add", f"{IMDS_ADDRESS}/32", "dev", "veth0"])
            run(["ip", "-n", self.vm_ns, "route", "add", f"{IMDS_ADDRESS}/32", "dev", "eth0"])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in reversed(self._made):
            kill_namespace_processes(ns)
            run(["ip", "netns", "delete", ns], check=False)
        self._made.clear()

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]


def assert_no_route_out(ns: str) -> None:
    """Refuse to go on unless a namespace of ours has only the lab's links (lo, the veth pair)
    and no default route: then an address it holds or routes (169.254.169.254) stays inside."""
    links = json.loads(run(["ip", "-n", ns, "-j", "link", "show"]).stdout or "[]")
    foreign = [link["ifname"] for link in links if link["ifname"] not in ("lo", "veth0", "eth0")]
    routes = json.loads(run(["ip", "-n", ns, "-j", "route", "show", "table", "all"]).stdout or "[]")
    routes += json.loads(run(["ip", "-n", ns, "-6", "-j", "route", "show", "table", "all"]).stdout or "[]")
    out = [route for route in routes if route.get("dst") == "default" or "gateway" in route
           or route.get("dev") not in (None, "lo", "veth0", "eth0")]
    if foreign or out:
        raise AssertionError(f"namespace {ns} is not closed: links {foreign}, routes {out}; "
                             f"refusing to give it {IMDS_ADDRESS}")


def namespace_pids(ns: str) -> list[int]:
    """Processes in a network namespace of ours (all of them were started by the lab)."""
    listed = run(["ip", "netns", "pids", ns], check=False)
    return [int(pid) for pid in listed.stdout.split()]


def kill_namespace_processes(ns: str) -> None:
    """SIGKILL what still runs in one of our namespaces, and wait until it is gone."""
    for _ in range(50):
        pids = namespace_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


# ---------------------------------------------------------------- fabric side


class Dnsmasq:
    """DHCP in the fabric namespace: 192.0.2.10 for the VM, option 245 = the fabric.

    No router and no DNS server are offered (the VM gets no default route). Option 245
    is forced: Azure's DHCP sends it whether or not the client asks, and Debian's
    dhclient.conf does not ask for it.
    """

    def __init__(self, net: Network, work: Path) -> None:
        self.net = net
        self.work = work
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Dnsmasq:
        log = open(self.work / "dnsmasq.log", "wb")  # noqa: SIM115 - closed in __exit__
        self._log = log
        self.process = subprocess.Popen(self.net.exec_argv(self.net.fabric_ns, [
            "dnsmasq", "--keep-in-foreground", "--log-dhcp", "--log-facility=-",
            "--conf-file=/dev/null", "--port=0", "--no-resolv", "--no-hosts",
            "--interface=veth0", "--bind-interfaces", "--dhcp-authoritative",
            f"--dhcp-range={VM_ADDRESS},{VM_ADDRESS},255.255.255.0,1h",
            "--dhcp-option=3", "--dhcp-option=6",
            f"--dhcp-option-force=245,{FABRIC_ADDRESS}",
            f"--dhcp-leasefile={self.work / 'dnsmasq.leases'}", "--pid-file=",
            "--user=root", "--group=root"]),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.process)
        self._log.close()


class FabricServer:
    """`waagent-fabric serve` in the fabric namespace; the record file is what it received."""

    def __init__(self, scenario_file: Path, net: Network, work: Path) -> None:
        self.scenario_file = scenario_file
        self.net = net
        self.record_path = work / "fabric-record.json"
        self.log_path = work / "fabric.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FabricServer:
        fabric_cli = Path(sys.executable).parent / "waagent-fabric"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.net.exec_argv(self.net.fabric_ns, [
                str(fabric_cli), "serve", str(self.scenario_file), "--bind", FABRIC_ADDRESS,
                "--wire-port", "80", "--hostplugin-port", "32526",
                "--imds-bind", IMDS_ADDRESS, "--imds-port", "80",
                "--control", f"127.0.0.1:{CONTROL_PORT}",
                "--record", str(self.record_path)]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            # It prints its URLs once it listens.
            wait_until(lambda: self.process.poll() is not None  # type: ignore[union-attr]
                       or "hostplugin " in self.log_path.read_text(), 60, "the fabric")
            if self.process.poll() is not None:
                raise AssertionError(f"the fabric exited: {self.log_path.read_text()[-3000:]}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.process, signal.SIGTERM)  # SIGTERM: it writes the record once more

    def record(self) -> dict[str, Any]:
        """The record as last written (after every report the fabric received)."""
        try:
            data: dict[str, Any] = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            return {}
        return data

    def health_reports(self) -> list[dict[str, Any]]:
        return list(self.record().get("health", []))

    def status_blobs(self) -> list[dict[str, Any]]:
        """Every status blob received: {"time", "via", "status", "problems", ...}."""
        return list(self.record().get("status_blobs", []))

    def control(self, action: str | None = None, **arguments: Any) -> dict[str, Any]:
        """One control request (fabric/README.md), sent from inside the fabric's namespace
        with `waagent-fabric control`; its answer. No action: the fabric's state."""
        fabric_cli = Path(sys.executable).parent / "waagent-fabric"
        argv = [str(fabric_cli), "control", str(CONTROL_PORT)]
        if action is not None:
            argv += [action, *(f"{key}={json.dumps(value)}" for key, value in arguments.items())]
        done = run(self.net.exec_argv(self.net.fabric_ns, argv), timeout=60)
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def wait_for_health(self, state: str, timeout: float = 60) -> dict[str, Any]:
        """The first health report in `state` (e.g. "Ready"), waiting for it."""
        def found() -> dict[str, Any] | None:
            return next((h for h in self.health_reports() if h["state"] == state), None)
        report: dict[str, Any] = wait_until(found, timeout, f"a {state} report at the fabric")
        return report


def stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Stop a process the lab started: `sig`, then SIGKILL after 10 s."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# ---------------------------------------------------------------- devices


@contextlib.contextmanager
def loop_device(backing: Path, *, read_only: bool = False,
                partitions: bool = False) -> Iterator[str]:
    """A loop device over `backing` (host path /dev/loopN), detached afterwards."""
    argv = ["losetup", "-f", "--show"]
    argv += ["-r"] if read_only else []
    argv += ["-P"] if partitions else []
    device = run([*argv, str(backing)]).stdout.strip()
    try:
        yield device
    finally:
        run(["losetup", "-d", device], check=False)


def release_orphan_swaps(disk: str) -> None:
    """Last resort when the VM died before turning its swap off: a swap file keeps its file
    system alive after the VM's mounts are gone, and the disk busy. Host /proc/swaps names
    such a file from its file system's root, so it is found again on a private mount."""
    swaps = [line.split()[0] for line in
             Path("/proc/swaps").read_text().splitlines()[1:]]
    for partition in sorted(Path("/dev").glob(Path(disk).name + "p*")):
        try:
            os.close(os.open(partition, os.O_RDONLY | os.O_EXCL))
            continue  # not mounted anywhere, nothing holds it
        except OSError:
            pass
        run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount "$1" /mnt && shift && for f; do [ -f "/mnt$f" ] && swapoff "/mnt$f"; done; '
             "true", "sh", str(partition), *swaps], check=False)


def sparse_file(path: Path, size_mb: int) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size_mb * 1024 * 1024)
    return path


def device_numbers(device: str) -> tuple[int, int]:
    rdev = os.stat(device).st_rdev
    return os.major(rdev), os.minor(rdev)


# ---------------------------------------------------------------- the VM


# Run by the host's sh in the VM's new mount, UTS and PID namespaces (inside the VM
# network namespace), before it becomes the VM: the file systems a booted Debian has.
BOOT = r"""
set -eu
root=$1 sysclass=$2 product_uuid=$3 dvd=$4 disk=$5 disk_name=$6
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
# The VM id is DMI's product_uuid, which no sysfs here says (or says the host's): /sys/class
# becomes a tmpfs with every real class bound back in, and a dmi/id of the scenario's VM.
mount --bind "$root/sys/class" "$sysclass"
mount -t tmpfs -o mode=755 sysclass "$root/sys/class"
for class in "$sysclass"/*; do
  name=${class##*/}
  [ "$name" = dmi ] && continue
  mkdir "$root/sys/class/$name" && mount --bind "$class" "$root/sys/class/$name"
done
mkdir -p "$root/sys/class/dmi/id" && echo "$product_uuid" > "$root/sys/class/dmi/id/product_uuid"
# A minimal /dev: the usual nodes, a private devpts, the DVD and the resource disk.
mount -t tmpfs -o mode=755,nosuid dev "$root/dev"
cd "$root/dev"
mknod -m 666 null c 1 3; mknod -m 666 zero c 1 5; mknod -m 666 full c 1 7
mknod -m 666 random c 1 8; mknod -m 666 urandom c 1 9; mknod -m 666 tty c 5 0
mkdir pts shm && mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts pts
mount -t tmpfs -o mode=1777 shm shm
ln -s pts/ptmx ptmx; ln -s /proc/self/fd fd
ln -s fd/0 stdin; ln -s fd/1 stdout; ln -s fd/2 stderr
mknod -m 660 sr0 b ${dvd%:*} ${dvd#*:}
mknod -m 660 "$disk_name" b ${disk%:*} ${disk#*:}
mkdir -p disk/azure && ln -s "../../$disk_name" disk/azure/resource
cd /
mount -t tmpfs -o mode=755,nosuid,nodev run "$root/run"
hostname localhost
exec chroot "$root" /usr/bin/python3 -c "$7"
"""

# PID 1 of the VM: says it is up, then reaps orphans (daemonized sshd, dhclient) forever.
INIT = """
import os, sys, time
print("booted", flush=True)
os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.1)
"""


class VirtualMachine:
    """The Debian root booted in namespaces; `run` executes a command inside it."""

    def __init__(self, root: Path, net: Network, work: Path, vm_id: str, dvd: str,
                 disk: str) -> None:
        self.root = root
        self.net = net
        self.work = work
        self.vm_id = vm_id
        self.dvd = dvd
        self.disk = disk
        self.pid: int | None = None  # host pid of the VM's PID 1
        self.process: subprocess.Popen[bytes] | None = None
        self.udev: Any = None

    @property
    def disk_name(self) -> str:
        return Path(self.disk).name

    def __enter__(self) -> VirtualMachine:
        sysclass = self.work / "sysclass"
        sysclass.mkdir(exist_ok=True)
        major_minor = [":".join(map(str, device_numbers(d))) for d in (self.dvd, self.disk)]
        boot_log = open(self.work / "vm-boot.log", "wb")  # noqa: SIM115 - closed below
        try:
            self.process = subprocess.Popen(self.net.exec_argv(self.net.vm_ns, [
                "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
                "--propagation", "private",
                "sh", "-c", BOOT, "boot", str(self.root), str(sysclass),
                product_uuid_for(self.vm_id), *major_minor, self.disk_name, INIT]),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=boot_log)
        finally:
            boot_log.close()
        try:
            assert self.process.stdout is not None
            line = self.process.stdout.readline()
            if line.strip() != b"booted":
                self.process.wait(10)
                raise AssertionError("the VM did not boot: "
                                     + (self.work / "vm-boot.log").read_text()[-3000:])
            self.pid = self._init_pid()
            self._start_udev()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _init_pid(self) -> int:
        """Host pid of the process that is PID 1 in the VM's PID namespace."""
        def find() -> int | None:
            for pid in namespace_pids(self.net.vm_ns):
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    nspids = next(line.split()[1:] for line in status.splitlines()
                                  if line.startswith("NSpid:"))
                    if len(nspids) == 2 and nspids[1] == "1":
                        return pid
            return None
        found: int = wait_until(find, 10, "the VM's init")
        return found

    def _start_udev(self) -> None:
        """The VM has no udev: partition nodes of the resource disk are mirrored into its
        /dev as they come and go (tests/integration/diskutil.Udev, through /proc/PID/root)."""
        from tests.integration.diskutil import Udev

        self.udev = Udev(self.view, self.disk)
        self.udev.start()

    @property
    def view(self) -> Path:
        """The VM's file system as it sees it (its mounts included), from the host."""
        return Path(f"/proc/{self.pid}/root")

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", "--target", str(self.pid), "--mount", "--uts", "--net", "--pid",
                "--root", "--wd", "--", *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, input: str | None = None,
            timeout: float = COMMAND_TIMEOUT) -> Captured:
        """Run a command in the VM as root, in a clean environment."""
        return run(self.exec_argv(argv), check=check, input=input, env=VM_ENV,
                   timeout=timeout)

    def popen(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen(self.exec_argv(argv), env=VM_ENV, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)

    def dhcp(self) -> None:
        """What the boot's ifupdown does for `iface eth0 inet dhcp`."""
        self.run(["dhclient", "-1", "-4", "-v", "-pf", "/run/dhclient.eth0.pid",
                  "-lf", "/var/lib/dhcp/dhclient.eth0.leases", "eth0"], timeout=60)

    def start_sshd(self) -> None:
        self.run(["mkdir", "-p", "-m", "0755", "/run/sshd"])
        self.run(["/usr/sbin/sshd"])

    def disk_devices(self) -> set[int]:
        """Device numbers of the resource disk and its partitions (blkext: another major)."""
        numbers = {os.stat(self.disk).st_rdev}
        for dev in Path("/sys/block", self.disk_name).glob("*/dev"):
            with contextlib.suppress(OSError, ValueError):
                major, minor = dev.read_text().split(":")
                numbers.add(os.makedev(int(major), int(minor)))
        return numbers

    def swapoff_ours(self) -> None:
        """Swap is kernel-global and outlives the VM's mounts: turn off every swap area on
        the resource disk before the VM goes (the host's swaps are on other devices)."""
        if self.pid is None:
            return
        ours = self.disk_devices()
        # Read in the VM: /proc/swaps names a file as seen from the reader's root.
        swaps = self.run(["cat", "/proc/swaps"], check=False, timeout=30).stdout
        for line in swaps.splitlines()[1:]:
            path = line.split()[0].replace("\\040", " ")
            with contextlib.suppress(OSError):
                if os.stat(self.view / path.lstrip("/")).st_dev in ours:
                    self.run(["swapoff", path], check=False, timeout=60)

    def __exit__(self, *exc: object) -> None:
        try:
            self.swapoff_ours()
        finally:
            if self.udev is not None:
                self.udev.stop()
                self.udev = None
            if self.pid is not None:
                # PID 1 dying takes every process of the VM with it; the mount namespace
                # and its mounts go with the last of them.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            stop(self.process, signal.SIGKILL)
            kill_namespace_processes(self.net.vm_ns)
            self.pid = None


# ---------------------------------------------------------------- the VM's root


def dependency_closure(name: str) -> list[importlib.metadata.Distribution]:
    """The installed distributions `name` needs at run time (no extras), transitively."""
    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return [dist for key, dist in seen.items() if key != name]


def built_for_this_python(file: importlib.metadata.PackagePath) -> bool:
    """An extension module only this interpreter's version loads (not the stable ABI)."""
    return file.suffix == ".so" and f".cpython-{sys.version_info.major}{sys.version_info.minor}-" \
        in file.name


_agent_trees: dict[str, Path] = {}


def agent_tree(python: str = HOST_PYTHON) -> Path:
    """The agent as installed in a VM whose python3 is `python` (its packages and their
    dependencies), built once per process in a temporary directory and copied into each
    root. For this Python it is compiled here; for another, the VM's python3 compiles it
    (install_agent) and the dependencies in DEBIAN_BUILDS are left to the VM's release."""
    if python in _agent_trees:
        return _agent_trees[python]
    scratch = tempfile.mkdtemp(prefix="waagent-e2e-agent-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    tree = Path(scratch) / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in AGENT_PACKAGES:
        shutil.copytree(REPO / package, tree / package, ignore=ignore)
    shutil.copy2(REPO / "dodo.py", tree / "dodo.py")
    for dist in dependency_closure("waagent-graph"):
        files = [file for file in dist.files or []
                 # console scripts in bin/, stale bytecode
                 if ".." not in file.parts and file.suffix != ".pyc"]
        if python != HOST_PYTHON:
            name = dist.metadata["Name"].lower().replace("_", "-")
            if name in DEBIAN_BUILDS:
                continue
            compiled = [str(file) for file in files if built_for_this_python(file)]
            if compiled:
                raise AssertionError(
                    f"{name} has modules built for Python {HOST_PYTHON} only ({compiled[0]}): "
                    f"a VM with Python {python} cannot load them; add its Debian package "
                    "to DEBIAN_BUILDS in tests/e2e/harness.py")
        for file in files:
            target = tree / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(str(dist.locate_file(file))), target)
    if python == HOST_PYTHON:
        # Compiled now, as a distribution's package is at install.
        run([sys.executable, "-m", "compileall", "-q", "-j0", str(tree)])
    _agent_trees[python] = tree
    return tree


def root_python(root: Path) -> str:
    """major.minor of the root's /usr/bin/python3."""
    name = Path(os.readlink(root / "usr/bin/python3")).name
    return name.removeprefix("python")


def install_agent(root: Path, suite: str = debian_root.SUITE) -> None:
    """waagent-graph into the VM root: /opt/waagent-graph and /usr/local/sbin/waagent."""
    python = debian_root.SUITES[suite].python
    if root_python(root) != python:
        raise AssertionError(f"the {suite} root's python3 is {root_python(root)}, not "
                             f"{python}: correct debian_root.SUITES")
    shutil.copytree(agent_tree(python), root / AGENT_DIR, symlinks=True)
    if python != HOST_PYTHON:
        # Its bytecode made by its python3 at install, as a distribution's package is; the
        # root's own binary runs, chrooted, before the VM exists.
        run(["chroot", str(root), "/usr/bin/python3", "-m", "compileall", "-q",
             f"/{AGENT_DIR}"], env=VM_ENV)
    launcher = root / AGENT_LAUNCHER
    launcher.write_text(LAUNCHER.format(dir=AGENT_DIR))
    launcher.chmod(0o755)


def prepare_root(root: Path, conf: str | None) -> None:
    """What an image for Azure looks like before its first boot: a generic hostname and
    the agent's configuration (None: the root's own, e.g. the waagent package's)."""
    (root / "etc/hostname").write_text("localhost\n")
    if conf is not None:
        (root / "etc/waagent.conf").write_text(conf)


# waagent 2.7.3 (the Debian package) in a lab needs: a `mount` that extracts the DVD (this
# kernel cannot mount ISO 9660 here: xorriso extracts it, `umount` empties it again), a no-op
# `eject` (minbase has none; the daemon dies without it), and no-op ifdown/ifup (its hostname
# publish runs `ifdown eth0 && ifup eth0`, retried 15 s when that fails). bench/ready.py
# explains the measured variants.
WAAGENT_MOUNT = """\
#!/bin/sh
# lab: the kernel cannot mount ISO 9660/UDF here: extract the DVD to the mount point.
for arg; do target=$arg; done
case " $* " in
*" /dev/sr0 "*)
  mkdir -p "$target" && touch "$target/.extracted-dvd" &&
  exec xorriso -osirrox on -indev stdio:/dev/sr0 -extract / "$target" >/dev/null 2>&1;;
esac
exec /usr/bin/mount "$@"
"""
WAAGENT_UMOUNT = """\
#!/bin/sh
# lab: the other half of the mount wrapper: an extracted DVD is emptied.
for arg; do target=$arg; done
if [ -e "$target/.extracted-dvd" ]; then
  find "$target" -mindepth 1 -delete; exit 0
fi
exec /usr/bin/umount "$@"
"""
NO_OP = "#!/bin/sh\n# lab: a no-op stand-in\nexit 0\n"


def set_conf_options(root: Path, options: dict[str, str]) -> None:
    """Set options in the root's /etc/waagent.conf (replaced where present, else added)."""
    import re

    conf = root / "etc/waagent.conf"
    text = conf.read_text()
    for key, value in options.items():
        text, found = re.subn(rf"^{re.escape(key)}=.*$", f"{key}={value}", text, flags=re.M)
        if not found:
            text += f"{key}={value}\n"
    conf.write_text(text)


def install_waagent_helpers(root: Path, *, ifupdown: bool = True) -> None:
    """What waagent 2.7.3 (WAAGENT_PACKAGES) needs to run `-daemon` in a lab (see above);
    `ifupdown=False` leaves out the no-op ifdown/ifup (bench/ready.py measures both)."""
    sbin = root / "usr/local/sbin"
    write_file(sbin / "mount", WAAGENT_MOUNT, 0o755)
    write_file(sbin / "umount", WAAGENT_UMOUNT, 0o755)
    for name in ("eject", *(("ifdown", "ifup") if ifupdown else ())):
        write_file(sbin / name, NO_OP, 0o755)


# What a root both agents run in has on top of the package's waagent.conf (the parity tests,
# the takeover test, the side-by-side benches).
BOTH_AGENTS_OVERRIDES = {"Provisioning.Agent": "waagent", "ResourceDisk.Format": "n",
                         "Provisioning.SshHostKeyPairType": "ed25519",
                         "Provisioning.RegenerateSshHostKeyPair": "y"}


def prepare_both_agents(root: Path, overrides: dict[str, str] | None = None, *,
                        ifupdown: bool = True) -> None:
    """A root both agents run in: BOTH_AGENTS_OVERRIDES (or `overrides`) in its
    waagent.conf, and what waagent 2.7.3 needs (install_waagent_helpers)."""
    set_conf_options(root, BOTH_AGENTS_OVERRIDES if overrides is None else overrides)
    install_waagent_helpers(root, ifupdown=ifupdown)


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


# ---------------------------------------------------------------- the lab


@dataclass
class Lab:
    """A running VM, its fabric and network; what a test talks to."""

    work: Path
    scenario: Scenario
    net: Network
    fabric: FabricServer
    vm: VirtualMachine
    key_file: Path

    @property
    def root(self) -> Path:
        """The VM's root directory on the host (its mounts are not seen here: see vm.view)."""
        return self.vm.root

    def ssh(self, command: str, *, user: str | None = None, check: bool = False) -> Captured:
        """A real ssh from the fabric namespace with the scenario's first key."""
        argv = ["ssh", "-F", "/dev/null", "-i", str(self.key_file), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=10", "-o", "ConnectionAttempts=10",
                f"{user or self.scenario.username}@{VM_ADDRESS}", command]
        return run(self.net.exec_argv(self.net.fabric_ns, argv), check=check, timeout=120)

    def run_reports(self) -> list[dict[str, Any]]:
        """The agent's run reports (var/lib/waagent/runs/*.json), oldest first."""
        runs = sorted((self.root / "var/lib/waagent/runs").glob("*.json"))
        return [json.loads(path.read_text()) for path in runs]

    def ran(self) -> set[str]:
        """Tasks that executed in the agent's last run (changed something, or not, or failed)."""
        return {name for name, entry in self.run_reports()[-1]["tasks"].items()
                if entry.get("result") in ("changed", "no-change", "failed")}


def unique_tag() -> str:
    return f"{os.getpid()}-{next(_tags)}"


@contextlib.contextmanager
def lab(work: Path, scenario_file: Path, *, conf: str | None,
        packages: Sequence[str] = OUR_PACKAGES, install_ours: bool = True,
        prepare: Callable[[Path], None] | None = None, tag: str | None = None,
        suite: str = debian_root.SUITE) -> Iterator[Lab]:
    """A booted VM for `scenario_file` with `conf` as /etc/waagent.conf; all undone after.

    `suite` is the Debian release of its root (debian_root.SUITES); `packages` are the
    Debian packages in it (root_packages adds what our agent needs from that release).

    `prepare(root)` changes the root before boot (the benchmarks install waagent's helpers).
    The root directory is deleted afterwards; logs and the fabric's record stay in `work`.
    `tag` names the namespaces (waagent-e2e-fabric-TAG, waagent-e2e-vm-TAG).
    """
    scenario = load_scenario(scenario_file)
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        root = work / "vm"
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        debian_root.fresh_debian_root(root, root_packages(packages, suite, install_ours), suite)
        prepare_root(root, conf)
        if install_ours:
            install_agent(root, suite)
        if prepare is not None:
            prepare(root)
        key_file = work / "id_scenario"
        write_file(key_file, scenario.ssh_private_key_pem(0), 0o600)
        net = stack.enter_context(Network(tag or unique_tag()))
        stack.enter_context(Dnsmasq(net, work))
        fabric = stack.enter_context(FabricServer(scenario_file, net, work))
        media = build_media(scenario, work / "ovf.iso")
        dvd = stack.enter_context(loop_device(media, read_only=True))
        disk_image = sparse_file(work / "resource.img", scenario.resource_disk_size_mb)
        stack.callback(disk_image.unlink, missing_ok=True)
        disk = stack.enter_context(loop_device(disk_image, partitions=True))
        stack.callback(release_orphan_swaps, disk)
        vm = stack.enter_context(VirtualMachine(root, net, work, scenario.vm_id, dvd, disk))
        yield Lab(work, scenario, net, fabric, vm, key_file)

