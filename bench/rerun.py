#!/usr/bin/env python3
"""Rerun cost of the agent in a provisioned VM: a no-op `waagent provision` and one after a
one-line waagent.conf edit, against `python3 -c "import doit.doit_cmd"`, measured in the
same VM (tests/e2e/harness.py) with the same interpreter, round by round.

    sudo .venv/bin/python bench/rerun.py [--runs 9] [--keep DIR]

The VM is provisioned once (default scenario, resource disk with a swap file). Each
round then runs, in the VM: the baseline import; `waagent provision` with nothing to do
(only gather:goalstate runs: one goal-state fetch from the fabric); and `waagent
provision` after ResourceDisk.SwapSizeMB flips between two sizes (gather:goalstate and
disk:swapfile run, the latter resizing the swap file for real). Times are wall-clock in
the VM, from the command's start to its exit.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import vmharness

from fabric.scenario import default_scenario_path
from tests.e2e import harness

CONF = """\
Provisioning.Agent=waagent
Provisioning.SshHostKeyPairType=ed25519
ResourceDisk.Format=y
ResourceDisk.Filesystem=ext4
ResourceDisk.EnableSwap=y
ResourceDisk.SwapSizeMB={swap_mb}
"""
SWAP_SIZES = (64, 96)
PYTHONPATH = "PYTHONPATH=/" + harness.AGENT_DIR
CASES = {
    "python3 -c 'import doit.doit_cmd' (baseline)":
        ["env", PYTHONPATH, "/usr/bin/python3", "-c", "import doit.doit_cmd"],
    "waagent provision, no-op rerun": ["waagent", "provision"],
    "waagent provision, after a SwapSizeMB edit": ["waagent", "provision"],
}
EXPECTED = {
    "waagent provision, no-op rerun": {"gather:goalstate"},
    "waagent provision, after a SwapSizeMB edit": {"gather:goalstate", "disk:swapfile"},
}


def main() -> int:
    args = vmharness.bench_args("bench/rerun.py", __doc__, 9, harness.OUR_PACKAGES)
    if args is None:
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="waagent-bench-rerun-"))
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    swap_mb = SWAP_SIZES[0]
    with harness.lab(work, default_scenario_path(), conf=CONF.format(swap_mb=swap_mb),
                     prepare=vmharness.install_measure) as vm_lab:
        vm_lab.vm.dhcp()
        vm_lab.vm.run(["waagent", "provision"])
        for _ in range(args.runs):
            for name, argv in CASES.items():
                if "edit" in name:
                    swap_mb = SWAP_SIZES[1] if swap_mb == SWAP_SIZES[0] else SWAP_SIZES[0]
                    (vm_lab.root / "etc/waagent.conf").write_text(CONF.format(swap_mb=swap_mb))
                measured = vmharness.measure(vm_lab.vm, argv, work / "command.log")
                if measured.status != 0:
                    raise RuntimeError(f"{name}: exit {measured.status}: "
                                       f"{(work / 'command.log').read_text()[-3000:]}")
                if name in EXPECTED and vm_lab.ran() != EXPECTED[name]:
                    raise RuntimeError(f"{name}: ran {sorted(vm_lab.ran())}, "
                                       f"expected {sorted(EXPECTED[name])}")
                samples[name].append(measured.seconds)
                # The swap resize leaves writeback behind: let it settle before the next sample.
                vm_lab.vm.run(["sync"])
    base = vmharness.median(samples[next(iter(CASES))])
    rows = [(name, f"{vmharness.median(values):.3f}", f"{vmharness.median(values) / base:.2f}")
            for name, values in samples.items()]
    vmharness.print_table(f"Reruns in a provisioned Debian 12 VM, medians of {args.runs} runs",
                          ("command", "wall s", "x baseline"), rows)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
