"""tasks/kernel.py in sandbox roots whose sys/, proc/ and dev/ the tests build: SCSI
timeouts, Hyper-V entropy, NUMA on old kernels, RDMA; system/kernelfiles.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from facts import kernel as facts
from graph.context import Context, make_context
from system.errors import PathEscapesRoot
from system.kernelfiles import KernelFileError, write_kernel_file
from tasks import MONITORS, kernel
from tasks.serialconsole import with_kernel_args, with_legacy_args
from wire.subdocuments import parse_shared_config


def conf(root: Path, **options: str) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/waagent.conf").write_text("".join(f"{k}={v}\n" for k, v in options.items()))


def context(root: Path, *, plan: bool = False, **variables: str) -> Context:
    return make_context({"root": str(root), **variables}, plan=plan)


def tasks_of(ctx: Context) -> dict[str, dict[str, Any]]:
    return {task["name"]: task for task in kernel.generate(ctx)}


def run_actions(task: dict[str, Any]) -> None:
    for func, args in task["actions"]:
        func(*args)


class FakeTask:
    """What doit hands an uptodate callable."""

    def __init__(self) -> None:
        self.value_savers: list[Any] = []


def up_to_date(task: dict[str, Any], values: dict[str, Any] | None = None) -> tuple[bool, str]:
    """(up to date?, what the plan says) from the task's checks."""
    check = task["uptodate"][0]
    done = check(FakeTask(), values or {})
    return done, check.kept if done else check.reason


def scsi_root(root: Path, timeouts: dict[str, str]) -> Path:
    for disk, value in timeouts.items():
        (root / f"sys/block/{disk}/device").mkdir(parents=True)
        (root / f"sys/block/{disk}/device/timeout").write_text(f"{value}\n")
    (root / "sys/block/loop0").mkdir(parents=True)  # not SCSI: never touched
    return root


def live_kernel(root: Path, release: str = "6.1.0-18-amd64", boot_id: str = "boot-1") -> Path:
    (root / "proc/sys/kernel/random").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel/random/boot_id").write_text(boot_id + "\n")
    (root / "proc/sys/kernel/osrelease").write_text(release + "\n")
    return root


# -- SCSI timeout -------------------------------------------------------------------------

def test_scsi_timeout_written_to_every_scsi_disk_and_probed(sandbox: Path) -> None:
    scsi_root(sandbox, {"sda": "30", "sdb": "300", "sdc": "60"})
    conf(sandbox, **{"OS.RootDeviceScsiTimeout": "300"})
    ctx = context(sandbox)
    task = tasks_of(ctx)["scsi-timeout"]
    assert up_to_date(task) == (False, "sda: 30 s, sdc: 60 s; want 300 s")
    run_actions(task)
    for disk in ("sda", "sdb", "sdc"):
        assert (sandbox / f"sys/block/{disk}/device/timeout").read_text() == "300\n"
    assert [c.target for c in ctx.run.planned] == ["/sys/block/sda/device/timeout",
                                                   "/sys/block/sdc/device/timeout"]
    assert up_to_date(task) == (True, "")
    # The kernel resets a disk (a rescan): the monitor's probe sees it.
    (sandbox / "sys/block/sdb/device/timeout").write_text("30\n")
    assert up_to_date(task) == (False, "sdb: 30 s; want 300 s")


def test_scsi_timeout_plan_changes_nothing(sandbox: Path) -> None:
    scsi_root(sandbox, {"sda": "30"})
    conf(sandbox, **{"OS.RootDeviceScsiTimeout": "120"})
    ctx = context(sandbox, plan=True)
    run_actions(tasks_of(ctx)["scsi-timeout"])
    assert [str(c) for c in ctx.run.planned] == [
        "write /sys/block/sda/device/timeout  (OS.RootDeviceScsiTimeout=120 (was 30))"]
    assert (sandbox / "sys/block/sda/device/timeout").read_text() == "30\n"


