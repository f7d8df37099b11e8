#!/usr/bin/env python3
"""The daemon at rest and at work: waagent-graph `-daemon` against the published Azure Linux
agent (Debian package waagent 2.7.3) `-daemon`, side by side in identical VM roots
(tests/e2e/harness.py), each against its own fabric serving the same scenario.

    sudo .venv/bin/python bench/daemon.py [--quick] [--keep DIR]

Both roots hold both agents, the package's /etc/waagent.conf with Provisioning.Agent=waagent,
ResourceDisk.Format=n, ed25519 host keys, and the default period (Extensions.GoalStatePeriod
6 s); waagent's lab helpers (tests/e2e/harness.install_waagent_helpers). The default scenario
has one extension (the fabric's no-op handler). Phases:

1. idle (both VMs at once): boot, DHCP, `-daemon` as the service starts it, Ready, the
   extension enabled, a warm-up (a full run also waits for our first hourly log collection,
   FIRST_DELAY after start: waagent 2.7.3 collects none here); then IDLE seconds measured.
   CPU: cpuacct.usage (ns) of a cgroup v1 the bench makes for each agent (vmharness.CpuCgroup),
   which the agent's launcher joins before it starts: the daemon and, for waagent, its
   extension handler process, and every child of theirs, exited or not. (The /proc/PID/stat
   ticks of the processes seen, in 1/100 s, are printed beside it.) RSS: VmRSS of those
   processes, summed, sampled every 10 s over the window (mean; max shown too).
   CPU per idle loop (ours): the window's CPU over its loops (the status uploads the fabric
   received in the window: one a loop), monitors included.
2. new goal state -> status (one VM after the other, so that they do not share the CPUs):
   both agents look at the goal state once a period, so the wait for the next look depends
   on where in the period a goal state comes. SAMPLES times, the fabric publishes a new
   incarnation at an offset after the agent's last goal-state GET, the offsets spread evenly
   over the period, the same for both agents. Two times, all stamped by the fabric: from the
   publication, and from the agent's first GET after it (the part the agent controls), to the
   first status blob acknowledging it (inSvdSeqNo). Mean and median.
3. 2000 loops, a goal state change every 10th: on the host, not in a VM (GoalStatePeriod
   cannot go below 1 s, so 2000 loops would take over half an hour in a VM). A
   `graph.daemon.Daemon` on a sandbox root (tests/sandbox.py), provisioned against a fabric
   on 127.0.0.1 (in its own process: its record of every request would grow in the measured
   one), then `goal_state_pass()` LOOPS times with a new incarnation before every 10th: each
   of those passes runs the graph in-process as the daemon does. The Daemon runs in a process
   of its own (bench/daemon_loops.py) that imports only what the daemon imports: this one
   holds the fabric emulator and pytest, twice the daemon's heap. RSS from /proc/self/status
   after a warm-up of WARM loops and at the end. Before them, the CPU of 300 idle passes
   alone (getrusage): the loop's own cost, without the monitors the VM figure includes.

--quick: a 60 s idle window after 20 s of warm-up, 3 latency samples, 300 loops.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vmharness

from fabric.scenario import default_scenario_path
from tasks.logcollector import FIRST_DELAY
from tests.e2e import harness

PERIOD = 6.0  # Extensions.GoalStatePeriod, the default of both
CLOCK_TICKS = 100  # USER_HZ: /proc/PID/stat counts in 1/100 s on Linux
SETTLE_TIMEOUT = 300.0
RSS_EVERY = 10.0
FIRST_LOGS = threading.Event()  # our daemon's first log archive is uploaded
TARGETS = {"idle_cpu": 0.3, "idle_rss": 0.5, "cpu_per_loop_ms": 3.0, "rss_growth_mb": 1.0,
           "latency": 0.5}


@dataclass
class Latency:
    """One new goal state's way through an agent, in the fabric's clock."""

    offset: float  # publication - the agent's last goal-state GET before it
    published: float
    seen: float  # the agent's first goal-state GET after the publication
    uploaded: float  # the first status blob carrying the new incarnation

    @property
    def total(self) -> float:
        return self.uploaded - self.published

    @property
    def handled(self) -> float:
        """The part the agent controls: from its GET that saw the goal state."""
        return self.uploaded - self.seen


@dataclass
class Figures:
    """What one agent's VM measured."""

    idle_seconds: float = 0.0
    idle_cpu: float = 0.0  # from the agent's cgroup (ns)
    idle_ticks: float = 0.0  # from /proc/PID/stat (1/100 s), of the processes listed
    rss_mb: list[float] = field(default_factory=list)
    loops: int | None = None
    latencies: list[Latency] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    error: str | None = None


