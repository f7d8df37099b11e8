#!/usr/bin/env python3
"""Start-up cost of the agent's graph: `doit list` and a no-op `doit provision` on a sandbox
root, against `python -c "import doit.doit_cmd"` measured in the same run.

    .venv/bin/python bench/startup.py [--runs 9]

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
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "vm"
        root.mkdir()
        doit = [PY, "-m", "doit"]
        # First run does the work; every measured run after it is a no-op.
        subprocess.run([*doit, "provision", f"root={root}"], cwd=REPO, check=True,
                       capture_output=True)
        cases = {
            "import doit.doit_cmd (baseline)": [PY, "-c", "import doit.doit_cmd"],
            "doit list": [*doit, "list", f"root={root}"],
            "doit provision (no-op)": [*doit, "provision", f"root={root}"],
            "waagent provision (no-op)": [str(Path(PY).parent / "waagent"), "provision",
                                          f"root={root}"],
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