def test_scsi_timeout_unset_is_an_up_to_date_task_that_says_why(sandbox: Path) -> None:
    scsi_root(sandbox, {"sda": "30"})
    ctx = context(sandbox)
    task = tasks_of(ctx)["scsi-timeout"]
    assert up_to_date(task) == (True, "OS.RootDeviceScsiTimeout is unset: the kernel's own "
                                      "SCSI timeouts stay")
    run_actions(task)
    assert (sandbox / "sys/block/sda/device/timeout").read_text() == "30\n"


def test_the_daemon_monitor_names_this_task() -> None:
    monitor = next(m for m in MONITORS if m.name == "scsi-timeout")
    assert monitor.targets == ("kernel:scsi-timeout",)
    assert monitor.period_option == "OS.RootDeviceScsiTimeoutPeriod"


def test_kernel_files_are_never_created_and_stay_in_the_root(sandbox: Path) -> None:
    ctx = context(sandbox)
    with pytest.raises(KernelFileError, match="/sys/block/sdz/device/timeout does not exist"):
        write_kernel_file(ctx.run, sandbox / "sys/block/sdz/device/timeout", "1", why="t")
    assert not (sandbox / "sys/block/sdz").exists()
    (sandbox / "sys/block/sda/device").mkdir(parents=True)
    (sandbox / "sys/block/sda/device/timeout").symlink_to("../../../../../../etc/passwd")
    with pytest.raises(PathEscapesRoot):
        write_kernel_file(ctx.run, sandbox / "sys/block/sda/device/timeout", "1", why="t")


# -- entropy ------------------------------------------------------------------------------

def entropy_root(root: Path, seed: bytes = b"\x01\x02hyper-v entropy\xff") -> Path:
    (root / "sys/firmware/acpi/tables").mkdir(parents=True)
    (root / "sys/firmware/acpi/tables/OEM0").write_bytes(seed)
    (root / "dev").mkdir()
    (root / "dev/random").write_bytes(b"")  # the sandbox's own: a plain file read back
    return root


def test_entropy_seeds_the_roots_dev_random_once_per_boot(sandbox: Path) -> None:
    seed = b"\x01\x02hyper-v entropy\xff"
    live_kernel(entropy_root(sandbox, seed))
    ctx = context(sandbox)
    task = tasks_of(ctx)["entropy"]
    assert up_to_date(task) == (False, "never run")
    run_actions(task)
    assert (sandbox / "dev/random").read_bytes() == seed
    assert "hyper-v" not in str(ctx.run.planned), "entropy must not be shown"
    # Same boot: up to date; a new boot id: seeded again.
    check, saver_task = task["uptodate"][0], FakeTask()
    check(saver_task, {})
    stored = saver_task.value_savers[0]()
    assert up_to_date(task, stored) == (True, "")
    (sandbox / "proc/sys/kernel/random/boot_id").write_text("boot-2\n")
    done, reason = up_to_date(task, stored)
    assert not done and "boot_id: boot-1 -> boot-2" in reason


def test_entropy_skips_an_image_root_and_records_it(sandbox: Path) -> None:
    entropy_root(sandbox)  # an image: no running kernel's /proc
    ctx = context(sandbox)
    task = tasks_of(ctx)["entropy"]
    done, kept = up_to_date(task)
    assert done and "shows no running kernel" in kept
    run_actions(task)
    assert (sandbox / "dev/random").read_bytes() == b""
    assert [c.kind for c in ctx.run.planned] == ["skip"]


def test_entropy_without_oem0_is_up_to_date_and_says_so(sandbox: Path) -> None:
    live_kernel(sandbox)
    done, kept = up_to_date(tasks_of(context(sandbox))["entropy"])
    assert done and kept.startswith(f"no {facts.ENTROPY_TABLE}")


# -- NUMA ---------------------------------------------------------------------------------

def grub_root(root: Path) -> Path:
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX="rootdelay=300"\n')
    return root


