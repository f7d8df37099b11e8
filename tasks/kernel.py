"""The kernel area: SCSI timeouts, Hyper-V entropy, NUMA on old kernels, RDMA.

- `kernel:scsi-timeout` writes `OS.RootDeviceScsiTimeout` into
  `/sys/block/sd*/device/timeout`. As waagent 2.7.3 (osutil set_scsi_disks_timeout),
  every SCSI disk gets it, the root disk among them; a disk the kernel reset (a new
  disk, a rescan) is set again by the daemon's `scsi-timeout` monitor
  (`OS.RootDeviceScsiTimeoutPeriod`), which probes the live values.
- `kernel:entropy` seeds `/dev/random` from Hyper-V's ACPI OEM0 table once per boot
  (the boot id is its input); only where the root shows a running kernel.
- `kernel:numa` puts `numa=off` on the kernel command line of kernels before 2.6.37,
  through the serial console's boot loader editing (tasks/serialconsole.py); on newer
  kernels it is up to date and says so.
- `kernel:rdma` (`OS.EnableRDMA`): the RDMA address from SharedConfig on the RDMA
  interface, dat.conf for Intel MPI, and with `OS.CheckRdmaDriver` the hv_network_direct
  driver. Without RDMA hardware it is up to date and says so.

The serial console (`console=ttyS0` in the boot loader) is the `serialconsole` area's
`serialconsole:kernel-cmdline`: waagent runs it on demand (`-serialconsole`), not at boot.
An unset option or absent hardware gives an up-to-date task that says why, so that
`waagent list` shows every kernel task and `waagent plan` explains each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from facts import kernel as facts
from graph.context import Context
from graph.uptodate import Check, Inputs, Probe
from system.errors import AgentError
from tasks import TaskDict, inputs

log = logging.getLogger("waagent.kernel")

NUMA_ARGS = ("numa=off",)
# Hyper-V's NUMA support in Linux starts with 2.6.37 (older kernels crash on large sizes).
NUMA_KERNEL = (2, 6, 37)
RDMA_NETMASK = 16


class RdmaError(AgentError):
    """The RDMA device cannot be set up: what is missing and what to do."""


class Unless(Check):
    """Up to date, saying why (`kept`, plans show it), while `skip_when()` names a reason
    to do nothing; otherwise the check `then` decides."""

    def __init__(self, name: str, skip_when: Callable[[], str | None], then: Check) -> None:
        self.name = name
        self.skip_when = skip_when
        self.then = then

    def __call__(self, task: Any, values: Mapping[str, Any]) -> bool:
        try:
            why = self.skip_when()
        except Exception as err:  # noqa: BLE001 - see Check._cannot_check
            return self._cannot_check(err)
        if why:
            self.kept, self.reason = why, ""
            return True
        self.kept = ""
        done = self.then(task, values)
        self.reason = self.then.reason
        return done

    def __repr__(self) -> str:
        return f"Unless({self.name}, {self.then!r})"


def shows_running_kernel(ctx: Context) -> bool:
    """True for the running system, or a root that shows a running kernel's /proc (a test
    sandbox builds one); an offline image shows none."""
    return ctx.root.is_host or facts.boot_id(ctx.root) is not None


# -- SCSI timeout -------------------------------------------------------------------------

def scsi_timeout_problem(ctx: Context, timeout: int) -> str | None:
    """Probe: the SCSI disks whose timeout is not `timeout`, or None."""
    wrong = [f"{disk}: {value} s" for disk, value in facts.scsi_timeouts(ctx.root).items()
             if value is not None and value != str(timeout)]
    return f"{', '.join(wrong)}; want {timeout} s" if wrong else None


def set_scsi_timeouts(ctx: Context, timeout: int | None) -> None:
    """Write the timeout of every SCSI disk that differs (waagent: set_scsi_disks_timeout);
    nothing while OS.RootDeviceScsiTimeout is unset."""
    from system.kernelfiles import write_kernel_file

    if timeout is None:
        return

    for disk, value in facts.scsi_timeouts(ctx.root).items():
        if value is None or value == str(timeout):
            continue
        write_kernel_file(ctx.run, ctx.root / facts.scsi_timeout_path(disk), f"{timeout}\n",
                          why=f"OS.RootDeviceScsiTimeout={timeout} (was {value})",
                          shown_data=str(timeout))


def scsi_task(ctx: Context) -> TaskDict:
    timeout = ctx.conf.number("OS.RootDeviceScsiTimeout")

    def unset() -> str | None:
        return ("OS.RootDeviceScsiTimeout is unset: the kernel's own SCSI timeouts stay"
                if timeout is None else None)

    return {
        "name": "scsi-timeout",
        "doc": ("OS.RootDeviceScsiTimeout into /sys/block/sd*/device/timeout "
                + (f"({timeout} s)" if timeout is not None else "(unset: nothing to do)")),
        "actions": [(set_scsi_timeouts, [ctx, timeout])],
        "uptodate": [Unless("scsi-timeout", unset, Probe(
            "scsi-timeout", lambda: scsi_timeout_problem(ctx, timeout or 0)))],
    }


# -- Hyper-V entropy ----------------------------------------------------------------------

def entropy_skip(ctx: Context) -> str | None:
    """Why there is nothing to seed, or None."""
    if not facts.has_entropy_table(ctx.root):
        return f"no {facts.ENTROPY_TABLE}: not Hyper-V, or the kernel consumed it"
    if not shows_running_kernel(ctx):
        return (f"root {ctx.root.base} shows no running kernel (no {facts.BOOT_ID}): an "
                "image is seeded when it boots")
    return None


def seed_entropy(ctx: Context) -> None:
    """Write the OEM0 table into /dev/random (`cat OEM0 > /dev/random`)."""
    from system.kernelfiles import write_kernel_file

    skip = entropy_skip(ctx)
    if skip:
        ctx.run.record("skip", "/dev/random", skip)
        return
    seed = ctx.root.follow(facts.ENTROPY_TABLE).read_bytes()
    write_kernel_file(ctx.run, ctx.root / "dev/random", seed,
                      why="seed the random pool from Hyper-V's OEM0 table",
                      shown_data=f"{len(seed)} bytes of {facts.ENTROPY_TABLE}")


def entropy_task(ctx: Context) -> TaskDict:
    return {
        "name": "entropy",
        "doc": f"seed /dev/random from {facts.ENTROPY_TABLE} (Hyper-V), once per boot",
        "actions": [(seed_entropy, [ctx])],
        "uptodate": [Unless("entropy", lambda: entropy_skip(ctx), Inputs(
            "entropy", lambda: {"boot_id": facts.boot_id(ctx.root)}))],
    }


# -- NUMA ---------------------------------------------------------------------------------

def kernel_releases(ctx: Context) -> tuple[str, ...]:
    """The running kernel's release; for an image, its installed kernels (/lib/modules)."""
    from facts.hardware import kernel_release

    if ctx.root.is_host or ctx.root.follow("/proc/sys/kernel/osrelease").exists():
        return (kernel_release(ctx.root),)
    try:
        return tuple(sorted(e.name for e in ctx.root.follow("/lib/modules").iterdir()
                            if e.is_dir()))
    except FileNotFoundError:
        return ()