# ------------------------------------------------------------------- processes, from the host


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) of every process on the host."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        table[int(stat.parent.name)] = (int(fields[1]), comm)
    return table


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (host pids), not `pid` itself."""
    table = proc_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime+cutime+cstime of these processes, in seconds (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
    except OSError:
        return "?"


# ------------------------------------------------------------------- one VM


def incarnation_of(blob: dict[str, Any]) -> str | None:
    aggregate = blob["status"].get("aggregateStatus", {})
    goal = aggregate.get("vmArtifactsAggregateStatus", {}).get("goalStateAggregateStatus", {})
    seq: str | None = goal.get("inSvdSeqNo")
    return seq


def settled(lab: harness.Lab, incarnation: str) -> bool:
    """A status blob for `incarnation` with every handler's extension Ready."""
    for blob in lab.fabric.status_blobs():
        handlers = blob["status"].get("aggregateStatus", {}).get("handlerAggregateStatus", [])
        if incarnation_of(blob) == incarnation and handlers and all(
                h.get("status") == "Ready" and "runtimeSettingsStatus" in h for h in handlers):
            return True
    return False


def uploads_between(lab: harness.Lab, start: float, end: float) -> int:
    """Status blobs the fabric received in [start, end) (its clock: the host's)."""
    return len([b for b in lab.fabric.status_blobs() if start <= b["time"] < end])


