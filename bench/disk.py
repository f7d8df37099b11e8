#!/usr/bin/env python3
"""The agent's own time for the resource disk tasks on a fresh 1 GiB loop device (root).

    sudo .venv/bin/python bench/disk.py [--runs 5] [--fs ext4]

Each run attaches a new sparse 1 GiB loop device behind a fresh VM root and runs
`waagent run disk` in this process (imports already paid), with a 64 MB swap file. Printed
per run and as medians: wall time; time inside child processes (sfdisk, mkfs, mount,
mkswap..., from `ctx.run.child_seconds`); the agent's own time = wall - children; and
this process's user CPU. Target: own time under 0.3 s.
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from graph import loader  # noqa: E402
from graph.main import run_doit  # noqa: E402
from tests.integration.diskutil import loop_device, vm_root  # noqa: E402


def one_run(fstype: str) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp, loop_device(Path(tmp)) as device, \
            vm_root(Path(tmp), device) as vm:
        vm.configure(Filesystem=fstype, EnableSwap="y", SwapSizeMB="64")
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        status = run_doit(["run", "disk", f"root={vm.root}", f"conf={vm.conf}"])
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        if status != 0 or not vm.swaps():
            raise SystemExit(f"the disk tasks failed (status {status})")
        ctx = loader.PROCESS.context
        assert ctx is not None
        children = ctx.run.child_seconds
        return wall, children, after.ru_utime - before.ru_utime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fs", default="ext4")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    samples = []
    print(f"{'run':>4} {'wall s':>8} {'children s':>11} {'own s':>7} {'user cpu s':>11}")
    for number in range(1, args.runs + 1):
        wall, children, user = one_run(args.fs)
        samples.append((wall, children, wall - children, user))
        print(f"{number:>4} {wall:8.3f} {children:11.3f} {wall - children:7.3f} {user:11.3f}",
              flush=True)
    wall, children, own, user = (statistics.median(col) for col in zip(*samples, strict=True))
    print(f"median {wall:6.3f} {children:11.3f} {own:7.3f} {user:11.3f}   "
          f"({args.runs} runs, {args.fs}, 1 GiB loop device, 64 MB swap)")
    print(f"agent's own time (wall - children): {own:.3f} s "
          f"({'within' if own < 0.3 else 'OVER'} the 0.3 s target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
