"""`plan [TASK...]`: which tasks a run would execute, why, and what their actions would change.

doit has no dry run (DESIGN, "doit, used well"), so a plan is a real doit run with two
things swapped out: the Runner is in plan mode (commands and file writes are recorded,
never done; read-only probes still run) and doit's state is a throw-away copy of the
state DB. Neither the machine nor the doit state changes.

doit decides through `PlanDependency`, which asks doit for every reason a task is not up
to date (`get_log=True`) and words them for people. `explain` and `task_status` are also
what `graph` uses to colour nodes.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from doit.cmd_run import Run as DoitRun
from doit.dependency import Dependency, DependencyStatus
from doit.exceptions import DependencyError, UnmetDependency

from graph import loader
from graph.doit_private import make_dep_manager, ran_before
from graph.uptodate import Check, Inputs, Probe, describe
from system.runner import PlannedChange

NEVER_RUN = "never run"
# Planned file changes that make a file_dep of a later task differ.
FILE_CHANGES = ("write", "remove", "truncate", "move", "symlink")


def shown_path(path: str | Path) -> str:
    """A real path as the VM sees it (`/etc/hostname`), for people."""
    ctx = loader.PROCESS.context
    if ctx is not None:
        try:
            return ctx.root.system_path(Path(path).absolute())
        except ValueError:
            pass
    return str(path)


def explain(task: Any, result: DependencyStatus, never_run: bool) -> list[str]:
    """Why doit wants to run a task, in words, from `get_status(..., get_log=True)`."""
    probes, checks, durable = [], [], []
    for utd, _args, _kwargs in result.reasons.get("uptodate_false", []):
        if isinstance(utd, Probe):
            probes.append(describe(utd))
        elif isinstance(utd, Check):
            checks.append(describe(utd))
            if not isinstance(utd, Inputs):  # e.g. the per-VM record of tasks/once.py
                durable.append(describe(utd))
        else:
            checks.append(f"up-to-date check {describe(utd)} says run")
    reasons = []
    if never_run:
        # Every other reason of a first run ("changed: <unset> -> x") is noise, but for
        # checks that read a durable record rather than doit's DB ("not done yet for VM
        # id X", or what changed since the VM's task was done).
        reasons.append(NEVER_RUN)
        reasons.extend(durable)
    else:
        reasons.extend(checks)
        reasons.extend(f"target missing: {shown_path(t)}"
                       for t in result.reasons.get("missing_target", []))
        changed = result.reasons.get("changed_file_dep")
        if changed:
            reasons.append("input changed: " + ", ".join(shown_path(f) for f in changed))
        for key, words in (("added_file_dep", "inputs added"),
                           ("removed_file_dep", "inputs removed")):
            if result.reasons.get(key):
                reasons.append(f"{words}: " + ", ".join(shown_path(f)
                                                        for f in result.reasons[key]))
        if "checker_changed" in result.reasons:
            old, new = result.reasons["checker_changed"]
            reasons.append(f"file checker changed: {old} -> {new}")
        if result.reasons.get("has_no_dependencies"):
            reasons.append("no up-to-date check: runs every time")
    reasons.extend(probes)
    reasons.extend(f"input missing: {shown_path(f)}"
                   for f in result.reasons.get("missing_file_dep", []))
    if result.error_reason and result.status == "error":
        reasons.append(result.error_reason)
    return reasons


@dataclass
class Verdict:
    """What doit decided for one task and why."""

    status: str  # "up-to-date", "run" or "error" (doit's words)
    reasons: list[str]


def task_status(dep_manager: Dependency, task: Any, tasks: dict[str, Any],
                remade: dict[str, str] | None = None, after: list[str] | None = None,
                ) -> tuple[DependencyStatus, Verdict]:
    """doit's status of a task with every reason; a probe that raises is an error, not a crash.

    `remade` maps files that earlier tasks of the plan would change to those tasks: a task
    reading one of them would run after them, even if the file looks unchanged (or is
    still missing) now. `after` names dependencies that would run first: a check that
    fails now may well pass once they have (it reads what they store), so the task is
    counted as running after them rather than failing.
    """
    never_run = not ran_before(dep_manager, task.name)
    first = [NEVER_RUN] if never_run else []
    try:
        # doit's own check, also when `dep_manager` is a PlanDependency (no recursion).
        result = Dependency.get_status(dep_manager, task, tasks, get_log=True)
    except Exception as err:  # a probe is someone else's code: report, don't crash the plan
        result = DependencyStatus(True)
        problem = f"{type(err).__name__}: {err}"
        if after:
            result.status = "run"
            return result, Verdict("run", [*first, f"checked after {names(after)} "
                                                   f"(now the check says {problem})"])
        result.status = "error"
        result.error_reason = f"up-to-date check failed: {problem}"
        return result, Verdict("error", [*first, result.error_reason])
    inputs_remade = {dep: remade[dep] for dep in sorted(task.file_dep) if remade and dep in remade}
    missing = result.reasons.get("missing_file_dep", [])
    if inputs_remade and set(missing) <= set(inputs_remade):
        # Missing now, but an earlier task of the plan makes it: not an error.
        result.status = "run"
        result.error_reason = None
        result.reasons.pop("missing_file_dep", None)
    reasons = explain(task, result, never_run)
    reasons.extend(f"input {shown_path(dep)} is remade by {producer}"
                   for dep, producer in inputs_remade.items())
    if inputs_remade and result.status == "up-to-date":
        result.status = "run"
    return result, Verdict(result.status, reasons)


def names(tasks: list[str], most: int = 3) -> str:
    """`a, b, c and 4 more`: task names for a sentence."""
    shown = ", ".join(tasks[:most])
    return shown + (f" and {len(tasks) - most} more" if len(tasks) > most else "")


def planned_dependencies(task: Any, tasks: dict[str, Any], planned: set[str]) -> list[str]:
    """The task's dependencies (direct or not) that the plan runs first."""
    found, seen = [], set()
    todo = [*task.task_dep, *task.setup_tasks]
    while todo:
        name = todo.pop(0)
        if name in seen or name not in tasks:
            continue
        seen.add(name)
        if name in planned:
            found.append(name)
        todo.extend([*tasks[name].task_dep, *tasks[name].setup_tasks])
    return found


