"""The reliability campaigns' long form (issue 21), with their figures.

    .venv/bin/python bench/campaigns.py [--examples N] [--only fuzzing]

Fuzzing: runs tests/campaigns' fuzzing tests with the "long" hypothesis profile
(random, not derandomized as in CI; `--examples` is the budget of a test of weight 1,
CI's is 150) and prints, per parser: inputs tried, the time spent in the parser, the
distinct crashes found in this run (exception type and where it was raised; a hang
or a memory overrun) and the crashers kept as regression tests (defects found by the
campaigns and fixed). A crash fails the run and is listed below the table; hypothesis
prints its minimal input and a `@reproduce_failure` line in the pytest output.
Other campaigns add their own section here.

Fault schedules and crashes (`--only schedules`, `--only crash`; root, the cached Debian
root for the extension cases): tests/campaigns/reliability.py at `--size long` (every task
boundary, random kills, 30 provisioning and 6 daemon schedules; `--size ci` is CI's form),
every case audited for planted secrets. Prints the schedules (run, converged, in the time
bound, mean and max extra seconds), the kill points (tried, converged) and the secrets
audit (locations checked, secrets found) tables, then each problem; a problem fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fuzzing(examples: int, pytest_args: list[str]) -> int:
    """Run the long fuzzing campaign; print its table; the pytest exit status."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        env = dict(os.environ, WAAGENT_CAMPAIGN="long", WAAGENT_CAMPAIGN_EXAMPLES=str(examples),
                   WAAGENT_CAMPAIGN_REPORT=str(report))
        tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests/campaigns").glob(
            "test_fuzz_*.py")) + ["tests/campaigns/test_crashers.py"]
        start = time.monotonic()
        status = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 *tests, *pytest_args], cwd=REPO, env=env, check=False).returncode
        elapsed = time.monotonic() - start
        if not report.exists():
            print("fuzzing: no report written (pytest could not collect?)", file=sys.stderr)
            return status or 1
        figures = json.loads(report.read_text())
    tried, seconds = figures["tried"], figures["seconds"]
    crashes, fixed = figures["crashes"], figures["fixed"]
    parsers = sorted(set(tried) | set(fixed))
    print(f"\nFuzzing, long form: {examples} examples per test of weight 1, "
          f"{elapsed:.0f} s in all\n")
    print("| parser | inputs tried | s in parser | crashes found (this run) "
          "| crashers kept, fixed |")
    print("|---|---:|---:|---:|---:|")
    for parser in parsers:
        print(f"| {parser} | {tried.get(parser, 0)} | {seconds.get(parser, 0):.1f} "
              f"| {len(crashes.get(parser, []))} | {len(fixed.get(parser, []))} |")
    print(f"| all | {sum(tried.values())} | {sum(seconds.values()):.1f} "
          f"| {sum(len(v) for v in crashes.values())} "
          f"| {sum(len(v) for v in fixed.values())} |")
    for parser, found in sorted(crashes.items()):
        for crash in found:
            print(f"crash: {parser}: {crash}")
    return status


def reliability(only: str | None, size: str) -> int:
    """The fault-schedule and crash campaigns; their tables; 1 when a case did not converge."""
    sys.path.insert(0, str(REPO))
    from tests.campaigns import reliability as campaigns

    figures = campaigns.Figures()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="campaigns-") as tmp:
        if only in (None, "schedules"):
            campaigns.schedules(Path(tmp) / "schedules", size, figures)
        if only in (None, "crash"):
            campaigns.crashes(Path(tmp) / "crash", size, figures)
    print(f"\nFault schedules and crash campaign, size {size}, "
          f"{time.monotonic() - start:.0f} s in all\n")
    print(campaigns.tables(figures))
    for problem in figures.problems():
        print(f"problem: {problem}")
    return 1 if figures.problems() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=4000,
                        help="hypothesis examples for a fuzzing test of weight 1 (CI: 150)")
    parser.add_argument("--size", choices=["ci", "long"], default="long",
                        help="fault schedules and crash campaign: CI's form or the long one")
    parser.add_argument("--only", choices=["fuzzing", "schedules", "crash"], default=None,
                        help="run one campaign (default: all)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest, e.g. -k dhcp")
    args = parser.parse_args()
    status = 0
    if args.only in (None, "fuzzing"):
        status |= fuzzing(args.examples, args.pytest_args)
    if args.only in (None, "schedules", "crash"):
        status |= reliability(args.only, args.size)
    return status


if __name__ == "__main__":
    sys.exit(main())
