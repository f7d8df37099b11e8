"""Console output and the run report: one line per task that ran or failed, a summary,
and `<Lib.Dir>/runs/<UTC time>.json` with each task's result, reason and duration."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, TextIO

from graph import loader
from graph.doit_private import changed_file_deps, declared_actions
from graph.uptodate import Check, describe

KEEP_RUNS = 50


# A pattern string, compiled by `re` at its first use: only a failure needs it.
_EXCEPTION_LINE = (r"^([A-Za-z_][\w.]*(?:Error|Exception|Failed|Timeout|Operation|"
                   r"Interrupt|Refused|Busy|Provisionable)): (.*)$")


def error_message(text: str) -> str:
    """The error of a failed action on one line: "UserError: what, where, what to do".

    doit hands over the whole traceback; the exception starts at its last
    "module.Class: message" line, and the message may continue on further lines.
    """
    lines = text.strip().splitlines()
    for index in range(len(lines) - 1, -1, -1):
        match = re.match(_EXCEPTION_LINE, lines[index])
        if match:
            name = match.group(1).split(".")[-1]
            rest = [line.strip() for line in lines[index + 1:] if line.strip()]
            return "; ".join([f"{name}: {match.group(2)}", *rest])
    return lines[-1] if lines else "failed"


def run_reasons(task: Any) -> list[str]:
    """Why doit decided to run a task, from our checks (or doit's own dependencies)."""
    reasons = [describe(utd) for utd, _a, _k in task.uptodate
               if isinstance(utd, Check) and utd.reason]
    changed = changed_file_deps(task)
    if changed:
        reasons.append("file changed: " + ", ".join(sorted(changed)))
    if not reasons:
        reasons.append("no up-to-date check" if not (task.uptodate or task.file_dep)
                       else "dependencies changed")
    return reasons


# Why the run must stop before its next task (SIGTERM during a run), or None.
_STOP_ASKED: list[str] = []


def request_stop(why: str) -> None:
    """Stop the run before its next task: the running one finishes first."""
    _STOP_ASKED.append(why)


class WaagentReporter:
    """doit reporter: terse lines for journald, colour only on a terminal, JSON run report."""

    desc = "waagent: one line per task that ran, a summary, and a JSON run report"

    def __init__(self, outstream: TextIO, options: dict[str, Any]) -> None:
        self.out = outstream
        self.verbose = int(options.get("verbosity") or 0) >= 2
        self.colour = outstream.isatty()
        self.started = time.time()
        self.results: dict[str, dict[str, Any]] = {}
        self._begin: dict[str, float] = {}
        self._changes_before: dict[str, int] = {}
        self.failures = 0
        # The operator said no (a deprovision's question): nothing ran, nothing to report.
        self.cancelled = False

    # -- helpers
    def _line(self, mark: str, name: str, text: str, colour: str = "") -> None:
        if self.colour and colour:
            mark = f"\033[{colour}m{mark}\033[0m"
        self.out.write(f"{mark} {name}{('  ' + text) if text else ''}\n")

    @staticmethod
    def _is_group(task: Any) -> bool:
        return not declared_actions(task)

    # -- doit's reporter interface
    def initialize(self, tasks: Any, selected_tasks: Any) -> None:
        self.started = time.time()

    def get_status(self, task: Any) -> None:
        pass

    @staticmethod
    def _changes() -> int:
        """Changes the Runner has recorded so far in this run (system.runner)."""
        ctx = loader.PROCESS.context
        return ctx.run.changes if ctx is not None else 0

    def execute_task(self, task: Any) -> None:
        if _STOP_ASKED:
            # doit then saves the state of the tasks that finished and ends the run.
            raise KeyboardInterrupt(_STOP_ASKED[-1])
        self._changes_before[task.name] = self._changes()
        self._begin[task.name] = time.time()
        if not self._is_group(task):
            self.results[task.name] = {"result": "running", "reason": run_reasons(task),
                                       "start": self._begin[task.name]}

    def add_success(self, task: Any) -> None:
        if self._is_group(task):
            return
        entry = self.results.setdefault(task.name, {"reason": [], "start": time.time()})
        made = self._changes() - self._changes_before.get(task.name, self._changes())
        entry.update(result="changed" if made else "no-change", changes=made,
                     duration=round(time.time() - entry["start"], 4))
        self._line("ran", task.name, "; ".join(([] if made else ["no change"])
                                              + entry["reason"]), "32" if made else "")

    def _cancelled(self) -> str | None:
        """The operator's refusal (a deprovision answered no), or None."""
        ctx = loader.PROCESS.context
        return (ctx.state.deprovision_cancelled or None) if ctx is not None else None

    def add_failure(self, task: Any, fail: Any) -> None:
        from doit.exceptions import UnmetDependency

        cancelled = self._cancelled()
        if cancelled is not None:
            # One line says it all: the steps it would have done are not failures.
            if not self.cancelled:
                self.out.write(cancelled + "\n")
            self.cancelled = True
            self.failures = max(self.failures, 1)
            return
        entry = self.results.setdefault(task.name, {"reason": [], "start": time.time()})
        if isinstance(fail, UnmetDependency):
            # Not a failure of its own: it did not run because something it needs failed.
            entry.update(result="not run", error=f"needs {fail.get_msg().strip()}, which failed")
            if not self._is_group(task):
                self._line("--", task.name, f"not run: {entry['error']}")
            return
        self.failures += 1
        error = error_message(fail.get_msg())
        entry.update(result="failed", error=error,
                     duration=round(time.time() - entry["start"], 4))
        self._line("FAILED", task.name, error, "31")

    def skip_uptodate(self, task: Any) -> None:
        if self._is_group(task):
            return
        self.results[task.name] = {"result": "up-to-date", "reason": [], "start": time.time(),
                                   "duration": 0.0}
        if self.verbose:
            self._line("--", task.name, "up to date")

    def skip_ignore(self, task: Any) -> None:
        self.results[task.name] = {"result": "ignored", "reason": [], "start": time.time()}
        if self.verbose:
            self._line("!!", task.name, "ignored")

    def cleanup_error(self, exception: Any) -> None:
        self.out.write(f"cleanup error: {exception}\n")

    def runtime_error(self, msg: str) -> None:
        self.failures += 1
        self.out.write(f"ERROR {msg}\n")
        self.results["<runtime>"] = {"result": "failed", "error": msg, "start": time.time()}

    def teardown_task(self, task: Any) -> None:
        pass

    def complete_run(self) -> None:
        if self.cancelled:
            return
        counts = {result: sum(1 for r in self.results.values() if r.get("result") == result)
                  for result in ("changed", "no-change", "not run", "up-to-date")}
        took = time.time() - self.started
        not_run = f", {counts['not run']} not run" if counts["not run"] else ""
        unchanged = (f"; {counts['no-change']} ran without a change" if counts["no-change"]
                     else "")
        self.out.write(f"{counts['changed'] + counts['no-change']} ran, {self.failures} failed, "
                       f"{counts['up-to-date']} up to date{not_run} in {took:.2f} s"
                       f"{unchanged}\n")
        self._report_provisioning_failure()
        try:
            self._write_report(took)
        except OSError as err:  # a full or read-only Lib.Dir (the crash campaign)
            self.out.write(f"run report not written: {err}\n")

    def _report_provisioning_failure(self) -> None:
        """The first failure in a critical area reaches the platform as ProvisioningFailed."""
        ctx = loader.PROCESS.context
        if ctx is None or ctx.run.plan:
            return
        from tasks import AREAS

        critical = {a.name for a in AREAS if a.critical}
        for name, entry in self.results.items():
            if entry.get("result") == "failed" and name.split(":")[0] in critical:
                from tasks.report import report_failure

                report_failure(ctx, f"{name}: {entry.get('error', 'failed')}")
                return

    def _write_report(self, took: float) -> None:
        ctx = loader.PROCESS.context
        if ctx is None or ctx.run.plan:
            return
        if "deprovision:agent-state" in self.results:
            return  # the image is being captured: leave Lib.Dir empty
        runs = ctx.lib_dir / "runs"
        stamp = _utc(time.time(), "%Y%m%dT%H%M%S.{micro}Z")
        report = {"started": _utc(self.started, "%Y-%m-%dT%H:%M:%S.{micro}+00:00"),
                  "seconds": round(took, 4), "failed": self.failures, "tasks": self.results}
        ctx.fs.mkdir(runs, why="run reports", mode=0o700, quiet=True)
        # One line: json's C encoder (indented output is encoded in Python).
        ctx.fs.write(runs / f"{stamp}.json", json.dumps(report, default=str),
                     why="run report", mode=0o600, quiet=True, durable=False)
        reports = sorted(entry for entry in os.listdir(runs) if entry.endswith(".json"))
        for old in reports[:-KEEP_RUNS]:
            ctx.fs.remove(runs / old, why="keep the last 50 run reports", quiet=True)


def _utc(when: float, layout: str) -> str:
    """A UTC time as text; `{micro}` is the microseconds. (The time module, not datetime:
    datetime means more imports, which only this would need on a boot.)"""
    whole, fraction = divmod(when, 1)
    return time.strftime(layout, time.gmtime(whole)).format(micro=f"{int(fraction * 1e6):06d}")


def last_run(ctx: Any) -> dict[str, Any] | None:
    """The newest readable run report, or None before the first run. Reports are written
    without fsync: one cut short by a power loss is passed over."""
    for path in sorted((ctx.lib_dir / "runs").glob("*.json"), reverse=True):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            data["file"] = str(path)
            return data
    return None
