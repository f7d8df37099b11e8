"""The fault-schedule and crash campaigns as one driver, with the secrets audit of every case,
and their figures: tests/campaigns/test_reliability.py runs the CI form, bench/campaigns.py
the long one (`--only schedules`, `--only crash`).

Sizes: "ci" (fixed seeds and a handful of kill points, a few minutes), "long" (every task
boundary of each area, random kills, 30 provisioning and 6 daemon schedules).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.campaigns import crash
from tests.campaigns import fault_schedules as fs
from tests.support.secrets_audit import AuditResult

SIZES = {
    "ci": {"provision_seeds": [3, 7, 11], "daemon_seeds": [5], "delays": 2,
           "provision_points": ["after:user:password", "after:ssh:hostkeys",
                                "after:certificates:install", "after:report:ready"],
           "disk_points": ["after:disk:mkfs", "after:disk:swapfile"],
           "deprovision_points": ["after:deprovision:user", "after:deprovision:agent-state"],
           "extension_points": ["after:extensions:Campaign.Recorder:install"],
           "update_points": ["after:extensions:Campaign.Recorder:update"]},
    "long": {"provision_seeds": list(range(1, 31)), "daemon_seeds": list(range(1, 7)),
             "delays": 3, "provision_points": None, "disk_points": None,
             "deprovision_points": None, "extension_points": None, "update_points": None},
}


@dataclass
class Figures:
    schedules: list[fs.Outcome] = field(default_factory=list)
    tallies: list[crash.Tally] = field(default_factory=list)
    audit: AuditResult = field(default_factory=AuditResult)
    seconds: dict[str, float] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = [f"schedule {o.kind} seed {o.seed} ({', '.join(s.describe() for s in o.steps)}):"
                 f" {p}" for o in self.schedules for p in o.problems]
        found += [f"{t.area} {point}: {p}" for t in self.tallies
                  for point, ps in t.problems.items() for p in ps]
        return found


def schedules(tmp: Path, size: str, figures: Figures) -> None:
    start = time.monotonic()
    sizes = SIZES[size]
    baseline = fs.provision_baseline(tmp / "provision-baseline")
    for seed in sizes["provision_seeds"]:
        figures.schedules.append(fs.run_provision_schedule(
            seed, tmp / f"provision-{seed}", baseline, audit=figures.audit))
    baseline = fs.daemon_baseline(tmp / "daemon-baseline")
    for seed in sizes["daemon_seeds"]:
        figures.schedules.append(fs.run_daemon_schedule(
            seed, tmp / f"daemon-{seed}", baseline, audit=figures.audit))
    figures.seconds["schedules"] = time.monotonic() - start


def crashes(tmp: Path, size: str, figures: Figures, areas: tuple[str, ...] = (
        "provision", "extra", "disk", "deprovision", "extensions")) -> None:
    sizes = SIZES[size]
    delays = int(sizes["delays"])  # type: ignore[call-overload]
    audit = figures.audit
    with crash.fabric_for_campaign() as fabric:
        if "provision" in areas or "extra" in areas:
            start = time.monotonic()
            provision = crash.Provision(tmp / "provision", fabric)
            if "provision" in areas:
                tally = crash.Tally("provision group")
                fixed = sizes["provision_points"]
                chosen = ([*fixed, *crash.points([], provision.seconds, delays)]  # type: ignore[misc]
                          if fixed else crash.points(provision.order, provision.seconds, delays))
                for point in chosen:
                    tally.add(point, provision.case(point, audit))
                figures.tallies.append(tally)
            if "extra" in areas:
                tally = crash.Tally("SIGTERM, lost state, full disk, read-only root")
                for name, problems in provision.extra_cases(audit).items():
                    tally.add(name, problems)
                figures.tallies.append(tally)
            figures.seconds["crash provision"] = time.monotonic() - start
        if "deprovision" in areas:
            start = time.monotonic()
            deprovision = crash.Deprovision(tmp / "deprovision", fabric)
            tally = crash.Tally("deprovision")
            for point in sizes["deprovision_points"] or crash.points(
                    deprovision.order, deprovision.seconds, delays):
                tally.add(point, deprovision.case(point, audit))
            figures.tallies.append(tally)
            figures.seconds["crash deprovision"] = time.monotonic() - start
    if "disk" in areas:
        start = time.monotonic()
        tally = crash.Tally("resource disk")
        for point in sizes["disk_points"] or crash.points(list(crash.DISK_TASKS), 1.5, delays):
            tally.add(point, crash.disk_case(tmp / "disk" / point.replace(":", "-"), point))
        figures.tallies.append(tally)
        figures.seconds["crash disk"] = time.monotonic() - start
    if "extensions" in areas:
        start = time.monotonic()
        extensions = crash.Extensions(tmp / "extensions")
        install, update, seconds = extensions.reference()
        tally = crash.Tally("extension install/enable/update")
        for point in sizes["extension_points"] or crash.points(install, seconds, delays):
            tally.add(point, extensions.case(point, False, audit))
        for point in sizes["update_points"] or crash.points(update, seconds, delays):
            tally.add(f"update {point}", extensions.case(point, True, audit))
        figures.tallies.append(tally)
        figures.seconds["crash extensions"] = time.monotonic() - start


def tables(figures: Figures) -> str:
    lines: list[str] = []
    if figures.schedules:
        lines += ["| fault schedules | run | converged | in time bound | faults fired "
                  "| mean extra s | max extra s |", "|---|---:|---:|---:|---:|---:|---:|"]
        for kind in ("provision", "daemon"):
            runs = [o for o in figures.schedules if o.kind == kind]
            if not runs:
                continue
            extra = [o.extra for o in runs]
            fired = sum(s.fired + (1 if s.outage else 0) for o in runs for s in o.steps)
            lines.append(f"| {kind} | {len(runs)} | {sum(o.converged for o in runs)} "
                         f"| {sum(o.seconds <= o.bound for o in runs)} | {fired} "
                         f"| {statistics.mean(extra):.1f} | {max(extra):.1f} |")
        lines.append("")
    if figures.tallies:
        lines += ["| crash campaign | kill points tried | converged |", "|---|---:|---:|"]
        for tally in figures.tallies:
            lines.append(f"| {tally.area} | {tally.tried} | {tally.converged} |")
        lines.append(f"| all | {sum(t.tried for t in figures.tallies)} "
                     f"| {sum(t.converged for t in figures.tallies)} |")
        lines.append("")
    audit = figures.audit
    lines += ["| secrets audit | locations checked | secrets found |", "|---|---:|---:|"]
    for kind, count in sorted(audit.checked.items()):
        lines.append(f"| {kind} | {count} | "
                     f"{sum(1 for f in audit.findings if kind_of(f) == kind)} |")
    lines.append(f"| all | {audit.locations} | {len(audit.findings)} |")
    return "\n".join(lines)


def kind_of(finding: str) -> str:
    if " in /proc/" in finding:
        return "processes"
    if "fabric record" in finding:
        return "fabric record"
    if " output" in finding or finding.endswith((" killed", " rerun")):
        return "outputs"
    return "files"
