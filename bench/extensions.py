#!/usr/bin/env python3
"""Extension handling: waagent-graph `-daemon` against the published Azure Linux agent (Debian
package waagent 2.7.3) `-daemon`, in identical VM roots (tests/e2e/harness.py), one VM after
the other (they do not share the CPUs), each against its own fabric serving the same scenario.

    sudo .venv/bin/python bench/extensions.py [--quick] [--samples N] [--keep DIR]

Both roots hold both agents, the package's /etc/waagent.conf with Provisioning.Agent=waagent,
ResourceDisk.Format=n, ed25519 host keys and the default periods (Extensions.GoalStatePeriod
6 s); waagent's lab helpers. The scenario is the default one with FastTrack off (both agents
read ExtensionsConfig only) and one extension, Bench.Probe: the probe handler of
tests/e2e/probe_handler.py, whose every command stamps its start and end (the host's clock:
the VM has no time namespace, and the fabric stamps its publications with the same clock).

1. new goal state -> enable started: SAMPLES times, at a random point of the period, the
   fabric publishes a settings change of Bench.Probe (a new incarnation, seq + 1); the time
   from the publication to the start of the probe's enable for that seq. Median. Both agents
   poll the goal state every 6 s, so most of it is the wait for the next poll: the part
   after the agent's first goal state GET that followed the publication is shown too.
2. 20 small handlers in one goal state: Bench.H01..H20 (the same probe, each a few ms of
   shell) are added to the scenario unpublished, then one new incarnation carries them all.
   Agent overhead per handler = (end of the last enable - the agent's first request of
   the new ExtensionsConfig - the sum of the 40 commands' own durations) / 20: what
   the agent spends per handler on downloads, files, state and process handling.
3. Peak RSS while handling them: resident memory (Pss: shared pages split between the
   processes that share them) summed over the agent's own processes (python3 and
   waagent below the launcher: ours is one process, waagent's daemon and its
   -run-exthandlers child), sampled every 50 ms from the publication until every one of the
   20 reports its enable in the status blob. The handlers' commands are not counted. The
   per-agent line also shows the sum just before the publication and, at the peak, where
   it goes by mapping (heap and anonymous memory, the interpreter, shared libraries).

--quick: 3 latency samples (default 7). --ours: our agent only, its figures without
waagent's (a quicker look at a change; `--samples 0` skips the latency part).

--counts: figures that do not move with the machine's load, ours only, instead of the VM
runs: a chroot Debian root (tests/support/debian_root.py) provisioned against the fabric on
127.0.0.1, then one `waagent -run-exthandlers chroot=y` pass that installs and enables the
20 probes, three times: plain (the run report's task time, minus the commands' own time,
per handler), under `strace -c` (the agent process's syscalls: fsync, openat, rename,
mkdir, vfork), and under callgrind (the agent process's instructions, less a pass whose new
goal state has no handler, per handler). In chroot mode every command starts through
chroot(8) and a second shell, which the VM runs do not pay.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import vmharness
import yaml

from fabric.scenario import default_scenario_path
from tests.e2e import harness
from tests.e2e.probe_handler import build_probe, timings

PERIOD = 6.0  # Extensions.GoalStatePeriod, the default of both
PROBE = "Bench.Probe"
HANDLERS = [f"Bench.H{index:02d}" for index in range(1, 21)]
SETTLE_TIMEOUT = 600.0
RSS_EVERY = 0.05
AGENT_COMMS = ("python3", "waagent")
TARGETS = {"latency": 0.3, "overhead_ms": 20.0, "peak_rss": 0.6}
# What the chroot root holds beyond debian_root's defaults (tests/integration's root).
COUNTS_PACKAGES = ("python3", "fdisk", "e2fsprogs", "openssl")


@dataclass
class Figures:
    latencies: list[float] = field(default_factory=list)
    processing: list[float] = field(default_factory=list)  # goal state fetched -> enable
    overhead_ms: float = float("nan")
    wall: float = float("nan")
    commands: float = float("nan")
    peak_rss_mb: float = float("nan")
    idle_rss_mb: float = float("nan")  # the same sum just before the 20 were published
    # Where the Pss of the agent's processes goes at the peak, by mapping, MB
    peak_by_mapping: dict[str, float] = field(default_factory=dict)
    first_command: float = float("nan")  # s from the pickup to the first command
    gaps: dict[str, float] = field(default_factory=dict)  # median s between commands, by kind
    processes: list[str] = field(default_factory=list)
    error: str | None = None


def proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parent = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(stat.parent.name))
    return children


def agent_processes(pid: int) -> dict[int, str]:
    """pid -> comm of the agent's own processes below `pid` (the lab's nsenter)."""
    children = proc_children()
    found, todo = {}, list(children.get(pid, []))
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            comm = Path(f"/proc/{current}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(AGENT_COMMS):
            found[current] = comm
    # A python3 child of an agent's python3 is a Popen between fork and exec (a handler
    # command about to start): a transient copy of its parent, not an agent process.
    parents = {pid: _parent(pid) for pid in found}
    return {pid: comm for pid, comm in found.items()
            if not (comm.startswith("python") and found.get(parents[pid], "").startswith("python"))}


def pss_by_mapping(pids: list[int]) -> dict[str, float]:
    """Pss summed over `pids` by what it maps, MB: heap and anonymous memory, the
    interpreter, and each shared library by its file name (the 6 largest; the rest as
    "other")."""
    found: dict[str, int] = {}
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
        except OSError:
            continue
        mapping = "[anon]"
        for line in lines:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                name = fields[5] if len(fields) > 5 else "[anon]"
                mapping = "[heap+anon]" if name in ("[anon]", "[heap]") else Path(name).name
            elif fields and fields[0] == "Pss:":
                found[mapping] = found.get(mapping, 0) + int(fields[1])
    ranked = sorted(found.items(), key=lambda item: -item[1])
    shown = {name: round(kb / 1024, 1) for name, kb in ranked[:7]}
    shown["other"] = round(sum(kb for _, kb in ranked[7:]) / 1024, 1)
    return shown


def _parent(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(text[text.rindex(")") + 2:].split()[1])


def write_scenario(work: Path, zip_path: Path) -> Path:
    data = yaml.safe_load(default_scenario_path().read_text())
    data["vm_settings"] = False
    data["extensions"] = [{"name": PROBE, "version": "1.0.0", "package": str(zip_path),
                           "public_settings": {"n": 0}}]
    path = work / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def enabled_in_blob(lab: harness.Lab, names: list[str], seq: int = 0) -> bool:
    """The last status blob shows each of `names` enabled with settings `seq`."""
    blobs = lab.fabric.status_blobs()
    if not blobs:
        return False
    handlers = {h["handlerName"]: h for h in
                blobs[-1]["status"]["aggregateStatus"]["handlerAggregateStatus"]}
    for name in names:
        status = handlers.get(name, {}).get("runtimeSettingsStatus", {})
        message = status.get("settingsStatus", {}).get("status", {}).get(
            "formattedMessage", {}).get("message", "")
        if status.get("sequenceNumber") != seq or not message.startswith("probe enable"):
            return False
    return True


def published_time(lab: harness.Lab, incarnation: str) -> float:
    """When the fabric published `incarnation` (its own clock)."""
    def find() -> float | None:
        return next((p["time"] for p in lab.fabric.record().get("published", [])
                     if str(p.get("incarnation")) == incarnation and p["what"] != "start"),
                    None)
    found: float = harness.wait_until(find, 60, f"incarnation {incarnation} in the record", 0.2)
    return found


class AgentVm:
    def __init__(self, agent: str, work: Path, args: argparse.Namespace, zip_path: Path) -> None:
        self.agent, self.work, self.args, self.zip_path = agent, work, args, zip_path
        self.figures = Figures()

    def run(self) -> Figures:
        try:
            self.work.mkdir(parents=True, exist_ok=True)
            scenario = write_scenario(self.work, self.zip_path)
            with vmharness.daemon_lab(self.work, scenario, self.agent, "bext",
                                      SETTLE_TIMEOUT) as (lab, self.process):
                self.lab = lab
                harness.wait_until(lambda: enabled_in_blob(lab, [PROBE]), SETTLE_TIMEOUT,
                                   f"{self.agent}: {PROBE} enabled", 0.5)
                for seq in range(1, self.args.samples + 1):
                    self.figures.latencies.append(self.latency(seq))
                    print(f"  {self.agent}: sample {seq}: "
                          f"{self.figures.latencies[-1]:.2f} s", flush=True)
                self.many_handlers()
                harness.stop(self.process)
        except Exception as err:  # noqa: BLE001 - reported in the table, the other VM goes on
            log = self.work / "agent.log"
            self.figures.error = f"{err}; the agent said: " + (
                log.read_text(errors="replace")[-2000:] if log.exists() else "")
        return self.figures

    def latency(self, seq: int) -> float:
        """Seconds from a settings change's publication to the start of its enable."""
        lab = self.lab
        time.sleep(random.uniform(PERIOD, 2 * PERIOD))  # any point of the period
        incarnation = str(lab.fabric.control("set-extension", name=PROBE,
                                             public_settings={"n": seq})["result"])
        started = harness.wait_until(lambda: next(
            (t[0] for t in timings(lab.root, PROBE) if t[3] == "enable" and t[4] == seq), None),
            SETTLE_TIMEOUT, f"{self.agent}: enable of seq {seq}", 0.1)
        harness.wait_until(lambda: enabled_in_blob(lab, [PROBE], seq), SETTLE_TIMEOUT,
                           f"{self.agent}: seq {seq} in the status blob", 0.2)
        # The record file is rewritten at each report: now it holds the publication.
        published = published_time(lab, incarnation)
        fetched = min(r["time"] for r in lab.fabric.record().get("requests", [])
                      if r["route"] == "goalstate" and r["time"] >= published)
        self.figures.processing.append(started - fetched)
        seconds: float = started - published
        return seconds

    def many_handlers(self) -> None:
        """20 handlers in one new incarnation: overhead per handler and peak RSS."""
        lab = self.lab
        time.sleep(PERIOD)
        # Added to the scenario through FastTrack, which this scenario does not serve (GET
        # /vmSettings answers 404): nothing is published until the new incarnation.
        for name in HANDLERS:
            lab.fabric.control("set-extension", name=name, version="1.0.0",
                               package=str(self.zip_path), fast_track=True)
        samples: list[float] = []
        seen: dict[int, str] = {}
        done = threading.Event()
        self.figures.idle_rss_mb = vmharness.memory_mb(
            list(agent_processes(self.process.pid)), "smaps_rollup", "Pss")

        def sample() -> None:
            while not done.is_set():
                found = agent_processes(self.process.pid)
                seen.update(found)
                samples.append(vmharness.memory_mb(list(found), "smaps_rollup", "Pss"))
                if samples[-1] >= max(samples):
                    self.figures.peak_by_mapping = pss_by_mapping(list(found))
                time.sleep(RSS_EVERY)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            incarnation = str(lab.fabric.control("new-incarnation")["result"])
            harness.wait_until(lambda: enabled_in_blob(lab, HANDLERS), SETTLE_TIMEOUT,
                               f"{self.agent}: the 20 handlers enabled", 0.2)
        finally:
            done.set()
            sampler.join()
        # The agent took the goal state when it asked for its ExtensionsConfig.
        requests = lab.fabric.record().get("requests", [])
        pickup = min(r["time"] for r in requests if r["route"] == "extensionsconfig"
                     and r["path"].endswith(f"incarnation={incarnation}"))
        commands = [t for name in HANDLERS for t in timings(lab.root, name)]
        last_enable = max(t[1] for t in commands if t[3] == "enable")
        busy = sum(t[1] - t[0] for t in commands)
        self.figures.wall = last_enable - pickup
        self.figures.commands = busy
        self.figures.overhead_ms = 1000 * (self.figures.wall - busy) / len(HANDLERS)
        self.figures.peak_rss_mb = max(samples, default=float("nan"))
        # Where the agent's time goes: before the first command (the goal state, manifests,
        # the graph), and between commands (by the kind of the next: install = the next
        # handler's download..settings; enable = after its own install).
        ordered = sorted(commands)
        self.figures.first_command = ordered[0][0] - pickup
        gaps: dict[str, list[float]] = {}
        for before, after in zip(ordered, ordered[1:], strict=False):
            gaps.setdefault(after[3], []).append(after[0] - before[1])
        self.figures.gaps = {kind: round(statistics.median(values), 4)
                             for kind, values in gaps.items()}
        self.figures.processes = sorted(set(seen.values()))


