#!/usr/bin/env python3
"""Start-up cost of the agent's graph: `doit list` and a no-op `doit provision` on a
provisioned sandbox root (the fabric emulator on 127.0.0.1 answers the goal-state check),
against `python -c "import doit.doit_cmd"` measured in the same run.

    .venv/bin/python bench/startup.py [--runs 21] [--instructions]   (as root: useradd)

Prints medians (seconds) and ratios (the median of each round's ratio, then the ratio of
the medians); issue 16's target is a no-op `waagent provision` <= 1.15x the import.
With --instructions it also counts the instructions each case executes (valgrind's
callgrind, once each, ~5 s a case): a ratio that machine noise does not move.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
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


def instructions(argv: list[str], cwd: Path) -> int:
    """Instructions executed by a command (and its children), counted by callgrind."""
    found = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                            *argv], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True).stderr
    match = re.search(r"Collected : (\d+)", found)
    if match is None:
        raise RuntimeError(f"no instruction count from valgrind for {argv}: {found[-500:]}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    # These machines are noisy (a process can take 1.5x as long from one second to the
    # next): medians of fewer than ~21 runs move by several hundredths.
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions with valgrind (deterministic)")
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        parser.error("--instructions needs valgrind (apt-get install valgrind)")
    from fabric import Fabric, build_media, default_scenario
    from tests.sandbox import make_sandbox_root

    scenario = default_scenario()
    with tempfile.TemporaryDirectory() as tmp, Fabric(scenario) as fabric:
        root = make_sandbox_root(Path(tmp) / "vm", scenario.vm_id)
        media = build_media(scenario, Path(tmp) / "ovf.iso")
        (root / "etc/waagent.conf").write_text("ResourceDisk.Format=n\nProvisioning.RegenerateSshHostKeyPair=y\n")
        where = [f"root={root}", f"wireserver={fabric.wire_url}", f"media={media}"]
        doit = [PY, "-m", "doit"]
        # Bytecode as an installed agent has it (PYTHONDONTWRITEBYTECODE would otherwise
        # leave every edited module to be compiled again in each measured run).
        subprocess.run([PY, "-m", "compileall", "-q", "conf", "system", "facts", "wire",
                        "graph", "tasks", "dodo.py"], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
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
        # Interleave the cases round by round, in a new order each round, so machine noise
        # hits them alike.
        samples: dict[str, list[float]] = {name: [] for name in cases}
        shuffle = random.Random(0).shuffle
        for _ in range(args.runs):
            order = list(cases)
            shuffle(order)
            for name in order:
                samples[name].append(timed(cases[name], 1, REPO))
        counted = {name: instructions(argv, REPO) for name, argv in cases.items()} \
            if args.instructions else {}
    baseline = samples["import doit.doit_cmd (baseline)"]
    base = statistics.median(baseline)
    # "x baseline" is the median of each round's ratio: the machine's slow spells last
    # seconds and slow a whole round alike, while they can put the baseline's median in a
    # fast cluster and a case's in a slow one (the ratio of medians, shown after it, has
    # read anywhere from 1.20x to 1.67x for the same code in such batches).
    print(f"{'case':34} {'median s':>9} {'quartiles s':>14} {'x baseline':>11} "
          f"{'of medians':>11}   ({args.runs} rounds)")
    for name, values in samples.items():
        median = statistics.median(values)
        low, _, high = statistics.quantiles(values, n=4)
        per_round = statistics.median(v / b for v, b in zip(values, baseline, strict=True))
        print(f"{name:34} {median:9.3f} {low:7.3f}-{high:.3f} {per_round:11.2f} "
              f"{median / base:11.2f}")
    if counted:
        first = counted["import doit.doit_cmd (baseline)"]
        print(f"\n{'case':34} {'instructions':>13} {'x baseline':>11}   (valgrind)")
        for name, count in counted.items():
            print(f"{name:34} {count / 1e6:12.1f}M {count / first:11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
