"""Seeded fabric fault schedules over a provisioning run and a daemon run with extensions.

`schedule(seed)` turns a seed into a list of faults, each armed on a route the agent calls,
firing after a random number of good calls (`skip`): over the run, not all at its start.
Kinds: 500, 503, 429 with Retry-After, 410, 403, a dropped connection, a slow answer, a
truncated body, a stale goal state (the previous incarnation's, so the number goes back), and,
for the daemon, a HostGAPlugin that disappears for a while.

The properties a run must hold (`check_*`): it converges (Ready, extensions in their goal
state), no side effect is repeated (the user created once, host keys and password once,
enable once per sequence number), and it ends within what the schedule explains: the baseline
plus the delays the faults add and the waits the retry policy answers them with
(`explained_seconds`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric import Fabric, default_scenario
from fabric.scenario import Extension, Scenario
from tests.integration.provisioning import BASE_CONF, Harness
from tests.support import secrets_audit
from tests.support.secrets_audit import AuditResult, ProcSampler

# Routes of a provisioning run and of a daemon loop (extensions through the HostGAPlugin).
PROVISION_ROUTES = ("versions", "goalstate", "hostingenv", "sharedconfig", "certificates",
                    "extensionsconfig", "health", "roleproperties")
DAEMON_ROUTES = (*PROVISION_ROUTES, "hgap.versions", "vmsettings", "artifact", "status")

# The agent's retry policy (wire/http.py DEFAULT_RETRY): backoff 1, 2, 4 s; throttling 15 s
# unless the platform says Retry-After.
BACKOFF = (1.0, 2.0, 4.0, 8.0)
THROTTLE_DELAY = 15.0
# Allowed on top of the baseline and what the schedule explains: process start, jitter of
# a loaded 2-core machine, one daemon period.
SLACK_SECONDS = 8.0


@dataclass
class Step:
    """One armed fault (fabric.inject arguments), or a HostGAPlugin outage (`outage` s)."""

    route: str
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    outage: float = 0.0
    fired: int = 0  # how often the fabric applied it (set after the run)
    armed: Any = None  # the fabric's Fault object

    def explained_seconds(self) -> float:
        """What this fault added to the run: its delays and the agent's answering waits."""
        if self.outage:
            return self.outage
        count = self.fired
        if not count:
            return 0.0
        delay = float(self.args.get("delay", 0.0))
        if self.kind in ("429", "403"):
            wait = float(self.args.get("retry_after") or THROTTLE_DELAY)
            return count * (delay + wait)
        if self.kind in ("slow",):
            return count * delay
        # 5xx, drop, truncate, 410, stale: backoff per failure (a 410 refetches at once,
        # a stale goal state is seen again at the next look).
        return delay * count + sum(BACKOFF[:count]) + 1.0

    def describe(self) -> str:
        if self.outage:
            return f"hostplugin away {self.outage:.0f}s"
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.args.items())
                         if k not in ("status", "drop", "truncate", "stale"))
        return f"{self.route}:{self.kind}({extra}) fired {self.fired}"


def schedule(seed: int, *, routes: tuple[str, ...] = PROVISION_ROUTES, size: int = 4,
             outage: bool = False, max_skip: int = 1) -> list[Step]:
    """A reproducible list of faults for this seed (a provisioning run calls most routes
    once or twice; the daemon's loop calls them again and again: larger `max_skip`)."""
    rng = random.Random(seed)
    steps: list[Step] = []
    kinds = ["500", "503", "429", "410", "403", "drop", "slow", "truncate", "stale"]
    for _ in range(size):
        kind = rng.choice(kinds)
        route = "goalstate" if kind == "stale" else rng.choice(routes)
        args: dict[str, Any] = {"skip": rng.randint(0, max_skip), "count": rng.randint(1, 2)}
        if kind in ("500", "503", "403"):
            args["status"] = int(kind)
        elif kind == "429":
            args["status"] = 429
            args["retry_after"] = rng.randint(1, 3)
        elif kind == "410":
            if route == "goalstate":
                args["status"] = 410
            else:  # a stale goal state: a new incarnation appears, this call answers 410
                args["bump_incarnation"] = True
        elif kind == "drop":
            args["drop"] = True
        elif kind == "slow":
            args["delay"] = round(rng.uniform(0.5, 3.0), 1)
        elif kind == "truncate":
            args["truncate"] = True
        elif kind == "stale":
            args["stale"] = True
        steps.append(Step(route, kind, args))
    if outage:
        steps.append(Step("hgap", "outage", outage=float(rng.randint(2, 6))))
    return steps


