"""Up-to-date checks that say why a task must run.

`task_dep` orders but does not invalidate (DESIGN, doit pitfalls): a task reruns when
exactly the inputs it uses change (a fingerprint of a config/fact subset, computed at
check time, after its dependencies ran) or when a probe of the real state disagrees.
Each check records a human reason that `plan` and `-verbose` show.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from graph.doit_private import UptodateCallable, save_values

SECRET_MARK = "secret:"


def _stable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def mask(value: Any) -> Any:
    """Secrets in a subset are stored and shown as a short digest, never in clear."""
    if isinstance(value, dict):
        return {k: (SECRET_MARK + hashlib.sha256(_stable(v).encode()).hexdigest()[:12]
                    if k.startswith(SECRET_MARK) else mask(v)) for k, v in value.items()}
    return value


class Check(UptodateCallable):
    """Base of our uptodate callables: `reason` holds why the last check said 'run'."""

    name: str = ""
    reason: str = ""
    # Why the last check said "up to date", when that needs saying (plans show it).
    kept: str = ""

    def __call__(self, task: Any, values: Mapping[str, Any]) -> bool:  # pragma: no cover
        raise NotImplementedError

    def _cannot_check(self, err: Exception) -> bool:
        """A check that cannot tell says "run": the action then meets the same problem and
        fails as this task, with its message, instead of aborting the whole graph."""
        self.reason = f"cannot check: {err}"
        return False


class Inputs(Check):
    """Up to date while the inputs (config options, facts) the task uses are unchanged.

    `compute` is called when doit checks the task, after its dependencies ran, so facts
    gathered earlier in the same run are seen. Keys starting with `secret:` are hashed.
    """

    def __init__(self, name: str, compute: Callable[[], Mapping[str, Any]]) -> None:
        self.name = name
        self.compute = compute
        self.key = f"inputs:{name}"

    def __call__(self, task: Any, values: Mapping[str, Any]) -> bool:
        try:
            current = mask(dict(self.compute()))
        except Exception as err:  # noqa: BLE001 - see _cannot_check
            return self._cannot_check(err)
        save_values(task, {self.key: current})
        previous = values.get(self.key)
        if previous is None:
            self.reason = "never run"
            return False
        if previous == current:
            self.reason = ""
            return True
        self.reason = "changed " + describe_changes(previous, current)
        return False

    def __repr__(self) -> str:
        return f"Inputs({self.name})"


class Probe(Check):
    """Up to date while a read-only probe of the real state says so.

    `probe` returns None when the state is right, or a sentence saying what is wrong
    ("swap active 0 MB, want 2048 MB"). Probes never change the machine.
    """

    def __init__(self, name: str, probe: Callable[[], str | None]) -> None:
        self.name = name
        self.probe = probe

    def __call__(self, task: Any, values: Mapping[str, Any]) -> bool:
        try:
            problem = self.probe()
        except Exception as err:  # noqa: BLE001 - see _cannot_check
            return self._cannot_check(err)
        self.reason = problem or ""
        return problem is None

    def __repr__(self) -> str:
        return f"Probe({self.name})"


def describe_changes(previous: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """`key: old -> new; ...` for the inputs that differ."""
    changes = []
    for k in sorted(set(previous) | set(current)):
        old, new = previous.get(k, "<unset>"), current.get(k, "<unset>")
        if old != new:
            changes.append(f"{k}: {_short(old)} -> {_short(new)}")
    return "; ".join(changes)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else _stable(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(check: Any) -> str:
    """The reason an uptodate item gave for running, for plans and logs."""
    if isinstance(check, Check):
        return f"{check.name}: {check.reason}" if check.reason else check.name
    return getattr(check, "__name__", repr(check))
