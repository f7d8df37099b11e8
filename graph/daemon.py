"""`waagent -daemon`: provision, then watch the platform and the VM, in one process.

Start: the provision group, as `waagent provision` runs it. Then the loop, every
`Extensions.GoalStatePeriod` seconds (the first after `Extensions.InitialGoalStatePeriod`):
- the cheap facts: the goal state document (its digest) and, where the HostGAPlugin
  has FastTrack, `vmSettings` asked with the ETag already seen;
- nothing changed: no graph work. Something changed (a new goal state or vmSettings,
  an edited waagent.conf, SIGHUP): doit runs the provision group again in this process,
  over a regenerated graph, and only the tasks whose inputs changed run;
- the status blob goes up every loop (tasks/status.py), as waagent sends it;
- monitors (tasks.MONITORS) run on their own periods, all that are due in one doit run.

SIGTERM or SIGINT: the running task finishes, doit saves its state, the daemon exits 0.
A SIGKILL at any point is safe: one-shot work is recorded with the work itself
(tasks/once.py) and every other task checks the real state. A second daemon refuses to
start and names the PID that runs. `waagent status` shows `<Lib.Dir>/daemon.json`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graph.context import DEFAULT_CONF, Context, make_context
from graph.version import AGENT_VERSION
from system.errors import AgentError
from tasks import MONITORS, Monitor, extensions, inputs

log = logging.getLogger("waagent.daemon")

STATE_FILE = "daemon.json"
# daemon.json's counters and times (loops, the last upload, monitor runs) alone are written
# every this many loops; any other change is written at once. Its atomic rewrite costs
# more CPU than the rest of an idle loop.
STATE_EVERY_LOOPS = 10
# waagent asks again this long after the HostGAPlugin said it has no FastTrack.
FAST_TRACK_RECHECK = 6 * 3600.0
# How late a monitor may run, as a share of its period, to share the goal-state pass's wakeup.
MONITOR_WAIT = 0.2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DaemonRunning(AgentError):
    """Another daemon holds Pid.File."""


class PidLock:
    """Pid.File, locked (flock) for as long as the daemon runs, holding its PID."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DaemonRunning(f"another waagent daemon is running as PID {holder} "
                                f"(it holds {self.path}); stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.unlink(self.path)
            os.close(self.fd)
            self.fd = None