def test_numa_off_for_a_kernel_before_2_6_37(sandbox: Path) -> None:
    live_kernel(grub_root(sandbox), release="2.6.32-279.el6.x86_64")
    ctx = context(sandbox)
    task = tasks_of(ctx)["numa"]
    assert "numa=off on the kernel command line" in task["doc"]
    assert up_to_date(task) == (False, "never run")
    run_actions(task)
    assert (sandbox / "etc/default/grub").read_text() == \
        'GRUB_CMDLINE_LINUX="rootdelay=300 numa=off"\n'
    run_actions(task)  # idempotent
    assert (sandbox / "etc/default/grub").read_text().count("numa=off") == 1


def test_numa_on_newer_kernels_is_up_to_date_and_the_plan_says_why(sandbox: Path) -> None:
    live_kernel(grub_root(sandbox), release="6.1.0-18-amd64")
    done, kept = up_to_date(tasks_of(context(sandbox))["numa"])
    assert done and kept == "kernel 6.1.0-18-amd64 is 2.6.37 or newer: NUMA works on Hyper-V"


def test_numa_reads_an_images_installed_kernels(sandbox: Path) -> None:
    grub_root(sandbox)
    (sandbox / "lib/modules/2.6.32-504.el6.x86_64").mkdir(parents=True)
    task = tasks_of(context(sandbox))["numa"]
    assert up_to_date(task) == (False, "never run")
    (sandbox / "lib/modules/2.6.32-504.el6.x86_64").rename(sandbox / "lib/modules/4.18.0")
    assert up_to_date(task)[0]


def test_numa_on_grub_legacy_appends_to_kernel_lines(sandbox: Path) -> None:
    live_kernel(sandbox, release="2.6.32-71.el6.x86_64")
    (sandbox / "boot/grub").mkdir(parents=True)
    menu = ("default=0\ntitle CentOS\n\troot (hd0,0)\n"
            "\tkernel /vmlinuz-2.6.32 ro root=/dev/sda1 quiet\n\tinitrd /initrd.img\n")
    (sandbox / "boot/grub/menu.lst").write_text(menu)
    ctx = context(sandbox)
    task = tasks_of(ctx)["numa"]
    run_actions(task)
    assert (sandbox / "boot/grub/menu.lst").read_text() == menu.replace("quiet", "quiet numa=off")


def test_boot_loader_helpers_are_shared_with_the_serial_console() -> None:
    assert with_kernel_args('GRUB_CMDLINE_LINUX="numa=off"\n', ("numa=off",), "g") == \
        'GRUB_CMDLINE_LINUX="numa=off"\n'
    assert with_legacy_args("kernel /vmlinuz numa=off\n", ("numa=off",)) == \
        "kernel /vmlinuz numa=off\n"


# -- RDMA ---------------------------------------------------------------------------------

SHARED_CONFIG = """<SharedConfig version="1.0.0.0" goalStateIncarnation="1">
  <Deployment name="d" guid="{0}" incarnation="2"/>
  <Role guid="{1}" name="MachineRole" settleTimeSeconds="10"/>
  <Instances>
    <Instance id="MachineRole_IN_0" address="10.0.0.4" rdmaMacAddress="00155D33FF1D"
              rdmaIPv4Address="172.16.1.5"/>
  </Instances>
</SharedConfig>"""

DAT_CONF = ('OpenIB-cma u1.2 nonthreadsafe default libdaplcma.so.1 dapl.1.2 "ib0 0" ""\n'
            'ofa-v2-ib0 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 "ib0 0" ""\n')


def test_shared_config_rdma_addresses() -> None:
    rdma = parse_shared_config(SHARED_CONFIG).rdma
    assert rdma is not None
    assert (rdma.rdma_ipv4_address, rdma.rdma_mac_address) == ("172.16.1.5",
                                                               "00:15:5d:33:ff:1d".upper())


def test_shared_config_fixture_without_rdma(fixtures: Path) -> None:
    text = (fixtures / "walinuxagent/wire/shared_config.xml").read_text()
    assert parse_shared_config(text).rdma is None


def test_dat_conf_binds_ofa_v2_ib0() -> None:
    out = facts.dat_conf_with_address(DAT_CONF, "172.16.1.5")
    assert out.splitlines()[0] == DAT_CONF.splitlines()[0]
    assert out.splitlines()[1].endswith('dapl.2.0 "172.16.1.5 0" ""')
    assert facts.dat_conf_with_address("", "10.1.1.1").startswith("ofa-v2-ib0 ")


