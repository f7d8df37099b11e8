"""Loop devices and VM roots for the resource disk tests, and the cleanup that always runs.

A VM root here is a directory the agent runs against (`root=`), shaped like a VM:
- dev/: a directory of its own (never the host's /dev, so no host link such as
  /dev/disk/azure/resource is ever seen), holding the test's loop device node,
  null/zero/urandom, and dev/disk/azure/resource -> ../../loopN;
- a small "udev" thread mirrors the kernel's partition nodes of that loop device
  (and the agent's dm-crypt swap devices) into dev/ as they come and go, so the agent
  waits for partition nodes just as it does for udev on a VM;
- sys/block, sys/devices and proc: bind mounts of the host's (the agent resolves every
  path inside the root as a chroot would, so symlinks out of it would not do), since
  mounts and swaps are kernel-global anyway (the agent compares them as real paths below
  the root); no sys/bus, so the host's own VMBus disks are never seen.
Cleanup undoes only what is below the root or on the test's loop device.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WAAGENT = Path(sys.executable).parent / "waagent"
CRYPT_PREFIX = "waagent-swap-"


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a test-side command (never through the agent's Runner)."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, input=input,
                          timeout=120)


@contextlib.contextmanager
def loop_device(directory: Path, size: int = 1024**3) -> Iterator[str]:
    """A loop device with partition scanning over a sparse file; detached afterwards."""
    backing = directory / "disk.img"
    with open(backing, "wb") as handle:
        handle.truncate(size)
    device = sh("losetup", "-P", "-f", "--show", str(backing)).stdout.strip()
    try:
        yield device
    finally:
        sh("losetup", "-d", device, check=False)


class Udev(threading.Thread):
    """Mirrors the loop device's partition nodes and the agent's dm devices into root/dev."""

    def __init__(self, root: Path, device: str) -> None:
        super().__init__(daemon=True)
        self.dev = root / "dev"
        self.name = Path(device).name
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sync()
            self.stopped.wait(0.02)

    def stop(self) -> None:
        self.stopped.set()
        self.join()

    def sync(self) -> None:
        wanted: dict[Path, int] = {}
        sys_disk = Path("/sys/block") / self.name
        with contextlib.suppress(FileNotFoundError):
            for child in sys_disk.iterdir():
                if (child / "partition").exists():
                    with contextlib.suppress(OSError, ValueError):
                        wanted[self.dev / child.name] = _devnum(child / "dev")
        for dm in Path("/sys/block").glob("dm-*"):
            with contextlib.suppress(OSError, ValueError):
                name = (dm / "dm/name").read_text().strip()
                if name.startswith(CRYPT_PREFIX):
                    wanted[self.dev / "mapper" / name] = _devnum(dm / "dev")
        for node, rdev in wanted.items():
            with contextlib.suppress(OSError):
                st = os.lstat(node)
                if st.st_rdev == rdev:
                    continue
                node.unlink()
            with contextlib.suppress(OSError):
                node.parent.mkdir(exist_ok=True)
                os.mknod(node, stat.S_IFBLK | 0o600, rdev)
        for node in [*self.dev.glob(self.name + "p*"), *self.dev.glob("mapper/*")]:
            if node not in wanted:
                with contextlib.suppress(OSError):
                    node.unlink()


def _devnum(path: Path) -> int:
    major, minor = path.read_text().strip().split(":")
    return os.makedev(int(major), int(minor))


@dataclass
class VM:
    """A VM root over a loop device, with the helpers the tests need."""

    root: Path
    device: str  # host path of the loop device, e.g. /dev/loop3
    conf: Path

    @property
    def name(self) -> str:
        return Path(self.device).name

    @property
    def partition(self) -> str:
        """Host node of partition 1."""
        return f"{self.device}p1"

    def configure(self, **options: str) -> None:
        """Write waagent.conf with ResourceDisk.<key>=value lines (plus test defaults)."""
        values = {"Format": "y", "Filesystem": "ext4", "MountPoint": "/mnt/resource",
                  "EnableSwap": "n", "SwapSizeMB": "0"}
        values.update(options)
        self.conf.write_text("".join(f"ResourceDisk.{k}={v}\n" for k, v in values.items())
                             + "Logs.Console=y\n")

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`waagent run disk root=... conf=...` (or other doit arguments)."""
        argv = [str(WAAGENT), *(args or ("run", "disk")), f"root={self.root}",
                f"conf={self.conf}"]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                              check=False)

    def agent_process(self) -> subprocess.Popen[str]:
        return subprocess.Popen([str(WAAGENT), "run", "disk", f"root={self.root}",
                                 f"conf={self.conf}"], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def last_report(self) -> dict[str, dict[str, object]]:
        """Task results of the newest run report: {"disk:mkfs": {"result": ...}, ...}."""
        runs = sorted((self.root / "var/lib/waagent/runs").glob("*.json"))
        tasks: dict[str, dict[str, object]] = json.loads(runs[-1].read_text())["tasks"]
        return tasks

    def mount_target(self, mount_point: str = "/mnt/resource") -> Path:
        return self.root / mount_point.lstrip("/")

    def mounted_source(self, mount_point: str = "/mnt/resource") -> int | None:
        """Device number mounted at the mount point, or None."""
        out = sh("findmnt", "-n", "-o", "SOURCE", "--mountpoint",
                 str(self.mount_target(mount_point)), check=False)
        source = out.stdout.strip().splitlines()
        return os.stat(source[-1]).st_rdev if source else None

    def mount_options(self, mount_point: str = "/mnt/resource") -> list[str]:
        out = sh("findmnt", "-n", "-o", "OPTIONS", "--mountpoint",
                 str(self.mount_target(mount_point)))
        return out.stdout.strip().split(",")

    def swaps(self) -> dict[str, int]:
        """Active swaps below this root: real path -> size in KiB."""
        found = {}
        for line in Path("/proc/swaps").read_text().splitlines()[1:]:
            fields = line.split()
            if fields and fields[0].startswith(str(self.root) + "/"):
                found[fields[0]] = int(fields[2])
        return found

    def uuid(self) -> str:
        return sh("blkid", "-p", "-s", "UUID", "-o", "value", self.partition).stdout.strip()

    def fstype(self) -> str:
        return sh("blkid", "-p", "-s", "TYPE", "-o", "value", self.partition,
                  check=False).stdout.strip()

    def settle_partition(self) -> None:
        """Make the kernel see a table the test wrote, and wait for the node."""
        sh("partx", "--update", self.device)
        for _ in range(200):
            if Path(self.partition).exists():
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.partition} did not appear")


