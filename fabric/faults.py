"""Fault injection: which call of which route fails, and how."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from fabric.scenario import ROUTES, Fault


@dataclass
class _Armed:
    fault: Fault
    skipped: int = 0
    fired: int = 0


class Faults:
    """Faults waiting for their route; the first armed fault matching a call fires."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []
        self._fired: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        """Arm a fault (route must be one of scenario.ROUTES)."""
        if fault.route not in ROUTES:
            raise ValueError(f"unknown route {fault.route!r}; routes: {', '.join(ROUTES)}")
        with self._lock:
            self._armed.append(_Armed(fault))
        return fault

    def take(self, route: str) -> Fault | None:
        """The fault for this call of route, if any; counts the call."""
        with self._lock:
            for armed in self._armed:
                if armed.fault.route != route:
                    continue
                if armed.skipped < armed.fault.skip:
                    armed.skipped += 1
                    continue
                armed.fired += 1
                self._fired.append(armed.fault)
                if armed.fault.count and armed.fired >= armed.fault.count:
                    self._armed.remove(armed)
                return armed.fault
        return None

    def clear(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self._armed.clear()

    def fired(self) -> list[Fault]:
        """Every firing so far, in order (a fault with count=2 appears twice)."""
        with self._lock:
            return list(self._fired)

    def pending(self) -> list[Fault]:
        """Faults still armed."""
        with self._lock:
            return [a.fault for a in self._armed]
