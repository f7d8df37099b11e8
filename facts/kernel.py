"""Kernel facts for the kernel area: SCSI disk timeouts, the boot id, the Hyper-V entropy
table, loaded modules, RDMA hardware and the DAPL configuration (dat.conf).

All read through the Root (tests build `sys/`, `proc/` and `dev/` in a temporary root);
none changes anything.
"""

import re
from typing import NamedTuple

from system.errors import ProbeFailed
from system.root import Root

ENTROPY_TABLE = "/sys/firmware/acpi/tables/OEM0"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
# Where the DAPL providers are configured (Intel MPI reads it), in waagent's order.
DAT_CONF_PATHS = ("/etc/dat.conf", "/etc/rdma/dat.conf", "/usr/local/etc/dat.conf")
RDMA_DEVICE = "/dev/hvnd_rdma"  # Network Direct
INFINIBAND = "/sys/class/infiniband"  # SR-IOV
RDMA_DRIVER = "hv_network_direct"
KVP_POOL = "/var/lib/hyperv/.kvp_pool_0"
_KVP_KEY, _KVP_VALUE = 512, 2048
# (Compiled where used, by re's cache: only the RDMA task reads dat.conf.)
_DAT_LINE = (r'(?m)^(ofa-v2-ib0 u2\.0 nonthreadsafe default libdaplofa\.so\.2 dapl\.2\.0 )'
             r'"\S+ 0"')


def scsi_disks(root: Root) -> tuple[str, ...]:
    """SCSI disks (`sd*` in /sys/block), sorted: waagent sets the timeout of every one."""
    block = root / "sys/block"
    try:
        return tuple(sorted(e.name for e in block.iterdir() if e.name.startswith("sd")))
    except FileNotFoundError:
        raise ProbeFailed("SCSI disks: /sys/block does not exist (is sysfs mounted?)") from None
    except OSError as err:
        raise ProbeFailed(f"SCSI disks: cannot list /sys/block: {err.strerror}") from None


def scsi_timeout_path(disk: str) -> str:
    """The system path of a disk's SCSI command timeout (seconds)."""
    return f"/sys/block/{disk}/device/timeout"


def scsi_timeouts(root: Root) -> dict[str, str | None]:
    """Each SCSI disk's timeout as the kernel shows it (None: the disk has no such file)."""
    found: dict[str, str | None] = {}
    for disk in scsi_disks(root):
        try:
            text = root.follow(scsi_timeout_path(disk)).read_text()
        except FileNotFoundError:
            found[disk] = None
            continue
        except OSError as err:
            raise ProbeFailed(f"cannot read {scsi_timeout_path(disk)}: {err.strerror}") \
                from None
        found[disk] = (text.splitlines() or [""])[0].strip()
    return found


def boot_id(root: Root) -> str | None:
    """This boot's id, or None when the root shows no running kernel (an image)."""
    try:
        return root.follow(BOOT_ID).read_text().strip() or None
    except FileNotFoundError:
        return None


def has_entropy_table(root: Root) -> bool:
    """True when Hyper-V offers its entropy table (ACPI OEM0)."""
    return root.follow(ENTROPY_TABLE).is_file()


def module_loaded(root: Root, name: str) -> bool:
    """True when the kernel has module `name` (loaded or built in)."""
    if (root / "sys/module" / name).is_dir():
        return True
    try:
        text = root.follow("/proc/modules").read_text()
    except FileNotFoundError:
        return False
    return any(line.split(" ", 1)[0] == name for line in text.splitlines())


def module_version(root: Root, name: str) -> tuple[int, ...] | None:
    """A loaded module's version (`/sys/module/NAME/version`), when it declares one."""
    try:
        text = (root / "sys/module" / name / "version").read_text().strip()
    except FileNotFoundError:
        return None
    match = re.match(r"(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


class RdmaHardware(NamedTuple):
    """The RDMA hardware the kernel shows: Network Direct or SR-IOV InfiniBand."""

    network_direct: bool  # /dev/hvnd_rdma, or the KVP pool names an ND driver version
    infiniband: tuple[str, ...]  # /sys/class/infiniband entries (SR-IOV)
    nd_version: str | None

    @property
    def present(self) -> bool:
        return self.network_direct or bool(self.infiniband)

    def describe(self) -> str:
        if self.network_direct:
            return f"Network Direct ({RDMA_DEVICE}" + (
                f", driver {self.nd_version})" if self.nd_version else ")")
        if self.infiniband:
            return f"SR-IOV InfiniBand ({', '.join(self.infiniband)})"
        return f"none ({RDMA_DEVICE} absent, {INFINIBAND} empty, no NdDriverVersion in " \
               f"{KVP_POOL})"


def kvp_value(data: bytes, key: str) -> str | None:
    """A value of a Hyper-V KVP pool file (records of a 512-byte key, a 2048-byte value)."""
    record = _KVP_KEY + _KVP_VALUE
    for start in range(0, len(data) - record + 1, record):
        name = data[start:start + _KVP_KEY].partition(b"\0")[0].decode(errors="replace")
        if name == key:
            value = data[start + _KVP_KEY:start + record].partition(b"\0")[0]
            return value.decode(errors="replace") or None
    return None


def rdma_hardware(root: Root) -> RdmaHardware:
    """What RDMA hardware this VM has (a stat and two small reads)."""
    try:
        nd_version = kvp_value(root.follow(KVP_POOL).read_bytes(), "NdDriverVersion")
    except FileNotFoundError:
        nd_version = None
    try:
        infiniband = tuple(sorted(e.name for e in (root / INFINIBAND).iterdir()))
    except FileNotFoundError:
        infiniband = ()
    network_direct = (root / RDMA_DEVICE).exists() or nd_version is not None
    return RdmaHardware(network_direct, infiniband, nd_version)


def dat_conf_path(root: Root) -> str | None:
    """The first dat.conf that exists, in waagent's order."""
    return next((p for p in DAT_CONF_PATHS if root.follow(p).is_file()), None)


def dat_conf_with_address(text: str, address: str) -> str:
    """dat.conf with the ofa-v2-ib0 provider bound to `address`; the line is added when
    the file has none (Intel MPI looks the provider up by name)."""
    if re.search(_DAT_LINE, text):
        return re.sub(_DAT_LINE, lambda m: f'{m.group(1)}"{address} 0"', text)
    tail = "" if not text or text.endswith("\n") else "\n"
    return (f'{text}{tail}ofa-v2-ib0 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 '
            f'"{address} 0" ""\n')