def cleanup(root: Path, device: str) -> None:
    """Undo what a test (or the agent in it) left: swaps below the root, dm-crypt devices
    over files below the root, mounts below the root, in reverse order."""
    prefix = str(root) + "/"
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].startswith(prefix):
            sh("swapoff", fields[0], check=False)
    for dm in Path("/sys/block").glob("dm-*"):
        with contextlib.suppress(OSError):
            name = (dm / "dm/name").read_text().strip()
            backing = [(s / "loop/backing_file").read_text().strip()
                       for s in (dm / "slaves").iterdir() if (s / "loop").exists()]
            if name.startswith(CRYPT_PREFIX) and any(b.startswith(prefix) for b in backing):
                sh("cryptsetup", "close", name, check=False)
    partitions = {os.stat(n).st_rdev for n in Path("/dev").glob(Path(device).name + "p*")}
    targets = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split(" ")[4].replace("\\040", " ")
        major, minor = line.split(" ")[2].split(":")
        if target.startswith(prefix) or os.makedev(int(major), int(minor)) in partitions:
            targets.append(target)
    for target in reversed(targets):
        sh("umount", "-l", target, check=False)


@contextlib.contextmanager
def vm_root(directory: Path, device: str) -> Iterator[VM]:
    """A VM root whose resource disk is `device`; everything undone afterwards."""
    root = (directory / "vm").resolve()
    dev = root / "dev"
    (dev / "disk/azure").mkdir(parents=True)
    (dev / "mapper").mkdir()
    (root / "etc").mkdir()
    for name in ("null", "zero", "urandom"):
        os.mknod(dev / name, stat.S_IFCHR | 0o666, os.stat(f"/dev/{name}").st_rdev)
    os.mknod(dev / Path(device).name, stat.S_IFBLK | 0o600, os.stat(device).st_rdev)
    (dev / "disk/azure/resource").symlink_to(f"../../{Path(device).name}")
    udev = Udev(root, device)
    try:
        # /sys/block's entries link to ../devices/...: both are needed.
        for host in ("/proc", "/sys/block", "/sys/devices"):
            (root / host.lstrip("/")).mkdir(parents=True)
            sh("mount", "--bind", host, str(root / host.lstrip("/")))
        udev.start()
        yield VM(root, device, directory / "waagent.conf")
    finally:
        if udev.is_alive():
            udev.stop()
        cleanup(root, device)