def old_kernels(releases: tuple[str, ...]) -> tuple[str, ...]:
    """The releases before 2.6.37 (names that are no version are not counted)."""
    from facts.hardware import kernel_older_than

    old = []
    for release in releases:
        try:
            if kernel_older_than(release, NUMA_KERNEL):
                old.append(release)
        except ValueError:
            continue
    return tuple(old)


def numa_skip(ctx: Context) -> str | None:
    """Why NUMA stays on, or None when a kernel before 2.6.37 needs numa=off."""
    releases = kernel_releases(ctx)
    if not releases:
        return (f"root {ctx.root.base} shows no kernel (no /proc/sys/kernel/osrelease, "
                "nothing in /lib/modules): nothing to decide")
    if not old_kernels(releases):
        return f"kernel {', '.join(releases)} is 2.6.37 or newer: NUMA works on Hyper-V"
    return None


def set_numa_off(ctx: Context) -> None:
    """numa=off on the kernel command line, with the root's boot loader tooling (the
    serial console's: grubby, GRUB legacy or GRUB 2; imported here, not at every boot)."""
    from tasks.serialconsole import boot_loader_task

    _doc, (action, args), _probe = boot_loader_task(ctx, NUMA_ARGS,
                                                    "NUMA off on a kernel before 2.6.37")
    action(*args)