class Wakeup:
    """Signals end the daemon's sleep at once: their handlers only set flags, and Python
    writes each signal's number to this pipe (signal.set_wakeup_fd)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.previous = signal.set_wakeup_fd(self.write_fd)

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            ready, _, _ = select.select([self.read_fd], [], [], seconds)
            if ready:
                self.drain()

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 64):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(self.previous)
        os.close(self.read_fd)
        os.close(self.write_fd)


class _ValueSavers:
    """What a check is given in place of doit's task: Inputs checks add the values they
    saw to `value_savers` (doit stores them after a successful run)."""

    def __init__(self) -> None:
        self.value_savers: list[Callable[[], dict[str, Any]]] = []

    def values(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for saver in self.value_savers:
            found.update(saver())
        return found


def doit_args(variables: dict[str, str], *targets: str) -> list[str]:
    return [*targets, *(f"{key}={value}" for key, value in variables.items())]


class Daemon:
    """The agent's long-lived process (see the module's docstring)."""

    def __init__(self, variables: dict[str, str],
                 run_doit: Callable[[list[str]], int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.variables = dict(variables)
        self._run_doit = run_doit
        self.clock = clock
        self.ctx: Context = make_context(self.variables)
        # Handlers are enabled once per agent start (tasks/extensions.py).
        extensions.AGENT_START = f"daemon-{os.getpid()}-{time.time():.0f}"
        self.stopping = False
        self.reload_asked = False
        self.conf_path = self._conf_path()
        self.conf_stamp = self._conf_stamp()
        self.goal_state_digest: str | None = None
        self.goal_state: Any = None  # wire.documents.GoalState of that digest
        self.target: Any = None  # tasks.status.StatusTarget of that goal state
        self.vm_settings_etag: str | None = None
        self.fast_track_next = 0.0
        # The last status blob built, and what it says (its inputs): an idle loop, whose
        # inputs are the last loop's, only stamps the blob with the time again.
        self.status_blob: dict[str, Any] | None = None
        self.status_says: Any = None
        from tasks.extension_status import StatusParts

        self.status_parts = StatusParts()
        self.monitors: dict[str, Monitor] = {}
        # Per monitor task: the inputs its fingerprint checks saw when they last passed.
        self.monitor_values: dict[str, dict[str, Any]] = {}
        self.monitor_due: dict[str, float] = {}
        from graph.update import AgentUpdater
        from tasks.logcollector import PeriodicCollection

        self.log_collection = PeriodicCollection(clock)
        self.updater = AgentUpdater(clock)
        self.relaunch_asked = False  # a new agent version is installed: hand over
        self.state: dict[str, Any] = {
            "pid": os.getpid(), "version": AGENT_VERSION, "since": time.time(), "loops": 0,
            "graph_runs": 0,
            "conf_reloads": 0, "goal_state": {}, "status": {}, "monitors": {},
            "last_run": {}}
        self.saved_state: tuple[str, int] | None = None  # (what it said, at loop), last written

    # -- process ------------------------------------------------------------------------------

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; 0 then, 1 when the daemon cannot start."""
        lock = PidLock(self.ctx.root / self.ctx.conf.required_path("Pid.File"))
        try:
            lock.acquire()
        except DaemonRunning as err:
            log.error("%s", err)
            return 1
        handlers = self._install_signals()
        wakeup = Wakeup()
        try:
            log.info("daemon started (PID %s): provisioning, then the goal-state loop",
                     os.getpid())
            self.run_graph("provision", why="start")
            if inputs.mode(self.ctx) == "scvmm":
                # System Center VMM provisions this VM: its installer ran, the agent
                # stands aside, as waagent's daemon does.
                log.info("System Center VMM provisions this VM: the daemon stands aside")
                return 0
            self.loop(wakeup)
        finally:
            self.log_collection.stop()
            wakeup.close()
            for signum, previous in handlers.items():
                signal.signal(signum, previous)
            self.save_state(stopped=True)
            lock.release()
        log.info("daemon stopped after %s loops", self.state["loops"])
        return 0

    def _install_signals(self) -> dict[int, Any]:
        def stop(signum: int, frame: Any) -> None:
            self.stopping = True

        def reload(signum: int, frame: Any) -> None:
            self.reload_asked = True

        previous: dict[int, Any] = {}
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, stop)
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
        return previous

    # -- the loop -----------------------------------------------------------------------------

    def loop(self, wakeup: Wakeup) -> None:
        conf = self.ctx.conf
        next_pass = self.clock() + (conf.number("Extensions.InitialGoalStatePeriod") or 6)
        self._schedule_monitors()
        while not self.stopping:
            now = self.clock()
            wakeup.wait(self.wake_time(next_pass) - now)
            if self.stopping:
                break
            if self.reload_asked or self._conf_stamp() != self.conf_stamp:
                self.reload_conf()
            now = self.clock()
            if now >= next_pass:
                self.goal_state_pass()
                next_pass = now + (self.ctx.conf.number("Extensions.GoalStatePeriod") or 6)
            self.run_due_monitors()
            self.collect_logs()

    def wake_time(self, next_pass: float) -> float:
        """When the loop wakes next: for the goal-state pass, or for a monitor that is due.
        A monitor due less than MONITOR_WAIT of its period before the pass waits for it:
        one wakeup instead of two, each of which costs an idle VM CPU time."""
        wake = next_pass
        for name, due in self.monitor_due.items():
            if next_pass - due > MONITOR_WAIT * self.period(self.monitors[name]):
                wake = min(wake, due)
        return wake

    def goal_state_pass(self) -> None:
        """One loop: cheap facts, the graph when they changed, the status."""
        self.state["loops"] += 1
        try:
            changed = self.platform_changed()
        except Exception as err:  # noqa: BLE001 - the platform may be away: say so, go on
            log.warning("goal state check failed: %s", err)
            self.state["goal_state"]["error"] = str(err)
            changed = []
        else:
            self.state["goal_state"].pop("error", None)
        if changed:
            self.run_graph("provision", why=", ".join(changed))
        self.update_agent()
        self.report_status()
        self.save_state()

    def update_agent(self) -> None:
        """Self-update (graph/update.py): once a newer version is installed the daemon
        stops, and run_daemon hands over to the launcher."""
        try:
            # A stop asked meanwhile wins: the next start runs the new version anyway.
            if self.updater.tick(self.ctx, self.goal_state) and not self.stopping:
                self.relaunch_asked = self.stopping = True
        except Exception as err:  # noqa: BLE001 - the next check tries again
            log.warning("agent update: %s", err)
        self.state["update"] = self.updater.status

    def platform_changed(self) -> list[str]:
        """What is new on the platform since the last pass: the goal state document, or
        the FastTrack vmSettings (ETag)."""
        from wire import decode_text
        from wire.documents import parse_goal_state

        changed = []
        document = inputs.wireserver(self.ctx).goal_state_document()
        digest = inputs.goal_state_digest(decode_text(document))
        if digest != self.goal_state_digest:
            state = parse_goal_state(document)
            if self.goal_state_digest is not None:
                changed.append(f"goal state incarnation {state.incarnation}")
            self.take_goal_state(digest, state)
        if self.vm_settings_changed():
            changed.append(f"vmSettings {self.vm_settings_etag}")
        return changed

    def take_goal_state(self, digest: str, state: Any) -> None:
        from tasks.status import fetch_status_target

        self.goal_state_digest, self.goal_state = digest, state
        self.target = fetch_status_target(self.ctx, state)
        self.state["goal_state"] = {"incarnation": state.incarnation, "seen_at": time.time()}

    def vm_settings_changed(self) -> bool:
        """FastTrack: True when vmSettings carries a new ETag. A host without it is asked
        again after FAST_TRACK_RECHECK."""
        from tasks.status import hostplugin
        from wire.errors import WireError

        if self.target is None or self.clock() < self.fast_track_next:
            return False
        try:
            answer = hostplugin(self.ctx, self.target).vm_settings(self.vm_settings_etag)
        except WireError as err:
            log.debug("vmSettings: %s", err)
            return False
        if answer.status == "unsupported":
            self.fast_track_next = self.clock() + FAST_TRACK_RECHECK
            return False
        if answer.status == "unchanged" or answer.etag == self.vm_settings_etag:
            return False
        first = self.vm_settings_etag is None
        self.vm_settings_etag = answer.etag
        extensions.VM_SETTINGS_ETAG = answer.etag  # gather:extensions reads vmSettings again
        self.state["goal_state"]["vm_settings_etag"] = answer.etag
        return not first

    def report_status(self) -> None:
        """Upload this loop's status blob (built again only when what it says changed);
        keep a copy when it says something new."""
        from tasks.status import build_status, keep_status_copy, os_info, upload_status
        from wire.status import encode, utc_stamp

        if self.target is None:
            return
        try:
            parts = self.status_parts.get(self.ctx, self.target.in_svd_seq_no)
            guest_os = os_info(self.ctx)
            # The update status as text: a dict changed in place would compare equal.
            update = json.dumps(self.updater.status, sort_keys=True)
            says = (self.target, guest_os, parts, update)
            if self.status_blob is not None and says == self.status_says:
                blob, new = self.status_blob, False
            else:
                blob = build_status(self.ctx, self.target, handlers=parts.handlers,
                                    update_status=self.updater.status,
                                    goal_state=parts.goal_state, guest_os=guest_os)
                new = True
            blob["timestampUTC"] = utc_stamp()
            content = encode(blob)
            via = upload_status(self.ctx, self.target, content)
            if new:
                keep_status_copy(self.ctx, self.target, content)
            self.status_blob, self.status_says = blob, says
        except Exception as err:  # noqa: BLE001 - the next loop tries again
            log.warning("status not reported: %s", err)
            self.state["status"] = {"at": time.time(), "error": str(err)}
            return
        self.state["status"] = {"at": time.time(), "via": via,
                                "incarnation": self.target.incarnation}

    # -- the graph ----------------------------------------------------------------------------

    def run_graph(self, *targets: str, why: str) -> int:
        """doit over a regenerated graph, in this process; a stop signal during it ends
        the run after the running task (doit saves what finished)."""
        run = self._run_doit or _engine()
        log.info("running %s (%s)", " ".join(targets), why)
        started = time.time()
        try:
            result = run(doit_args(self.variables, *targets))
        except KeyboardInterrupt:
            self.stopping = True
            result = 2
        self.state["graph_runs"] += 1
        self.state["last_run"] = {"targets": list(targets), "why": why, "at": started,
                                  "seconds": round(time.time() - started, 3),
                                  "result": "ok" if result == 0 else f"exit {result}"}
        return result

    def reload_conf(self) -> None:
        """A new Context from the edited waagent.conf; the graph then reruns what it touches."""
        self.reload_asked = False
        self.conf_stamp = self._conf_stamp()
        try:
            self.ctx = make_context(self.variables)
        except AgentError as err:
            log.error("waagent.conf not reloaded: %s", err)
            return
        self.conf_path = self._conf_path()
        self.state["conf_reloads"] += 1
        self.target = self.goal_state = self.goal_state_digest = None
        self._schedule_monitors()
        self.run_graph("provision", why="waagent.conf changed")

    def _conf_path(self) -> Path:
        """Found once per context and kept: each loop stats it (a Path made anew every loop
        would also intern its parts anew, issue 17)."""
        given = self.variables.get("conf")
        return Path(given) if given else self.ctx.root.follow(DEFAULT_CONF)

    def _conf_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.conf_path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    # -- monitors -----------------------------------------------------------------------------

    def _schedule_monitors(self) -> None:
        """Each enabled monitor that has tasks with this configuration, due one period
        from now."""
        now = self.clock()
        self.monitors = {m.name: m for m in MONITORS if self.monitor_targets(m)}
        self.monitor_due = {name: now + self.period(m) for name, m in self.monitors.items()}

    def period(self, monitor: Monitor) -> float:
        return float(self.ctx.conf.number(monitor.period_option) or 30)

    def monitor_targets(self, monitor: Monitor) -> list[str]:
        """The monitor's tasks in this configuration's graph (none while its area is not
        built, or when its option turns it off)."""
        return [f"{area}:{task['name']}" for area, task in self.monitor_tasks(monitor)]

    def monitor_tasks(self, monitor: Monitor) -> list[tuple[str, Any]]:
        """The monitor's task dicts with this configuration, with their area's name."""
        import importlib

        from tasks import AREAS

        option = monitor.enabled_option
        if option is not None and not (self.ctx.conf.flag(option)
                                       if isinstance(self.ctx.conf[option], bool)
                                       else self.ctx.conf[option] is not None):
            return []
        areas = {area.name: area for area in AREAS}
        found = []
        for target in monitor.targets:
            area_name, _, task_name = target.partition(":")
            area = areas[area_name]
            generate = getattr(importlib.import_module(area.module), area.function)
            found += [(area_name, task) for task in generate(self.ctx)
                      if not task_name or task["name"] == task_name]
        return found

    def monitor_quiet(self, monitor: Monitor) -> bool:
        """True when every check of the monitor's tasks says "up to date" now: then no doit
        run is needed. The checks are read-only probes of the real state and fingerprints
        of inputs, compared with what this process saw when they last passed (doit's own
        check after each run of the monitor sets that)."""
        from graph.uptodate import Check

        quiet = True
        for area, task in self.monitor_tasks(monitor):
            name = f"{area}:{task['name']}"
            checks = task.get("uptodate") or []
            if not checks or not all(isinstance(check, Check) for check in checks):
                quiet = False  # doit alone knows (no check: it runs every time)
                continue
            saved = _ValueSavers()
            known = self.monitor_values.get(name, {})
            try:
                # Every check, not only up to the first that says "run": each saves the
                # inputs it saw, for the next period.
                verdicts = [check(saved, known) for check in checks]
            except Exception:  # noqa: BLE001 - doit's run then meets it and reports it
                quiet = False
                continue
            self.monitor_values[name] = saved.values()
            quiet = quiet and all(verdicts)
        return quiet

    def run_due_monitors(self) -> None:
        now = self.clock()
        due = [name for name, at in self.monitor_due.items() if at <= now]
        if not due:
            return
        # A monitor whose checks all pass needs no doit run (a run costs far more).
        busy = [name for name in due if not self.monitor_quiet(self.monitors[name])]
        targets = [t for name in busy for t in self.monitor_targets(self.monitors[name])]
        if targets:
            self.run_graph(*targets, why="monitor " + ", ".join(busy))
            for name in busy:  # what the checks see now that the run did its work
                self.monitor_quiet(self.monitors[name])
        for name in due:
            self.monitor_due[name] = now + self.period(self.monitors[name])
            self.state["monitors"][name] = time.time()
        self.save_state()

    def collect_logs(self) -> None:
        """Log collection (tasks/logcollector.py): a child process started when due, its
        archive uploaded when it has ended; the loop goes on meanwhile."""
        try:
            outcome = self.log_collection.tick(self.ctx, self.target)
        except Exception as err:  # noqa: BLE001 - the next period tries again
            log.warning("log collection: %s", err)
            return
        if outcome is not None:
            self.state["monitors"]["logs"] = outcome["at"]
            self.state["logs"] = outcome
            self.save_state()

    # -- what `waagent status` shows ----------------------------------------------------------

    def save_state(self, stopped: bool = False) -> None:
        """`<Lib.Dir>/daemon.json`, for `waagent status` (not durable: it only informs):
        written when what it says changes; when only its counters and times moved, every
        STATE_EVERY_LOOPS loops (`waagent status` says so)."""
        state = {**self.state, "running": not stopped, "counters_every": STATE_EVERY_LOOPS}
        said = _without_counters(state)
        loops = self.state["loops"]
        if self.saved_state is not None and self.saved_state[0] == said and \
                loops < self.saved_state[1] + STATE_EVERY_LOOPS:
            return
        try:
            self.ctx.fs.write(self.ctx.lib_dir / STATE_FILE,
                              json.dumps({**state, "updated": time.time()}) + "\n",
                              mode=0o644, quiet=True, durable=False, why="daemon state")
        except OSError as err:
            log.warning("daemon state not saved: %s", err)
        else:
            self.saved_state = (said, loops)
        # The daemon's own context lives as long as the process: its runner's record of
        # changes (this file, status copies) would otherwise grow by an entry every loop.
        self.ctx.run.planned.clear()