class AgentVm:
    """One lab running one agent's daemon; `idle` and `latency` fill its Figures."""

    def __init__(self, agent: str, work: Path, args: argparse.Namespace) -> None:
        self.agent, self.work, self.args = agent, work, args
        self.figures = Figures()
        self.ready = threading.Event()  # idle phase done
        self.go_latency = threading.Event()
        self.done = threading.Event()
        self.publish_lag = 0.0  # seconds from a control request to its publication

    def run(self) -> None:
        try:
            side = "ours" if self.agent == "waagent-graph" else "wa"
            with vmharness.CpuCgroup(f"bench-daemon-{side}-{os.getpid()}") as self.cgroup, \
                    vmharness.daemon_lab(self.work, default_scenario_path(), self.agent, "bench",
                                         SETTLE_TIMEOUT, self.cgroup) as (lab, self.process):
                self.lab = lab
                harness.wait_until(lambda: settled(lab, "1"), SETTLE_TIMEOUT,
                                   f"{self.agent}: the extension enabled", 1)
                self.idle()
                self.ready.set()
                self.go_latency.wait()
                self.latency()
        except Exception as err:  # noqa: BLE001 - reported in the table, the other VM goes on
            log = self.work / "agent.log"
            self.figures.error = f"{err}; the agent said: " + (
                log.read_text(errors="replace")[-2000:] if log.exists() else "")
        finally:
            if self.agent == "waagent-graph":
                FIRST_LOGS.set()  # the other VM never waits for a run that failed
            self.ready.set()
            self.done.set()

    def idle(self) -> None:
        time.sleep(self.args.warmup)
        if not self.args.quick:
            self.past_first_log_collection()
        pids = descendants(self.process.pid)
        self.figures.processes = [cmdline(pid) for pid in pids]
        strays = [pid for pid in pids if not self.cgroup.holds(pid)]
        if strays:
            raise RuntimeError(f"processes of the agent outside {self.cgroup.path}: "
                               f"{[cmdline(pid) for pid in strays]}")
        cpu0, ticks0 = self.cgroup.usage_ns(), cpu_seconds(pids)
        started, wall0 = time.monotonic(), time.time()
        end = started + self.args.idle
        while time.monotonic() < end:
            # Processes that came meanwhile count from now on (their CPU before is lost: none
            # are expected at rest, and the table lists what ran).
            pids = sorted(set(pids) | set(descendants(self.process.pid)))
            self.figures.rss_mb.append(vmharness.memory_mb(pids, "status", "VmRSS"))
            time.sleep(min(RSS_EVERY, max(0.0, end - time.monotonic())))
        self.figures.idle_cpu = (self.cgroup.usage_ns() - cpu0) / 1e9
        self.figures.idle_ticks = cpu_seconds(pids) - ticks0
        self.figures.idle_seconds = time.monotonic() - started
        self.figures.loops = uploads_between(self.lab, wall0, time.time())

    def past_first_log_collection(self) -> None:
        """Ours collects and uploads its logs once an hour, the first time FIRST_DELAY after
        its start, inside a full run's window; waagent 2.7.3 collects none in this lab
        (it needs cgroups). Both windows start once ours has uploaded its first archive, so
        that both measure their idle loop."""
        if self.agent == "waagent-graph":
            try:
                harness.wait_until(lambda: self.lab.fabric.record().get("logs"),
                                   FIRST_DELAY + SETTLE_TIMEOUT, "our first log upload", 5)
            finally:
                FIRST_LOGS.set()
        else:
            FIRST_LOGS.wait(FIRST_DELAY + SETTLE_TIMEOUT)

    def latency(self) -> None:
        for offset in offsets(self.args.samples):
            self.figures.latencies.append(self.publish_and_wait(offset))

    def record(self, newer_than: float) -> dict[str, Any]:
        """The fabric's record once its file is newer than `newer_than` (it is written
        after every report: a status upload, each loop)."""
        path = self.lab.fabric.record_path
        harness.wait_until(lambda: path.stat().st_mtime > newer_than, SETTLE_TIMEOUT,
                           f"{self.agent}: the fabric's record", 0.02)
        record: dict[str, Any] = self.lab.fabric.record()
        return record

    def publish_and_wait(self, offset: float) -> Latency:
        """Publish a new incarnation `offset` s after one of the agent's goal-state GETs
        (seen in the fabric's record, which the status upload after it writes); the times
        of its way to the first status blob acknowledging it, all stamped by the fabric."""
        seen = self.record(0.0)
        while True:
            last = goal_state_gets(seen)[-1]
            seen = self.record(self.lab.fabric.record_path.stat().st_mtime)
            newest = goal_state_gets(seen)[-1]
            # A control request takes a while to start (a process in the fabric's
            # namespace): aimed that much earlier, as long as the last one took.
            aim = newest + offset - self.publish_lag
            if newest > last and time.time() < aim:
                time.sleep(aim - time.time())
                break
        fabric = self.lab.fabric
        asked = time.time()
        incarnation = str(fabric.control("new-incarnation")["result"])
        # The next sample starts once this goal state is fully handled.
        harness.wait_until(lambda: settled(self.lab, incarnation), SETTLE_TIMEOUT,
                           f"{self.agent}: incarnation {incarnation} settled", 0.5)
        record = fabric.record()
        published = next(p["time"] for p in record["published"]
                         if str(p.get("incarnation")) == incarnation)
        self.publish_lag = published - asked
        uploaded = next(b["time"] for b in record["status_blobs"]
                        if incarnation_of(b) == incarnation)
        gets = goal_state_gets(record)
        return Latency(published - max(t for t in gets if t < published), published,
                       min(t for t in gets if t > published), uploaded)


def offsets(samples: int) -> list[float]:
    """Where in the agent's period the samples publish: spread evenly over it."""
    return [PERIOD * (index + 0.5) / samples for index in range(samples)]


def goal_state_gets(record: dict[str, Any]) -> list[float]:
    """When the fabric answered the agent's goal-state GETs, oldest first."""
    return [r["time"] for r in record.get("requests", [])
            if r["route"] == "goalstate" and r["method"] == "GET"]


def vm_phases(base: Path, args: argparse.Namespace) -> dict[str, Figures]:
    vms = {agent: AgentVm(agent, base / agent.replace(" ", "-"), args) for agent in vmharness.AGENTS}
    threads = [threading.Thread(target=vm.run, name=agent) for agent, vm in vms.items()]
    for thread in threads:
        thread.start()
    for vm in vms.values():
        vm.ready.wait()
    print("idle phase done; latency samples, one VM after the other", flush=True)
    for vm in vms.values():
        vm.go_latency.set()
        vm.done.wait()
    for thread in threads:
        thread.join()
    return {agent: vm.figures for agent, vm in vms.items()}


# ------------------------------------------------------------------- in-process loops