def numa_task(ctx: Context) -> TaskDict:
    return {
        "name": "numa",
        "doc": "kernels before 2.6.37: numa=off on the kernel command line (grubby, GRUB "
               "legacy or /etc/default/grub)",
        "actions": [(set_numa_off, [ctx])],
        # Once per set of kernels: an admin who takes numa=off out again is not overruled.
        "uptodate": [Unless("numa", lambda: numa_skip(ctx), Inputs(
            "numa", lambda: {"old_kernels": list(old_kernels(kernel_releases(ctx)))}))],
    }


# -- RDMA ---------------------------------------------------------------------------------

def rdma_skip(ctx: Context) -> str | None:
    """Why there is no RDMA device to set up, or None."""
    hardware = facts.rdma_hardware(ctx.root)
    return None if hardware.present else f"no RDMA hardware: {hardware.describe()}"


def rdma_addresses(ctx: Context) -> tuple[str, str | None]:
    """(IPv4 address, MAC) of the RDMA interface, from this goal state's SharedConfig."""
    def read() -> tuple[str, str | None]:
        state = inputs.goal_state(ctx)
        shared = inputs.wireserver(ctx).shared_config(state)
        instance = shared.rdma if shared is not None else None
        if instance is None or not instance.rdma_ipv4_address:
            raise RdmaError("OS.EnableRDMA=y but SharedConfig has no Instance with an "
                            "rdmaIPv4Address: is this an RDMA-capable (HPC) size?")
        return instance.rdma_ipv4_address, instance.rdma_mac_address

    if ctx.state.rdma_addresses is None:
        ctx.state.rdma_addresses = read()
    return ctx.state.rdma_addresses


def rdma_inputs(ctx: Context) -> dict[str, Any]:
    address, mac = rdma_addresses(ctx)
    # Interface addresses are gone after a reboot: the boot id makes it a per-boot task.
    return {"address": address, "mac": mac, "boot_id": facts.boot_id(ctx.root),
            "check_driver": ctx.conf.flag("OS.CheckRdmaDriver"),
            "dat_conf": facts.dat_conf_path(ctx.root)}


def write_dat_conf(ctx: Context, address: str) -> None:
    """Bind the ofa-v2-ib0 DAPL provider to the RDMA address (waagent: update_dat_conf);
    without any dat.conf, /etc/dat.conf is made with that provider."""
    path = facts.dat_conf_path(ctx.root) or facts.DAT_CONF_PATHS[0]
    try:
        text = ctx.root.follow(path).read_text()
    except FileNotFoundError:
        text = ""
    ctx.fs.write(ctx.root / path, facts.dat_conf_with_address(text, address),
                 why=f"Intel MPI's DAPL provider ofa-v2-ib0 on {address}")


