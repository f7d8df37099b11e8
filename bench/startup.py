#!/usr/bin/env python3
"""Start-up cost of the agent's graph: `doit list` and a no-op `doit provision` on a
provisioned sandbox root (the fabric emulator on 127.0.0.1 answers the goal-state check),
against `python -c "import doit.doit_cmd"` measured in the same run.

    .venv/bin/python bench/startup.py [--runs 9]     (as root: provisioning uses useradd)

Prints medians (seconds) and ratios; the target is a no-op provision <= 1.3x the import.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
sys.path.insert(0, str(REPO))


def timed(argv: list[str], runs: int, cwd: Path) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    from fabric import Fabric, build_media, default_scenario
    from tests.sandbox import make_sandbox_root

    scenario = default_scenario()
    with tempfile.TemporaryDirectory() as tmp, Fabric(scenario) as fabric:
        root = make_sandbox_root(Path(tmp) / "vm", scenario.vm_id)
        media = build_media(scenario, Path(tmp) / "ovf.iso")
        (root / "etc/waagent.conf").write_text("ResourceDisk.Format=n\n")
        where = [f"root={root}", f"wireserver={fabric.wire_url}", f"media={media}"]
        doit = [PY, "-m", "doit"]
        # First run does the work; every measured run after it is a no-op.
        subprocess.run([*doit, "provision", *where], cwd=REPO, check=True,
                       capture_output=True)
        cases = {
            "import doit.doit_cmd (baseline)": [PY, "-c", "import doit.doit_cmd"],
            "doit list": [*doit, "list", *where],
            "doit provision (no-op)": [*doit, "provision", *where],
            "waagent provision (no-op)": [str(Path(PY).parent / "waagent"), "provision",
                                          *where],
        }
        # Interleave the cases round by round so machine noise hits them alike.
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, argv in cases.items():
                samples[name].append(timed(argv, 1, REPO))
    base = statistics.median(samples["import doit.doit_cmd (baseline)"])
    print(f"{'case':34} {'median s':>9} {'x baseline':>11}   ({args.runs} runs each)")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:34} {median:9.3f} {median / base:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