COUNTED_SYSCALLS = ("fsync", "openat", "rename", "mkdir", "vfork", "newfstatat", "connect")


def chroot_pass(handlers: int, wrap: list[str], work: Path) -> tuple[Path, float]:
    """A fresh chroot root provisioned with no handler, then one -run-exthandlers pass
    (under `wrap`) that handles `handlers` new probes; the root and the pass's wall time."""
    import os
    import subprocess

    from fabric import Fabric, build_media, default_scenario
    from tests.integration.provisioning import BASE_CONF, WAAGENT
    from tests.sandbox import product_uuid_for
    from tests.support import debian_root

    work.mkdir(parents=True)
    root = debian_root.fresh_debian_root(work / "vm", (*debian_root.DEFAULT_PACKAGES,
                                                       *COUNTS_PACKAGES))
    scenario = default_scenario()
    scenario.extensions = []
    dmi = root / "sys/class/dmi/id"
    dmi.mkdir(parents=True, exist_ok=True)
    (dmi / "product_uuid").write_text(product_uuid_for(scenario.vm_id))
    (root / "etc/waagent.conf").write_text(BASE_CONF)
    env = {**os.environ, "WAAGENT_HANDLER_TIMEOUT": "60", "WAAGENT_ARTIFACT_BACKOFF": "0.1"}
    with Fabric(scenario) as fabric:
        where = [f"root={root}", "chroot=y", f"wireserver={fabric.wire_url}",
                 f"hostplugin={fabric.hostplugin_url}"]
        subprocess.run([WAAGENT, "provision", *where,
                        f"media={build_media(scenario, work / 'ovf.iso')}"],
                       capture_output=True, check=True, env=env, timeout=600)
        if not handlers:
            fabric.bump_incarnation()
        for name in HANDLERS[:handlers]:
            fabric.set_extension(name, version="1.0.0", public_settings={"n": 1},
                                 package=str(build_probe(work / f"{name}.zip", name)))
        started = time.monotonic()
        subprocess.run([*wrap, WAAGENT, "-run-exthandlers", *where], capture_output=True,
                       check=True, env=env, timeout=600)
        wall = time.monotonic() - started
    states = [(root / f"var/lib/waagent/{name}-1.0.0/config/HandlerState").read_text()
              for name in HANDLERS[:handlers]]
    if states != ["Enabled"] * handlers:
        raise RuntimeError(f"the probes did not all end Enabled: {states}")
    return root, wall