class FabricProcess:
    """`waagent-fabric serve default` on 127.0.0.1 in its own process (its record of every
    request and blob must not count in the measured process), driven by its control channel."""

    def __init__(self, log: Path) -> None:
        import subprocess

        fabric_cli = Path(sys.executable).parent / "waagent-fabric"
        self.log = log
        self.process = subprocess.Popen(
            [str(fabric_cli), "serve", "default", "--bind", "127.0.0.1",
             "--control", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(log, "wb"),  # noqa: SIM115
            text=True)
        assert self.process.stdout is not None
        self.urls: dict[str, str] = {}
        while "control" not in self.urls:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the fabric did not start: {log.read_text()[-2000:]}")
            name, _, url = line.strip().partition(" ")
            self.urls[name] = url

    def control(self, action: str | None = None) -> dict[str, Any]:
        from fabric.control import send

        return send(self.urls["control"], {"action": action} if action else None)

    def record(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(self.urls["control"] + "/control/record",  # noqa: S310
                                    timeout=60) as answer:
            data: dict[str, Any] = json.loads(answer.read())
        return data

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


IDLE_WARM, IDLE_PASSES = 20, 300
STEADY = 1000  # loops after which RSS has taken its one step (see main)


def in_process_loops(base: Path, loops: int, warm: int) -> dict[str, Any]:
    """RSS over `loops` goal-state passes of one Daemon, a new incarnation every 10th: the
    sandbox, media and fabric made here, the Daemon in a process of its own
    (bench/daemon_loops.py) that imports only what the daemon does."""
    import subprocess

    from fabric import build_media, default_scenario
    from tests.sandbox import make_sandbox_root

    work = base / "in-process"
    work.mkdir(parents=True, exist_ok=True)
    fabric = FabricProcess(work / "fabric.log")
    try:
        scenario = default_scenario()
        root = make_sandbox_root(work / "vm", scenario.vm_id)
        conf = work / "waagent.conf"
        conf.write_text("Provisioning.Agent=waagent\nResourceDisk.Format=n\n"
                        "Provisioning.RegenerateSshHostKeyPair=y\n")
        media = build_media(scenario, work / "ovf.iso")
        setup, result = work / "setup.json", work / "result.json"
        setup.write_text(json.dumps({
            "root": str(root), "conf": str(conf), "media": str(media), "urls": fabric.urls,
            "loops": loops, "warm": warm, "idle_warm": IDLE_WARM, "idle_passes": IDLE_PASSES}))
        with open(work / "daemon.log", "wb") as log:
            subprocess.run([sys.executable, str(Path(__file__).with_name("daemon_loops.py")),
                            str(setup), str(result)], cwd=vmharness.REPO, stdout=log,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=True)
        figures: dict[str, Any] = json.loads(result.read_text())
        blobs = fabric.record()["status_blobs"]
    finally:
        fabric.stop()
    return {**figures, "blobs": len(blobs),
            "problems": sum(len(b.get("problems", [])) for b in blobs)}


# ------------------------------------------------------------------- the table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short windows, few samples")
    parser.add_argument("--keep", help="keep the labs' logs and records here")
    parser.add_argument("--skip-vm", action="store_true", help="only the in-process loops")
    parser.add_argument("--loops", type=int, help="in-process loops (default 2000, quick 300)")
    args = parser.parse_args()
    args.warmup, args.idle, args.samples = (20, 60, 3) if args.quick else (60, 300, 8)
    args.loops, args.warm = (args.loops or 300, 50) if args.quick else (args.loops or 2000, 100)
    reason = harness.skip_reason(harness.WAAGENT_PACKAGES)
    if reason:
        print(f"bench/daemon.py: {reason}", file=sys.stderr)
        return 2
    base = Path(args.keep or tempfile.mkdtemp(prefix="waagent-bench-daemon-"))
    base.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Figures] = {}
    if not args.skip_vm:
        print(f"idle: {args.warmup} s warm-up, {args.idle} s measured, both VMs at once",
              flush=True)
        figures = vm_phases(base, args)
        for agent, found in figures.items():
            if found.error:
                print(f"{agent}: FAILED: {found.error}", file=sys.stderr)
            print(f"{agent}: processes {found.processes}; idle CPU {found.idle_cpu:.4f} s "
                  f"(/proc ticks of those: {found.idle_ticks:.2f} s); latencies, s "
                  "(offset, publication -> status, its GET -> status) "
                  f"{[(round(x.offset, 2), round(x.total, 2), round(x.handled, 2)) for x in found.latencies]}; "
                  f"RSS samples {[round(x, 1) for x in found.rss_mb]}", flush=True)
    print(f"in-process: {args.loops} loops, a new incarnation every 10th", flush=True)
    loops = in_process_loops(base, args.loops, args.warm)
    print(f"in-process: {loops}", flush=True)

    rows = []
    if figures:
        ours, theirs = figures["waagent-graph"], figures["waagent 2.7.3"]
        rows.append((f"idle CPU s over {ours.idle_seconds:.0f} s, all agent processes (cgroup)",
                     f"{ours.idle_cpu:.3f}", f"{theirs.idle_cpu:.3f}",
                     vmharness.ratio(ours.idle_cpu, theirs.idle_cpu), f"<= {TARGETS['idle_cpu']}x"))
        ours_rss = statistics.mean(ours.rss_mb) if ours.rss_mb else 0.0
        theirs_rss = statistics.mean(theirs.rss_mb) if theirs.rss_mb else 0.0
        rows.append((f"idle RSS MB, sum (mean; max {max(ours.rss_mb, default=0):.1f} / "
                     f"{max(theirs.rss_mb, default=0):.1f})", f"{ours_rss:.1f}",
                     f"{theirs_rss:.1f}", vmharness.ratio(ours_rss, theirs_rss),
                     f"<= {TARGETS['idle_rss']}x"))
        per_loop = 1000 * ours.idle_cpu / ours.loops if ours.loops else float("nan")
        rows.append((f"CPU ms per idle loop ({ours.loops} loops)", f"{per_loop:.2f}", "-", "-",
                     f"<= {TARGETS['cpu_per_loop_ms']:.0f} ms"))
        for what, part in (("publication", "total"), ("the agent's GET seeing it", "handled")):
            for name, average in (("mean", statistics.mean), ("median", statistics.median)):
                ours_lat, theirs_lat = (
                    average([getattr(x, part) for x in agent.latencies])
                    if agent.latencies else float("nan") for agent in (ours, theirs))
                rows.append((f"new goal state -> status s, from {what} ({name} of "
                             f"{args.samples})", f"{ours_lat:.2f}", f"{theirs_lat:.2f}",
                             vmharness.ratio(ours_lat, theirs_lat),
                             f"<= {TARGETS['latency']}x" if part == "total" else ""))
    rows.append((f"CPU ms per idle goal-state pass, in-process ({IDLE_PASSES} passes, no "
                 "monitors)", f"{loops['idle_pass_ms']:.2f}", "-", "-",
                 f"<= {TARGETS['cpu_per_loop_ms']:.0f} ms"))
    growth = loops["end_rss"] - loops["warm_rss"]
    rows.append((f"RSS growth MB, loops {loops['warm']}..{loops['loops']} "
                 f"({loops['warm_rss']:.1f} -> {loops['end_rss']:.1f})", f"{growth:+.2f}", "-",
                 "-", f"<= {TARGETS['rss_growth_mb']:.0f} MB"))
    # RSS takes one step, ~1 MB, a few hundred loops in: CPython 3.11's table of interned
    # strings is rebuilt once the strings interned and freed meanwhile (path parts, names
    # read from files) have used up its free slots, and it doubles then because more than a
    # third of it is live (the names in the daemon's modules); the live heap (allocated
    # blocks) stays flat. Growth after that is what a long life would see.
    later = [rss for index, rss, _ in loops["trace"] if index >= STEADY]
    if len(later) >= 2:
        rows.append((f"RSS growth MB, loops {STEADY}..{loops['loops']} (after the step)",
                     f"{later[-1] - later[0]:+.2f}", "-", "-",
                     f"<= {TARGETS['rss_growth_mb']:.0f} MB"))
    vmharness.print_table(
        "waagent-graph -daemon vs waagent 2.7.3 -daemon (Debian 12 VM roots, default scenario, "
        f"GoalStatePeriod {PERIOD:.0f} s){' --quick' if args.quick else ''}",
        ("figure", "ours", "waagent 2.7.3", "ratio", "target"), rows)
    print(f"\nin-process loops: {loops['seconds']:.1f} s, {loops['graph_runs']} graph runs, "
          f"{loops['blobs']} status blobs ({loops['problems']} problems), last incarnation "
          f"{loops['incarnation']}, {loops['modules']} modules; (loop, RSS MB, allocated "
          f"blocks) {loops['trace']}")
    interned = loops["interned"]
    if interned:
        print(f"interned strings at the end: {interned['live']} live in a table of "
              f"{interned['size']} (a resize doubles it when more than "
              f"{interned['size'] // 3} are live)")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