class PlanDependency(Dependency):
    """doit's dependency manager over the scratch DB, keeping each task's verdict."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.verdicts: dict[str, Verdict] = {}
        # real path -> name of the planned task that would change it
        self.remade: dict[str, str] = {}
        # tasks the plan runs (so far, in run order)
        self.planned: set[str] = set()
        self.tasks: dict[str, Any] = {}

    def get_status(self, task: Any, tasks_dict: Any, get_log: bool = False) -> DependencyStatus:
        self.tasks = tasks_dict
        after = planned_dependencies(task, tasks_dict, self.planned)
        result, verdict = task_status(self, task, tasks_dict, self.remade, after)
        self.verdicts[task.name] = verdict
        return result

    def save_success(self, task: Any, result_hash: Any = None) -> None:
        # Planned actions wrote nothing: a file_dep may still be missing. The DB is thrown away.
        task.file_dep = {dep for dep in task.file_dep if Path(dep).exists()}
        super().save_success(task, result_hash)


@dataclass
class PlannedTask:
    """One task the run would execute (or that would fail)."""

    name: str
    doc: str
    # "run"; "fail": an action or check would fail; "blocked": a dependency would fail;
    # "maybe": runs after tasks whose plan stopped short (they need what others store).
    outcome: str
    reasons: list[str]
    changes: list[PlannedChange] = field(default_factory=list)
    error: str = ""


@dataclass
class PlanResult:
    """The plan: tasks in the order a run would reach them."""

    tasks: list[PlannedTask] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    # Why an up-to-date task is, where a check says (e.g. done once for this VM).
    kept: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"tasks": [asdict(t) | {"changes": [c._asdict() for c in t.changes]}
                          for t in self.tasks], "up_to_date": self.up_to_date,
                "kept": self.kept,
                "ignored": self.ignored}

    def write_text(self, out: TextIO, show_all: bool = False, named: bool = False) -> None:
        """The plan for people; up-to-date tasks with `show_all`, or those with a reason
        when tasks were `named` on the command line."""
        marks = {"run": "RUN ", "maybe": "MAY ", "fail": "FAIL", "blocked": "SKIP"}
        for task in self.tasks:
            out.write(f"{marks[task.outcome]} {task.name}" + (f"  {task.doc}\n" if task.doc
                                                              else "\n"))
            for reason in task.reasons:
                out.write(f"     because {reason}\n")
            for change in task.changes:
                out.write(f"     would {change}\n")
            if task.error:
                label = "error" if task.outcome in ("fail", "blocked") else "note"
                out.write(f"     {label}: {task.error}\n")
        for name in self.up_to_date:
            if show_all or (named and name in self.kept):
                out.write(f"ok   {name}\n")
                if name in self.kept:
                    out.write(f"     because {self.kept[name]}\n")
        counts = {o: sum(1 for t in self.tasks if t.outcome == o) for o in marks}
        if not self.tasks:
            out.write(f"Nothing to do: {len(self.up_to_date)} tasks up to date.\n")
            return
        out.write(f"Plan: {counts['run']} to run, {counts['maybe']} may run, "
                  f"{counts['fail']} would fail, {counts['blocked']} blocked, "
                  f"{len(self.up_to_date)} up to date.\n")


class PlanReporter:
    """doit reporter that builds a PlanResult instead of printing."""

    def __init__(self, dep_manager: PlanDependency) -> None:
        self.deps = dep_manager
        self.plan = PlanResult()
        self._changes_from: dict[str, int] = {}

    @staticmethod
    def _is_group(task: Any) -> bool:
        return not task.actions

    def _planned(self) -> list[PlannedChange]:
        ctx = loader.PROCESS.context
        return ctx.run.planned if ctx is not None else []

    def _reasons(self, task: Any) -> list[str]:
        verdict = self.deps.verdicts.get(task.name)
        return list(verdict.reasons) if verdict else []

    def initialize(self, tasks: Any, selected_tasks: Any) -> None:
        pass

    def get_status(self, task: Any) -> None:
        pass

    def execute_task(self, task: Any) -> None:
        self._changes_from[task.name] = len(self._planned())

    def add_success(self, task: Any) -> None:
        if self._is_group(task):
            return
        changes = self._planned()[self._changes_from.get(task.name, 0):]
        self.deps.planned.add(task.name)
        self._note_remade(task, changes)
        self.plan.tasks.append(PlannedTask(task.name, task.doc or "", "run",
                                           self._reasons(task), list(changes)))

    def _note_remade(self, task: Any, changes: list[PlannedChange]) -> None:
        """Files this task would change: later tasks reading them would run too."""
        for target in task.targets:
            self.deps.remade[str(Path(target).absolute())] = task.name
        ctx = loader.PROCESS.context
        for change in changes:
            if change.kind in FILE_CHANGES and ctx is not None:
                self.deps.remade[str(ctx.root / change.target.split(" -> ")[-1])] = task.name

    def add_failure(self, task: Any, fail: Any) -> None:
        reasons = self._reasons(task)
        changes = self._planned()[self._changes_from.get(task.name, len(self._planned())):]
        if isinstance(fail, UnmetDependency):
            failed = fail.message.split()
            stopped_short = all(name in self.deps.planned for name in failed)
            if self._is_group(task):
                if stopped_short:
                    self.deps.planned.add(task.name)
                return  # its tasks are listed already
            reasons = reasons or ([NEVER_RUN] if not ran_before(self.deps, task.name)
                                  else [])
            if stopped_short:
                # They run for real; only their plan stopped short: this task's turn comes.
                outcome = "maybe"
                error = f"checked only after {names(failed)}, which the plan cannot follow"
                self.deps.planned.add(task.name)
            else:
                outcome, error = "blocked", f"a dependency would fail: {names(failed)}"
        elif isinstance(fail, DependencyError):
            outcome, error = "fail", ""  # the verdict's reasons say it
        else:
            outcome = "fail"
            lines = fail.get_msg().strip().splitlines()
            error = lines[-1] if lines else str(fail)
            after = planned_dependencies(task, self.deps.tasks, self.deps.planned)
            if after:
                # Planned actions store nothing, so this one may lack what they would store.
                outcome = "run"
                error = (f"what it changes depends on {names(after)}; in the plan it "
                         f"stopped at: {error}")
                self.deps.planned.add(task.name)
        self.plan.tasks.append(PlannedTask(task.name, task.doc or "", outcome, reasons,
                                           list(changes), error))

    def skip_uptodate(self, task: Any) -> None:
        if not self._is_group(task):
            self.plan.up_to_date.append(task.name)
            kept = "; ".join(check.kept for check, _args, _kwargs in task.uptodate
                             if isinstance(check, Check) and check.kept)
            if kept:
                self.plan.kept[task.name] = kept

    def skip_ignore(self, task: Any) -> None:
        self.plan.ignored.append(task.name)

    def cleanup_error(self, exception: Any) -> None:
        pass

    def runtime_error(self, msg: str) -> None:
        self.plan.tasks.append(PlannedTask("<runtime>", "", "fail", [], [], msg))

    def teardown_task(self, task: Any) -> None:
        pass

    def complete_run(self) -> None:
        pass


def copy_state_db(real: Path, scratch_dir: Path) -> Path:
    """A consistent copy of the state DB (sqlite's backup, safe against a concurrent run)."""
    scratch = scratch_dir / real.name
    if real.exists():
        source = sqlite3.connect(f"file:{real}?mode=ro", uri=True)
        target = sqlite3.connect(scratch)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
    return scratch


@contextmanager
def plan_mode() -> Iterator[None]:
    """The graph loaded inside is in plan mode: its Runner and FileSystem only record."""
    loader.PROCESS.plan_mode = True
    try:
        yield
    finally:
        loader.PROCESS.plan_mode = False


opt_json = {"name": "json_output", "long": "json", "type": bool, "default": False,
            "help": "print the plan as JSON"}
opt_all = {"name": "show_all", "long": "all", "type": bool, "default": False,
           "help": "also list the tasks that are up to date"}


class ScratchStateCommand:
    """Mixin for commands that look at the graph as a run would, on a copy of doit's state.

    It hooks the loader's `load_doit_config` (the first step of doit's `execute`) to
    point `dep_file` at a copy in a temporary directory and to install `dep_class` over it.
    """

    dep_class: type[Dependency] = Dependency
    # doit's DoitCmdBase provides these.
    dep_manager: Any
    loader: Any

    def execute_on_scratch_state(self, run: Any, params: Any, args: Any) -> Any:
        with tempfile.TemporaryDirectory(prefix="waagent-plan-") as scratch_dir, plan_mode():
            load_config = self.loader.load_doit_config

            def load_config_on_scratch_state() -> dict[str, Any]:
                config: dict[str, Any] = load_config()
                params.update_defaults(config)
                scratch = copy_state_db(Path(params["dep_file"]), Path(scratch_dir))
                params["dep_file"] = str(scratch)
                self.dep_manager = make_dep_manager(self, self.dep_class, params, str(scratch))
                return config

            self.loader.load_doit_config = load_config_on_scratch_state
            try:
                return run(params, args)
            finally:
                del self.loader.load_doit_config
                if self.dep_manager is not None:
                    self.dep_manager.close()  # close the copy before its directory goes


class Plan(ScratchStateCommand, DoitRun):
    """What `run` would do, and why, changing nothing."""

    name = "plan"
    doc_purpose = "show which tasks would run, why, and what they would change"
    doc_usage = "[TASK ...] [--json] [--all]"
    doc_description = ("Runs the graph with the Runner in plan mode (commands and file "
                       "writes only recorded) on a throw-away copy of doit's state.")
    cmd_options = (opt_json, opt_all)
    dep_class = PlanDependency

    def execute(self, params: Any, args: Any) -> Any:
        return self.execute_on_scratch_state(super().execute, params, args)

    def _execute(self, json_output: bool = False, show_all: bool = False,
                 pos_args: Any = None) -> int:
        from graph.commands import explain_missing, missing_tasks

        missing = missing_tasks(self.task_list, pos_args)
        if missing:
            return explain_missing(missing)
        reporter = PlanReporter(self.dep_manager)
        out = self.outstream  # doit's run replaces it with its outfile
        # doit's run, every task, silently: one failure must not hide the rest of the plan.
        DoitRun._execute(self, outfile=_Discard(), verbosity=0, continue_=True,
                         reporter=reporter)
        if json_output:
            out.write(json.dumps(reporter.plan.to_json(), indent=1, default=str) + "\n")
        else:
            reporter.plan.write_text(out, show_all, named=bool(pos_args))
        # Like a run: 1 when a task would fail (the plan says which and why).
        return 1 if any(t.outcome in ("fail", "blocked") for t in reporter.plan.tasks) else 0


class _Discard:
    """An output stream for doit's runner that keeps nothing (the plan is the output)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