def counts(work: Path) -> int:
    """The --counts figures (see the module's docstring)."""
    import re

    root, wall = chroot_pass(len(HANDLERS), [], work / "plain")
    report = json.loads(sorted((root / "var/lib/waagent/runs").glob("*.json"))[-1].read_text())
    tasks = {name: entry for name, entry in report["tasks"].items()
             if name.startswith("extensions:")}
    task_time = sum(entry.get("duration") or 0.0 for entry in tasks.values())
    commands = sum(end - start for name in HANDLERS for start, end, *_ in timings(root, name))
    per = len(HANDLERS)
    print(f"20 handlers, chroot: wall {wall:.2f} s, run {report['seconds']:.2f} s, "
          f"{len(tasks)} extensions tasks, their time {task_time:.3f} s, commands "
          f"{commands:.3f} s: task time minus commands {(task_time - commands) / per * 1000:.1f}"
          f" ms a handler", flush=True)

    root, _ = chroot_pass(len(HANDLERS), ["strace", "-c", "-o", str(work / "strace.txt")],
                          work / "strace")
    calls: dict[str, int] = {}
    for line in (work / "strace.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in COUNTED_SYSCALLS:
            calls[parts[-1]] = int(parts[3])
    print("syscalls of the agent process, a handler: " + ", ".join(
        f"{name} {calls.get(name, 0) / per:.1f}" for name in COUNTED_SYSCALLS), flush=True)

    instructions = []
    for handlers in (len(HANDLERS), 0):
        out = work / f"callgrind.{handlers}"
        chroot_pass(handlers, ["valgrind", "--tool=callgrind", "--trace-children=no",
                               f"--callgrind-out-file={out}"], work / f"callgrind-{handlers}")
        found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.M)
        instructions.append(int(found[1]) if found else 0)
    print(f"instructions of the agent process: {instructions[0] / 1e6:.1f}M with 20 handlers, "
          f"{instructions[1] / 1e6:.1f}M with none: "
          f"{(instructions[0] - instructions[1]) / per / 1e6:.2f}M a handler", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 latency samples")
    parser.add_argument("--samples", type=int, help="latency samples (default 7, quick 3)")
    parser.add_argument("--ours", action="store_true", help="our agent only, no waagent run")
    parser.add_argument("--keep", help="keep the labs' logs and records here")
    parser.add_argument("--counts", action="store_true",
                        help="load-independent figures in a chroot root, ours only")
    args = parser.parse_args()
    if args.samples is None:
        args.samples = 3 if args.quick else 7
    if args.counts:
        work = Path(tempfile.mkdtemp(prefix="waagent-bench-extension-counts-"))
        try:
            return counts(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    reason = harness.skip_reason(harness.WAAGENT_PACKAGES)
    if reason:
        print(f"bench/extensions.py: {reason}", file=sys.stderr)
        return 2
    base = Path(args.keep or tempfile.mkdtemp(prefix="waagent-bench-extensions-"))
    base.mkdir(parents=True, exist_ok=True)
    zip_path = build_probe(base / "probe.zip", PROBE)
    figures: dict[str, Figures] = {agent: Figures() for agent in vmharness.AGENTS}
    for agent in ["waagent-graph"] if args.ours else vmharness.AGENTS:
        print(f"{agent}: {args.samples} latency samples, then 20 handlers", flush=True)
        figures[agent] = AgentVm(agent, base / agent.replace(" ", "-"), args, zip_path).run()
        found = figures[agent]
        if found.error:
            print(f"{agent}: FAILED: {found.error}", file=sys.stderr)
        print(f"{agent}: latencies {[round(x, 2) for x in found.latencies]} (after the goal "
              f"state GET: {[round(x, 2) for x in found.processing]}); 20 handlers: "
              f"wall {found.wall:.2f} s, commands {found.commands:.2f} s, first command "
              f"{found.first_command:.2f} s after the pickup, median gaps before a command "
              f"{found.gaps}; processes {found.processes}; Pss before the 20 "
              f"{found.idle_rss_mb:.1f} MB, at the peak by mapping {found.peak_by_mapping}",
              flush=True)
    ours, theirs = figures["waagent-graph"], figures["waagent 2.7.3"]
    ours_lat = statistics.median(ours.latencies) if ours.latencies else float("nan")
    theirs_lat = statistics.median(theirs.latencies) if theirs.latencies else float("nan")
    ours_work = statistics.median(ours.processing) if ours.processing else float("nan")
    theirs_work = statistics.median(theirs.processing) if theirs.processing else float("nan")
    rows = [
        (f"new goal state -> enable started, s (median of {args.samples})",
         f"{ours_lat:.2f}", f"{theirs_lat:.2f}", vmharness.ratio(ours_lat, theirs_lat),
         f"<= {TARGETS['latency']}x"),
        ("  of which: goal state GET -> enable started, s (median)", f"{ours_work:.2f}",
         f"{theirs_work:.2f}", vmharness.ratio(ours_work, theirs_work), "-"),
        ("20 handlers: agent overhead per handler, ms", f"{ours.overhead_ms:.1f}",
         f"{theirs.overhead_ms:.1f}", vmharness.ratio(ours.overhead_ms, theirs.overhead_ms),
         f"<= {TARGETS['overhead_ms']:.0f} ms"),
        ("20 handlers: peak RSS (Pss sum) MB, agent processes", f"{ours.peak_rss_mb:.1f}",
         f"{theirs.peak_rss_mb:.1f}", vmharness.ratio(ours.peak_rss_mb, theirs.peak_rss_mb),
         f"<= {TARGETS['peak_rss']}x"),
    ]
    vmharness.print_table(
        "waagent-graph -daemon vs waagent 2.7.3 -daemon, extension handling (Debian 12 VM "
        f"roots, GoalStatePeriod {PERIOD:.0f} s){' --quick' if args.quick else ''}",
        ("figure", "ours", "waagent 2.7.3", "ratio", "target"), rows)
    (base / "figures.json").write_text(json.dumps(
        {agent: vars(found) for agent, found in figures.items()}, default=str))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if not any(f.error for f in figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