def _without_counters(state: dict[str, Any]) -> str:
    """What daemon.json says, its counters and times (which move every loop) left out."""
    return json.dumps({**state, "loops": None, "monitors": None,
                       "status": {**state["status"], "at": None}}, sort_keys=True)


def run_goal_state_pass(variables: dict[str, str]) -> int:
    """`waagent -run-exthandlers`: what one loop of the daemon does for a goal state (the
    goalstate group, then the status), once, without provisioning. In waagent this is
    the extension handler process the daemon starts; here the daemon does it in-process,
    so the command serves to do one pass by hand."""
    daemon = Daemon(variables)
    result = daemon.run_graph("goalstate", why="-run-exthandlers")
    daemon.platform_changed()
    daemon.report_status()
    status = daemon.state["status"]
    if "error" in status:
        return 1
    print(f"goal state {daemon.goal_state.incarnation} handled; status sent via "
          f"{status.get('via')}")
    return result


def _engine() -> Callable[[list[str]], int]:
    from graph.main import run_doit

    return run_doit


def run_daemon(variables: dict[str, str]) -> int:
    """`waagent -daemon`: the launcher first (graph/launcher.py), which runs a newer
    installed version of the agent in this process's place, or returns to run this one."""
    from graph import launcher

    launcher.hand_over(variables)
    daemon = Daemon(variables)
    result = daemon.serve()
    launcher.record_clean_exit(daemon.ctx)
    if daemon.relaunch_asked:
        launcher.relaunch()
    return result