def arm(fabric: Fabric, steps: list[Step]) -> None:
    for step in steps:
        if not step.outage:
            step.armed = fabric.inject(step.route, **step.args)


def disarm(fabric: Fabric, steps: list[Step]) -> None:
    """Clear the faults; count how often each fired."""
    fired = fabric.faults.fired()
    fabric.faults.clear()
    for step in steps:
        if step.armed is not None:
            step.fired = sum(1 for fault in fired if fault is step.armed)


def explained_seconds(steps: list[Step]) -> float:
    return sum(step.explained_seconds() for step in steps)


# --- provisioning ---------------------------------------------------------------------------

CONF = BASE_CONF + "Provisioning.DeleteRootPassword=y\n"


def one_shot_counts(root: Path) -> dict[str, int]:
    """How often each one-shot provisioning task changed the machine, over every run report."""
    counts: dict[str, int] = {}
    for report in sorted((root / "var/lib/waagent/runs").glob("*.json")):
        tasks = json.loads(report.read_text()).get("tasks", {})
        for name in ("user:account", "user:password", "ssh:hostkeys", "customdata:run",
                     "customdata:save"):
            if tasks.get(name, {}).get("result") == "changed":
                counts[name] = counts.get(name, 0) + 1
    return counts


@dataclass
class Outcome:
    seed: int
    kind: str
    steps: list[Step]
    seconds: float
    baseline: float
    converged: bool
    problems: list[str]

    @property
    def extra(self) -> float:
        return max(0.0, self.seconds - self.baseline)

    @property
    def bound(self) -> float:
        return self.baseline + explained_seconds(self.steps) + SLACK_SECONDS


def provision_once(tmp: Path, fabric: Fabric, steps: list[Step],
                   audit: AuditResult | None = None) -> tuple[float, list[str]]:
    """One `waagent provision` against the armed fabric: (seconds, problems). With `audit`,
    the secrets audit of the run is added to it (and its findings are problems)."""
    harness = Harness(tmp, fabric, CONF)
    arm(fabric, steps)
    start = time.monotonic()
    with ProcSampler(lambda: agent_pid(harness)) as sampler:
        result = harness.run()
    seconds = time.monotonic() - start
    disarm(fabric, steps)
    problems: list[str] = []
    output = result.stdout + result.stderr
    (tmp / "agent.out").write_text(output)
    if result.returncode != 0:
        problems.append(f"exit {result.returncode}: {output[-600:]}")
    health = [h["state"] for h in fabric.record.health_reports()]
    if not health or health[-1] != "Ready":
        problems.append(f"not Ready: health reports {health}")
    counts = one_shot_counts(harness.root)
    for name in ("user:account", "user:password", "ssh:hostkeys"):
        if counts.get(name, 0) != 1:
            problems.append(f"{name} changed the machine {counts.get(name, 0)} times")
    users = [line for line in (harness.root / "etc/passwd").read_text().splitlines()
             if line.startswith(f"{fabric.scenario.username}:")]
    if len(users) != 1:
        problems.append(f"{len(users)} passwd entries for {fabric.scenario.username}")
    if audit is not None:
        found = secrets_audit.audit(harness.root, fabric.scenario, texts={"agent output": output},
                                    record=fabric.record, sampler=sampler)
        audit.merge(found)
        problems += found.findings
    return seconds, problems


def agent_pid(harness: Harness) -> int | None:
    """The running agent's PID: the process whose command line names this root."""
    return secrets_audit.pid_with_arg(f"root={harness.root}")


def provision_baseline(tmp: Path) -> float:
    with Fabric(default_scenario()) as fabric:
        seconds, problems = provision_once(tmp, fabric, [])
    assert not problems, problems
    return seconds


