"""`status`: the daemon (`<Lib.Dir>/daemon.json`, written by graph/daemon.py) and the last
run report (`<Lib.Dir>/runs/*.json`, written by graph/reporter.py) as a table: task,
result, duration, and why it ran or how it failed."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from typing import Any, TextIO

from doit.cmd_base import Command

from graph.context import make_context
from graph.loader import command_line_vars
from graph.reporter import last_run

# Failures first: they are what the operator came for.
# "no-change": the task ran and changed nothing (graph/reporter.py).
RESULT_ORDER = {"failed": 0, "running": 1, "changed": 2, "no-change": 3, "ignored": 4,
                "up-to-date": 5}


def write_table(report: dict[str, Any], out: TextIO, show_all: bool = True) -> None:
    """The report as aligned columns; `show_all=False` leaves out up-to-date tasks."""
    rows = []
    entries = sorted(report.get("tasks", {}).items(),
                     key=lambda item: (RESULT_ORDER.get(item[1].get("result", ""), 9),
                                       item[1].get("start") or 0))
    for name, entry in entries:
        result = entry.get("result", "?")
        if result == "up-to-date" and not show_all:
            continue
        duration = entry.get("duration")
        why = entry.get("error") or "; ".join(entry.get("reason") or [])
        rows.append((name, result, "" if duration is None else f"{duration:.2f} s", why))
    started = report.get("started", "")
    try:
        started = datetime.fromisoformat(started).strftime("%Y-%m-%d %H:%M:%S %Z")
    except ValueError:
        pass
    out.write(f"Last run: {started}, {report.get('seconds', 0):.2f} s, "
              f"{report.get('failed', 0)} failed ({report.get('file', '')})\n")
    if not rows:
        out.write("no task ran\n")
        return
    header = ("TASK", "RESULT", "TIME", "REASON / ERROR")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
                  + "  " + row[3] + "\n")


def _clock(when: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when)) if when else "never"


def daemon_state(lib_dir: Any) -> dict[str, Any] | None:
    """What the daemon last wrote of itself, or None when no daemon ever ran here."""
    from graph.daemon import STATE_FILE

    try:
        found = json.loads((lib_dir / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def write_daemon(state: dict[str, Any], out: TextIO, on_this_system: bool) -> None:
    """The daemon in a few lines: since when, loops, goal state, status upload, monitors."""
    pid = int(state.get("pid") or 0)
    running = bool(state.get("running")) and (not on_this_system or _alive(pid))
    how = f"running (PID {pid})" if running else f"not running (was PID {pid})"
    out.write(f"Daemon: {how} since {_clock(state.get('since'))}, {state.get('loops', 0)} "
              f"loops, {state.get('graph_runs', 0)} graph runs, "
              f"{state.get('conf_reloads', 0)} conf reloads; updated "
              f"{_clock(state.get('updated'))}\n")
    every = state.get("counters_every")
    if running and every:
        out.write(f"  (loops and the times below as of then: the daemon writes them every "
                  f"{every} loops, anything else at once)\n")
    goal = state.get("goal_state") or {}
    out.write(f"  goal state:    incarnation {goal.get('incarnation', '?')}, seen "
              f"{_clock(goal.get('seen_at'))}"
              + (f", vmSettings ETag {goal['vm_settings_etag']}"
                 if goal.get("vm_settings_etag") else "")
              + (f"; last check failed: {goal['error']}" if goal.get("error") else "") + "\n")
    status = state.get("status") or {}
    upload = (f"failed: {status['error']}" if status.get("error")
              else f"via {status.get('via', '?')} (incarnation {status.get('incarnation')})")
    out.write(f"  status upload: {_clock(status.get('at'))}, {upload}\n")
    last = state.get("last_run") or {}
    if last:
        out.write(f"  last graph run: {' '.join(last.get('targets', []))} ({last.get('why')}) "
                  f"{_clock(last.get('at'))}, {last.get('seconds', 0):.2f} s, "
                  f"{last.get('result')}\n")
    monitors = state.get("monitors") or {}
    shown = ", ".join(f"{name} {_clock(at)}" for name, at in sorted(monitors.items()))
    out.write(f"  monitors:      {shown or 'none ran yet'}\n")


opt_json = {"name": "json_output", "long": "json", "type": bool, "default": False,
            "help": "print the report as JSON"}
opt_changes = {"name": "changes_only", "long": "changes", "type": bool, "default": False,
               "help": "leave out the tasks that were up to date"}


class Status(Command):
    """Show the last run report."""

    name = "status"
    doc_purpose = "show the last run: each task's result, duration and reason or error"
    doc_usage = "[--json] [--changes]"
    doc_description = None
    cmd_options = (opt_json, opt_changes)

    def execute(self, opt_values: Any, pos_args: Any) -> int:
        # Only the Context (root=, conf=): no tasks to load, no doit state to open.
        ctx = make_context(command_line_vars(), plan=True)
        out = sys.stdout
        report = last_run(ctx)
        daemon = daemon_state(ctx.lib_dir)
        if opt_values["json_output"]:
            out.write(json.dumps({**(report or {}), "daemon": daemon}, indent=1) + "\n")
            return 0 if report is not None else 1
        if daemon is not None:
            write_daemon(daemon, out, on_this_system=ctx.root.is_host)
        if report is None:
            out.write(f"no run report yet in {ctx.lib_dir / 'runs'}\n")
            return 1
        write_table(report, out, show_all=not opt_values["changes_only"])
        return 0