def rdma_root(root: Path, *, driver: bool = True) -> Path:
    live_kernel(root)
    (root / "dev").mkdir(exist_ok=True)
    (root / "dev/hvnd_rdma").write_text("")
    for name, mac in (("eth0", "00:0d:3a:00:00:01"), ("eth1", "00:15:5d:33:ff:1d")):
        nic = root / "sys/class/net" / name
        nic.mkdir(parents=True)
        (nic / "address").write_text(mac + "\n")
        (nic / "device").mkdir()
    if driver:
        (root / "sys/module/hv_network_direct").mkdir(parents=True)
        (root / "sys/module/hv_network_direct/version").write_text("4.0.0\n")
    (root / "etc/rdma").mkdir(parents=True)
    (root / "etc/rdma/dat.conf").write_text(DAT_CONF)
    return root


def rdma_context(root: Path, **options: str) -> Context:
    conf(root, **{"OS.EnableRDMA": "y", **options})
    ctx = context(root)
    shared = parse_shared_config(SHARED_CONFIG).rdma
    assert shared is not None
    # As SharedConfig of the goal state gives them (tasks.kernel.rdma_addresses).
    ctx.state.rdma_addresses = (shared.rdma_ipv4_address, shared.rdma_mac_address)
    return ctx


def test_rdma_sets_dat_conf_device_and_interface(sandbox: Path) -> None:
    rdma_root(sandbox)
    ctx = rdma_context(sandbox, **{"OS.CheckRdmaDriver": "y"})
    task = tasks_of(ctx)["rdma"]
    assert "hv_network_direct checked" in task["doc"]
    assert up_to_date(task) == (False, "never run")
    run_actions(task)
    assert '"172.16.1.5 0"' in (sandbox / "etc/rdma/dat.conf").read_text()
    assert (sandbox / "dev/hvnd_rdma").read_text() == \
        'rdmaMacAddress="00:15:5D:33:FF:1D" rdmaIPv4Address="172.16.1.5"'
    skipped = [c.target for c in ctx.run.planned if c.kind == "skip"]
    # A sandbox's interfaces are the host's: the ip commands are recorded, not run.
    assert skipped == ["ip link set dev eth1 up", "ip addr replace 172.16.1.5/16 dev eth1"]


def test_rdma_driver_missing_is_reported(sandbox: Path) -> None:
    rdma_root(sandbox, driver=False)
    ctx = rdma_context(sandbox, **{"OS.CheckRdmaDriver": "y"})
    with pytest.raises(kernel.RdmaError, match="hv_network_direct kernel module is not loaded"):
        run_actions(tasks_of(ctx)["rdma"])
    assert "modprobe hv_network_direct" in [c.target for c in ctx.run.planned
                                            if c.kind == "skip"][0]


def test_rdma_without_hardware_says_so_and_does_nothing(sandbox: Path) -> None:
    live_kernel(sandbox)
    conf(sandbox, **{"OS.EnableRDMA": "y"})
    ctx = context(sandbox)
    task = tasks_of(ctx)["rdma"]
    done, kept = up_to_date(task)
    assert done and kept.startswith("no RDMA hardware: none (/dev/hvnd_rdma absent")
    run_actions(task)
    assert [c.kind for c in ctx.run.planned] == ["skip"]
    assert not (sandbox / "etc/dat.conf").exists()


def test_rdma_task_only_with_enable_rdma(sandbox: Path) -> None:
    assert "rdma" not in tasks_of(context(sandbox))


def test_kvp_pool_nd_driver_version() -> None:
    record = b"NdDriverVersion".ljust(512, b"\0") + b"142.0".ljust(2048, b"\0")
    other = b"Other".ljust(512, b"\0") + b"x".ljust(2048, b"\0")
    assert facts.kvp_value(other + record, "NdDriverVersion") == "142.0"
    assert facts.kvp_value(other, "NdDriverVersion") is None