def run_provision_schedule(seed: int, tmp: Path, baseline: float,
                           audit: AuditResult | None = None) -> Outcome:
    steps = schedule(seed)
    with Fabric(default_scenario()) as fabric:
        seconds, problems = provision_once(tmp, fabric, steps, audit)
    outcome = Outcome(seed, "provision", steps, seconds, baseline, not problems, problems)
    if outcome.seconds > outcome.bound:
        outcome.problems.append(f"took {seconds:.1f}s, more than the {outcome.bound:.1f}s "
                                "the schedule explains")
    return outcome


# --- the daemon with an extension, in a Debian root (chroot=y) ------------------------------

# A handler that records every operation (with its sequence number) in the image root, and
# sleeps in enable so that the secrets audit samples its /proc entries while it runs.
HANDLER = r"""#!/bin/sh
op="${1:-enable}"
here="$(cd "$(dirname "$0")/.." && pwd)"
status_dir="$(sed -n 's/.*"statusFolder": *"\([^"]*\)".*/\1/p' "$here/HandlerEnvironment.json")"
seq="${ConfigSequenceNumber:-0}"
echo "$op $seq" >> /var/log/campaign-handler.log
[ "$op" = enable ] && sleep 1
mkdir -p "$status_dir"
printf '[{"version":1.0,"timestampUTC":"%s","status":{"name":"Campaign.Recorder","operation":"%s","status":"success","code":0,"formattedMessage":{"lang":"en-US","message":"ok"}}}]\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$op" > "$status_dir/$seq.status"
"""

MANIFEST = [{"name": "Recorder", "version": 1.0, "handlerManifest": {
    "installCommand": "bin/handler.sh install", "uninstallCommand": "bin/handler.sh uninstall",
    "updateCommand": "bin/handler.sh update", "enableCommand": "bin/handler.sh enable",
    "disableCommand": "bin/handler.sh disable", "rebootAfterInstall": False,
    "reportHeartbeat": False, "updateMode": "UpdateWithInstall",
    "continueOnUpdateFailure": False, "supportsMultipleExtensions": False}}]

EXTENSION = "Campaign.Recorder"
PROTECTED = {"campaignSecret": "pr0tected-Setting-7f3a"}


def handler_package(directory: Path) -> Path:
    (directory / "bin").mkdir(parents=True, exist_ok=True)
    (directory / "HandlerManifest.json").write_text(json.dumps(MANIFEST))
    script = directory / "bin/handler.sh"
    script.write_text(HANDLER)
    script.chmod(0o755)
    return directory


def extension_scenario(package: Path) -> Scenario:
    scenario = default_scenario()
    scenario.extensions = [Extension(name=EXTENSION, version="1.0.0", package=str(package),
                                     public_settings={"n": 0}, protected_settings=PROTECTED)]
    return scenario


DAEMON_CONF = CONF + ("Extensions.GoalStatePeriod=1\nExtensions.InitialGoalStatePeriod=1\n"
                      "Provisioning.MonitorHostName=n\n")


def handler_log(root: Path) -> list[str]:
    path = root / "var/log/campaign-handler.log"
    return path.read_text().splitlines() if path.exists() else []


def handler_status(fabric: Fabric) -> tuple[str, int] | None:
    """(settings status, sequence number) of the recorder in the last status blob."""
    for blob in reversed(fabric.record.status_blobs()):
        status = blob["status"]
        if not isinstance(status, dict):
            continue
        for handler in status["aggregateStatus"]["handlerAggregateStatus"]:
            if handler["handlerName"] == EXTENSION:
                settings = handler.get("runtimeSettingsStatus", {})
                state = settings.get("settingsStatus", {}).get("status", {}).get("status", "")
                return state, int(settings.get("sequenceNumber", -1))
        return None
    return None


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