def check_rdma_driver(ctx: Context) -> None:
    """OS.CheckRdmaDriver: hv_network_direct must be loaded; load it on the running system."""
    driver = facts.RDMA_DRIVER
    if facts.module_loaded(ctx.root, driver):
        return
    ctx.run.live(["modprobe", driver], why="RDMA needs the Network Direct driver", check=False)
    if ctx.run.plan or facts.module_loaded(ctx.root, driver):
        return
    raise RdmaError(f"the {driver} kernel module is not loaded and `modprobe {driver}` did "
                    f"not load it: install the Network Direct driver for this kernel "
                    "(OS.UpdateRdmaDriver, or the distribution's package), or set "
                    "OS.CheckRdmaDriver=n")


def rdma_interface(ctx: Context, mac: str | None, hardware: facts.RdmaHardware) -> str:
    """The interface that gets the RDMA address: the NIC with the RDMA MAC (Network
    Direct), or the first IP-over-InfiniBand interface (SR-IOV, waagent's ib0)."""
    from facts.hardware import nics

    found = nics(ctx.root)
    if hardware.network_direct and mac:
        for nic in found:
            if nic.mac and nic.mac.lower() == mac.lower():
                return nic.name
        raise RdmaError(f"no interface has the RDMA MAC address {mac} from SharedConfig "
                        "(/sys/class/net): is the Network Direct driver loaded?")
    ib = sorted(nic.name for nic in found if nic.name.startswith("ib"))
    if not ib:
        raise RdmaError("no IP-over-InfiniBand interface (ib*) in /sys/class/net: load "
                        "ib_ipoib, or check the InfiniBand driver")
    return ib[0]


def setup_rdma(ctx: Context) -> None:
    """waagent's setup_rdma_device: dat.conf, the driver, the device and the interface."""
    from system.kernelfiles import write_kernel_file

    hardware = facts.rdma_hardware(ctx.root)
    if not hardware.present:
        ctx.run.record("skip", "RDMA", f"no RDMA hardware: {hardware.describe()}")
        return
    address, mac = rdma_addresses(ctx)
    write_dat_conf(ctx, address)
    if ctx.conf.flag("OS.CheckRdmaDriver"):
        check_rdma_driver(ctx)
    version = facts.module_version(ctx.root, facts.RDMA_DRIVER)
    # Drivers from 4.1 read the addresses themselves; older ones are told by the device.
    if hardware.network_direct and mac and (ctx.root / facts.RDMA_DEVICE).exists() and not (
            version and version[:2] >= (4, 1)):
        write_kernel_file(ctx.run, ctx.root / facts.RDMA_DEVICE,
                          f'rdmaMacAddress="{mac}" rdmaIPv4Address="{address}"',
                          why="tell the Network Direct driver its addresses")
    name = rdma_interface(ctx, mac, hardware)
    ctx.run.live(["ip", "link", "set", "dev", name, "up"], why="bring up the RDMA interface")
    ctx.run.live(["ip", "addr", "replace", f"{address}/{RDMA_NETMASK}", "dev", name],
                 why="the RDMA address from SharedConfig")


def rdma_task(ctx: Context) -> TaskDict:
    return {
        "name": "rdma",
        "doc": "RDMA (OS.EnableRDMA): SharedConfig's rdmaIPv4Address on the RDMA interface, "
               "dat.conf for Intel MPI" + (", hv_network_direct checked"
                                           if ctx.conf.flag("OS.CheckRdmaDriver") else ""),
        "actions": [(setup_rdma, [ctx])],
        "task_dep": ["gather:goalstate"],
        "uptodate": [Unless("rdma", lambda: rdma_skip(ctx),
                            Inputs("rdma", lambda: rdma_inputs(ctx)))],
    }


def generate(ctx: Context) -> Iterator[TaskDict]:
    """The kernel tasks; RDMA only with OS.EnableRDMA=y, none when SCVMM provisions."""
    if inputs.mode(ctx) == "scvmm":
        return
    yield scsi_task(ctx)
    yield entropy_task(ctx)
    yield numa_task(ctx)
    if ctx.conf.flag("OS.EnableRDMA"):
        yield rdma_task(ctx)