# -- disks as the platform hands them out, and as users leave them

def make_fresh_ntfs(vm: VM, extra_files: dict[str, bytes] | None = None) -> None:
    """The platform's fresh disk: MBR, one type-7 partition, NTFS with only the README."""
    sh("sfdisk", "-q", vm.device, input="label: dos\ntype=7\n")
    vm.settle_partition()
    sh("mkntfs", "-Q", "-q", "-F", vm.partition)
    files = {"DATALOSS_WARNING_README.txt": b"WARNING: THIS IS A TEMPORARY DISK.\r\n"}
    files.update(extra_files or {})
    for name, data in files.items():
        source = vm.root.parent / name
        source.write_bytes(data)
        sh("ntfscp", vm.partition, str(source), name)


MSR_TYPE = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
BASIC_DATA_TYPE = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"


def make_fresh_ntfs_over_2_tib(vm: VM) -> None:
    """The platform's disk over 2 TiB: GPT, partition 1 Microsoft reserved (no file
    system), partition 2 NTFS with only the README (kept small: mkntfs -Q is quick)."""
    sh("sfdisk", "-q", vm.device, input=f"label: gpt\nsize=16MiB, type={MSR_TYPE}\n"
       f"size=256MiB, type={BASIC_DATA_TYPE}\n")
    vm.settle_partition()
    second = f"{vm.device}p2"
    for _ in range(200):
        if Path(second).exists():
            break
        time.sleep(0.05)
    sh("mkntfs", "-Q", "-q", "-F", second)
    source = vm.root.parent / "DATALOSS_WARNING_README.txt"
    source.write_bytes(b"WARNING: THIS IS A TEMPORARY DISK.\r\n")
    sh("ntfscp", second, str(source), source.name)


def add_ntfs_files(vm: VM, files: dict[str, bytes]) -> None:
    """Files (paths with folders) on partition 1's NTFS, through an ntfs-3g mount that is
    gone afterwards (ntfscp cannot make folders)."""
    scratch = vm.root.parent / "ntfs-mount"
    scratch.mkdir(exist_ok=True)
    sh("ntfs-3g", vm.partition, str(scratch))
    try:
        for name, data in files.items():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            (scratch / name).write_bytes(data)
    finally:
        sh("umount", str(scratch))


def zero(device: str, offset: int, length: int) -> None:
    """Overwrite bytes of the test's own device with zeros (a damaged partition table)."""
    with open(device, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes(length))
        handle.flush()
        os.fsync(handle.fileno())


def forget_partitions(vm: VM) -> None:
    """Make the kernel drop the partitions of a table the test damaged."""
    sh("partx", "--delete", vm.device, check=False)
    for _ in range(200):
        if not Path(vm.partition).exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"{vm.partition} did not go away")


def make_user_filesystem(vm: VM, fstype: str = "ext4", table: str = "dos") -> str:
    """One partition with a filesystem holding a user's file; returns its UUID."""
    sh("sfdisk", "-q", vm.device, input=f"label: {table}\ntype=83\n" if table == "dos"
       else "label: gpt\ntype=linux\n")
    vm.settle_partition()
    sh(f"mkfs.{fstype}", "-q", "-f" if fstype in ("xfs", "btrfs") else "-F", vm.partition)
    scratch = vm.root.parent / "user-mount"
    scratch.mkdir()
    sh("mount", vm.partition, str(scratch))
    try:
        (scratch / "important.db").write_text("user data\n")
    finally:
        sh("umount", str(scratch))
    return vm.uuid()


def read_user_file(vm: VM) -> str:
    """The user's file, read through a private read-only mount."""
    scratch = vm.root.parent / "check-mount"
    scratch.mkdir(exist_ok=True)
    sh("mount", "-o", "ro", vm.partition, str(scratch))
    try:
        return (scratch / "important.db").read_text()
    finally:
        sh("umount", str(scratch))
