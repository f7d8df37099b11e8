"""The property every parser of outside input must hold, the budgets, and the figures.

`holds(parser, call, allowed)` runs one input through a parser and fails unless the parser
returned or raised one of the typed errors it declares (`allowed`), within a time bound
(an interval timer, checked again on return: C code such as a regex cannot be interrupted)
and a memory bound (tracemalloc's peak of what the call allocated).

Budgets: `campaign(weight)` gives a test `weight * base` examples. The base comes from the
profile that WAAGENT_CAMPAIGN selects: "ci" (the default: derandomized, so a CI run is
reproducible, about a minute for every parser together) or "long" (random, used by
bench/campaigns.py); WAAGENT_CAMPAIGN_EXAMPLES overrides the base.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[2]
PROFILE = os.environ.get("WAAGENT_CAMPAIGN", "ci")
_BASE = {"ci": 150, "long": 4000}
BASE_EXAMPLES = int(os.environ.get("WAAGENT_CAMPAIGN_EXAMPLES") or _BASE.get(PROFILE, 150))

# Per input: far above what any parser takes on a real document (milliseconds).
TIME_LIMIT = float(os.environ.get("WAAGENT_CAMPAIGN_SECONDS", "5"))
# Per input: what a parser may allocate above what it was given.
MEMORY_LIMIT = 32 * 1024 * 1024
MEMORY_FACTOR = 40

settings.register_profile(
    "ci", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much])
settings.register_profile("long", parent=settings.get_profile("ci"), derandomize=False)

# The figures bench/campaigns.py prints: inputs tried, and distinct crashes (exception
# type and where it was raised), per parser.
TRIED: Counter[str] = Counter()
CRASHES: dict[str, set[str]] = {}
# Crashers kept as regression tests (tests/campaigns/test_crashers.py), per parser.
FIXED: dict[str, list[str]] = {}
SECONDS: Counter[str] = Counter()


def _write_report() -> None:
    """The figures, as JSON, where WAAGENT_CAMPAIGN_REPORT says (bench/campaigns.py)."""
    target = os.environ.get("WAAGENT_CAMPAIGN_REPORT")
    if target and (TRIED or FIXED):
        Path(target).write_text(json.dumps({
            "profile": PROFILE, "base_examples": BASE_EXAMPLES, "tried": TRIED,
            "seconds": SECONDS, "crashes": {k: sorted(v) for k, v in CRASHES.items()},
            "fixed": FIXED}, indent=1))


atexit.register(_write_report)

F = TypeVar("F", bound=Callable[..., Any])


def campaign(weight: float = 1.0) -> settings:
    """The hypothesis settings of a fuzzing test: `weight` times the profile's budget."""
    profile = settings.get_profile(PROFILE if PROFILE in _BASE else "ci")
    return settings(profile, max_examples=max(5, int(BASE_EXAMPLES * weight)))


def regression(parser: str) -> Callable[[F], F]:
    """Marks a plain test as the kept crasher of a defect the fuzzing found in `parser`."""
    def mark(test: F) -> F:
        FIXED.setdefault(parser, []).append(test.__name__)
        return test
    return mark


class Hang(BaseException):
    """An input kept a parser busy past the time limit (a BaseException: no parser's
    `except Exception` may swallow it)."""


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise Hang()


def _where(err: BaseException) -> str:
    """The innermost frame of the project's own code that the exception passed through."""
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if f.filename.startswith(str(REPO))
           and "/tests/" not in f.filename and "/.venv/" not in f.filename]
    frame = (own or frames or [None])[-1]
    if frame is None:
        return "?"
    return f"{Path(frame.filename).relative_to(REPO) if frame.filename.startswith(str(REPO)) else frame.filename}:{frame.lineno}"


def _crash(parser: str, signature: str, message: str) -> AssertionError:
    CRASHES.setdefault(parser, set()).add(signature)
    return AssertionError(f"{parser}: {message}")


def holds(parser: str, call: Callable[[], Any], allowed: tuple[type[BaseException], ...] = (),
          *, size: int = 0, seconds: float | None = None) -> Any:
    """Run `call` (one input through `parser`); return its result, or None when it raised
    one of the `allowed` errors. Anything else fails the test: another exception, more
    than `seconds`, or more than the memory bound for an input of `size` bytes."""
    TRIED[parser] += 1
    limit = seconds or TIME_LIMIT
    # Traced only around the call: tracing hypothesis' own generation would slow it down.
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    start = time.monotonic()
    result = None
    try:
        result = call()
    except Hang:
        raise _crash(parser, "hang", f"still busy after {limit} s") from None
    except allowed:
        pass
    except Exception as err:  # noqa: BLE001 - that is the property under test
        where = _where(err)
        kind = type(err).__qualname__
        if type(err).__module__ not in ("builtins", "__main__"):
            kind = f"{type(err).__module__}.{kind}"
        raise _crash(parser, f"{kind} at {where}", f"{kind} at {where}: {err!s:.300}") from err
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1] - before
        if started:
            tracemalloc.stop()
    elapsed = time.monotonic() - start
    SECONDS[parser] += elapsed
    if elapsed > limit:
        raise _crash(parser, "hang", f"took {elapsed:.1f} s (limit {limit} s)")
    bound = MEMORY_LIMIT + MEMORY_FACTOR * size
    if peak > bound:
        raise _crash(parser, "memory", f"allocated {peak} bytes for a {size}-byte input "
                                       f"(bound {bound})")
    return result
