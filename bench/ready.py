#!/usr/bin/env python3
"""Time to Ready and peak RSS of provisioning: waagent-graph against the published Azure
Linux agent (Debian package waagent 2.7.3), each provisioning an identical VM root against
the same fabric (tests/e2e/harness.py), interleaved round by round.

    sudo .venv/bin/python bench/ready.py [--runs 5] [--keep DIR] [--keys-by-value] [--trace]

Every sample is a fresh VM: one Debian root (with both agents installed, so the roots are
identical), the default scenario, and the package's /etc/waagent.conf with
Provisioning.Agent=waagent, ResourceDisk.Format=n and Provisioning.SshHostKeyPairType=ed25519.
The default scenario gives one SSH key and one key pair by certificate thumbprint: Ready
waits for the certificates, i.e. for the transport key pair (RSA). `--keys-by-value` runs
the same scenario without those two, every SSH key given by value in the OVF: our agent then
fetches the certificates after Ready, waagent 2.7.3 still before provisioning.
The boot's DHCP runs first (not timed); then the agent starts as its service would:
`waagent provision` (ours) or `waagent -daemon` (2.7.3).

- time to Ready: from the agent's start (stamped in the VM) to the Ready health report as
  the fabric recorded it (same clock);
- `--trace`: for our agent, each task on the way to Ready, from its run report: when it
  started (seconds after the agent's start) and how long it took;
- peak RSS: ru_maxrss of the agent's process (or of the largest child it reaped) over the
  run; waagent's daemon never exits, so it is stopped once the fabric has its Ready.
  Ours is measured to its exit, i.e. including the work after Ready.

waagent 2.7.3 in this harness needs: a `mount` wrapper for /dev/sr0 (this kernel cannot
mount ISO 9660: the image is extracted with xorriso instead, `umount` empties it again),
a no-op `eject` (minbase has none; the daemon dies without it), and its hostname publish
runs `ifdown eth0 && ifup eth0`, retried 3 times 5 s apart when that fails: so each agent
runs both with no-op ifdown/ifup stubs (waagent's best case) and without ifupdown.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import vmharness
import yaml

from fabric.scenario import default_scenario_path
from tests.e2e import harness

# (label, argv in the VM, whether the agent exits by itself, with no-op ifdown/ifup)
CASES = (
    ("waagent-graph, no-op ifdown/ifup", ["/usr/local/sbin/waagent", "provision"], True, True),
    ("waagent-graph, no ifupdown", ["/usr/local/sbin/waagent", "provision"], True, False),
    ("waagent 2.7.3, no-op ifdown/ifup", ["/usr/sbin/waagent", "-daemon"], False, True),
    ("waagent 2.7.3, no ifupdown", ["/usr/sbin/waagent", "-daemon"], False, False),
)
READY_TIMEOUT = 120


def prepare(root: Path, *, ifupdown: bool) -> None:
    """The same root for both agents: the package's conf with the overrides, the helpers."""
    harness.prepare_both_agents(root, ifupdown=ifupdown)
    vmharness.install_measure(root)


def keys_by_value_scenario(base: Path) -> Path:
    """The default scenario without the SSH key and the key pair delivered as certificates."""
    scenario = yaml.safe_load(default_scenario_path().read_text())
    scenario["ssh_keys"] = [key for key in scenario["ssh_keys"] if not key.get("as_certificate")]
    scenario.pop("key_pairs", None)
    path = base / "keys-by-value.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def print_trace(vm_lab: harness.Lab, start: float, ready_at: float) -> None:
    """The tasks of our agent's run up to Ready, from its run report."""
    tasks = vm_lab.run_reports()[-1]["tasks"]
    for name, entry in sorted(tasks.items(), key=lambda item: item[1].get("start", 0)):
        began = entry.get("start", 0) - start
        if began <= ready_at - start:
            print(f"    {began:6.3f} s  +{entry.get('duration', 0):.3f}  {name}", flush=True)


def sample(work: Path, scenario: Path, argv: list[str], exits: bool,
           ifupdown: bool, trace: bool = False) -> tuple[float, int]:
    """One provisioning of a fresh VM: (seconds to Ready, peak RSS in KiB)."""
    with harness.lab(work, scenario, conf=None, packages=harness.WAAGENT_PACKAGES,
                     prepare=lambda root: prepare(root, ifupdown=ifupdown)) as vm_lab:
        vm_lab.vm.dhcp()
        log = work / "agent.log"
        process = vmharness.start_measured(vm_lab.vm, argv, log)
        try:
            ready = vm_lab.fabric.wait_for_health("Ready", READY_TIMEOUT)
        except AssertionError:
            raise RuntimeError(f"{argv[0]}: no Ready within {READY_TIMEOUT} s; the agent said: "
                               f"{log.read_text()[-3000:]}") from None
        measured = vmharness.finish_measured(vm_lab.vm, process, log, kill=not exits)
        if exits and measured.status != 0:
            raise RuntimeError(f"{argv[0]} exited {measured.status}: {log.read_text()[-3000:]}")
        if trace and exits:
            print_trace(vm_lab, measured.start, ready["time"])
        return ready["time"] - measured.start, measured.maxrss_kb


def main() -> int:
    by_value, trace = "--keys-by-value" in sys.argv, "--trace" in sys.argv
    for flag in ("--keys-by-value", "--trace"):
        if flag in sys.argv:
            sys.argv.remove(flag)
    args = vmharness.bench_args("bench/ready.py", __doc__, 5, harness.WAAGENT_PACKAGES)
    if args is None:
        return 2
    base = Path(args.keep or tempfile.mkdtemp(prefix="waagent-bench-ready-"))
    base.mkdir(parents=True, exist_ok=True)
    scenario = keys_by_value_scenario(base) if by_value else default_scenario_path()
    times: dict[str, list[float]] = {label: [] for label, *_ in CASES}
    rss: dict[str, list[float]] = {label: [] for label, *_ in CASES}
    # Round by round, so that machine noise hits every case alike.
    for run in range(args.runs):
        for index, (label, argv, exits, ifupdown) in enumerate(CASES):
            seconds, maxrss = sample(base / f"run{run}-case{index}", scenario, argv, exits,
                                     ifupdown, trace)
            times[label].append(seconds)
            rss[label].append(maxrss / 1024)
            print(f"run {run + 1}/{args.runs}  {label:34} Ready after {seconds:6.3f} s  "
                  f"peak RSS {maxrss / 1024:5.1f} MB", flush=True)
    best = vmharness.median(times[CASES[2][0]])
    rows = [(label, f"{vmharness.median(times[label]):.3f}",
             f"{vmharness.median(times[label]) / best:.2f}",
             f"{vmharness.median(rss[label]):.1f}") for label, *_ in CASES]
    vmharness.print_table(
        f"Time to Ready and peak RSS, medians of {args.runs} runs (fresh Debian 12 VM root, "
        f"{'keys by value' if by_value else 'default scenario'}, ed25519 host key)",
        ("agent", "Ready s", "x waagent best", "peak RSS MB"), rows)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