class DaemonRun:
    """`waagent -daemon chroot=y` on a fresh Debian root, with the recorder extension."""

    def __init__(self, tmp: Path, fabric: Fabric) -> None:
        from tests.integration.test_daemon_extensions import ChrootDaemonHarness
        self.harness = ChrootDaemonHarness(tmp, fabric, DAEMON_CONF)
        self.fabric = fabric
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        self.process = self.harness.start()
        return self.process

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def daemon_once(tmp: Path, fabric: Fabric, steps: list[Step], settings_changes: int = 1,
                audit: AuditResult | None = None,
                timeout: float = 120.0) -> tuple[float, list[str]]:
    """The daemon provisions, enables seq 0, then takes `settings_changes` new settings
    (a new incarnation each); faults armed from the start, an outage mid-run."""
    run = DaemonRun(tmp, fabric)
    arm(fabric, steps)
    outages = [step for step in steps if step.outage]
    problems: list[str] = []
    start = time.monotonic()
    run.start()
    sampler = ProcSampler(lambda: run.process.pid if run.process else None).__enter__()
    try:
        if not wait_for(lambda: handler_status(fabric) == ("success", 0), timeout):
            problems.append(f"seq 0 never succeeded: {handler_status(fabric)}")
        for seq in range(1, settings_changes + 1):
            if outages:
                away = outages.pop()
                fabric.set_hostplugin(False)
                threading.Timer(away.outage, fabric.set_hostplugin, (True,)).start()
            fabric.set_extension(EXTENSION, public_settings={"n": seq})
            if not wait_for(lambda seq=seq: handler_status(fabric) == ("success", seq), timeout):
                problems.append(f"seq {seq} never succeeded: {handler_status(fabric)}")
        seconds = time.monotonic() - start
        if not wait_for(lambda: fabric.hostplugin_available, 10):
            problems.append("the HostGAPlugin did not come back")
        uploads = fabric.record.status_blob_count()
        if not wait_for(lambda: fabric.record.status_blob_count() > uploads,
                        15 + explained_seconds(steps)):
            problems.append("no status upload after the schedule")
        run.stop()
    finally:
        sampler.__exit__()
        if run.process is not None and run.process.poll() is None:
            run.process.kill()
            run.process.wait(10)
        disarm(fabric, steps)
        fabric.set_hostplugin(True)
    output = run.harness.output()
    if not fabric.record.health_reports() or \
            fabric.record.health_reports()[-1]["state"] != "Ready":
        problems.append("Ready was not the last health report")
    enables = [line for line in handler_log(run.harness.root) if line.startswith("enable")]
    for seq in range(settings_changes + 1):
        n = enables.count(f"enable {seq}")
        if n != 1:
            problems.append(f"enable of seq {seq} ran {n} times ({enables})")
    installs = [line for line in handler_log(run.harness.root) if line.startswith("install")]
    if len(installs) != 1:
        problems.append(f"install ran {len(installs)} times")
    counts = one_shot_counts(run.harness.root)
    for name in ("user:account", "user:password", "ssh:hostkeys"):
        if counts.get(name, 0) != 1:
            problems.append(f"{name} changed the machine {counts.get(name, 0)} times")
    if audit is not None:
        found = secrets_audit.audit(run.harness.root, fabric.scenario,
                                    texts={"daemon output": output}, record=fabric.record,
                                    sampler=sampler)
        audit.merge(found)
        problems += found.findings
    return seconds, problems


def run_daemon_schedule(seed: int, tmp: Path, baseline: float,
                        audit: AuditResult | None = None) -> Outcome:
    steps = schedule(seed, routes=DAEMON_ROUTES, outage=True, max_skip=4)
    package = handler_package(tmp / "package")
    with Fabric(extension_scenario(package)) as fabric:
        seconds, problems = daemon_once(tmp / "vm", fabric, steps, audit=audit)
    outcome = Outcome(seed, "daemon", steps, seconds, baseline, not problems, problems)
    if outcome.seconds > outcome.bound:
        outcome.problems.append(f"took {seconds:.1f}s, more than the {outcome.bound:.1f}s "
                                "the schedule explains")
    return outcome


def daemon_baseline(tmp: Path) -> float:
    package = handler_package(tmp / "package")
    with Fabric(extension_scenario(package)) as fabric:
        seconds, problems = daemon_once(tmp / "vm", fabric, [])
    assert not problems, problems
    return seconds


def seeds(kind: str) -> list[int]:
    """Fixed seeds for CI; WAAGENT_CAMPAIGN_SCHEDULES=N runs seeds 1..N."""
    count = os.environ.get("WAAGENT_CAMPAIGN_SCHEDULES")
    if count:
        return list(range(1, int(count) + 1))
    return [3, 7, 11] if kind == "provision" else [5]


if __name__ == "__main__":  # a quick look at a schedule: python -m tests.campaigns.fault_schedules SEED
    for step in schedule(int(sys.argv[1]), routes=DAEMON_ROUTES, outage=True):
        print(step.describe(), f"explains {step.explained_seconds():.1f}s")
