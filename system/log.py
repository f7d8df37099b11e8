"""The agent's loggers, made when first used.

Importing `logging` is ~1.5 ms of every boot, and a boot with nothing to do writes no
record. So `get_logger` hands out an AgentLogger at once; the standard library's logger
behind it, and the handlers `configure` was given (graph/loader.py: console and
/var/log/waagent.log), are set up at its first record. While logging is not loaded, a
record below the configured level is dropped here: only this module could have set
logging's levels by then.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

# logging's levels, for callers that choose one.
DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40

# The handler set-up to run before the first record (None: nothing pending).
_pending_setup: Callable[[], None] | None = None
# The lowest level that reaches a handler: logging's default until `configure`.
_threshold = WARNING


def configure(setup: Callable[[], None], level: int) -> None:
    """Run `setup`, which configures logging's handlers and sets the agent's loggers to
    `level`, now if logging is already in use, else at the first record that passes it."""
    global _pending_setup, _threshold
    _threshold = level
    if "logging" in sys.modules:
        _pending_setup = None
        setup()
    else:
        _pending_setup = setup


def _wanted(level: int) -> bool:
    return level >= _threshold or "logging" in sys.modules


class AgentLogger:
    """A named logger whose `logging.Logger` is made at its first record."""

    __slots__ = ("name", "_logger")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    def _real(self) -> logging.Logger:
        global _pending_setup
        if self._logger is None:
            import logging

            if _pending_setup is not None:
                setup, _pending_setup = _pending_setup, None
                setup()
            self._logger = logging.getLogger(self.name)
        return self._logger

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at `level` (DEBUG, INFO, ...)."""
        if _wanted(level):
            # A record names the caller's line, not this module's.
            kwargs.setdefault("stacklevel", 2)
            self._real().log(level, msg, *args, **kwargs)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at DEBUG."""
        self.log(DEBUG, msg, *args, stacklevel=3, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at INFO."""
        self.log(INFO, msg, *args, stacklevel=3, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at WARNING."""
        self.log(WARNING, msg, *args, stacklevel=3, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at ERROR."""
        self.log(ERROR, msg, *args, stacklevel=3, **kwargs)


def get_logger(name: str) -> AgentLogger:
    """The logger `name` (e.g. "waagent.tasks.user"), set up when it first logs."""
    return AgentLogger(name)
