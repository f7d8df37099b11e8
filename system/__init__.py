"""The only code that changes the machine: Root, Runner, FileSystem; with them the agent's
base helpers: errors, loggers, secrets redaction."""

from system.errors import (
    AgentError,
    CommandFailed,
    PathEscapesRoot,
    SymlinkLoop,
    UnsafeOperation,
)
from system.fs import FileSystem
from system.root import Root
from system.runner import PlannedChange, Result, Runner

__all__ = [
    "AgentError",
    "CommandFailed",
    "FileSystem",
    "PathEscapesRoot",
    "PlannedChange",
    "Result",
    "Root",
    "Runner",
    "SymlinkLoop",
    "UnsafeOperation",
]
