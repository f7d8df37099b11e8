"""Typed errors whose messages say what failed, on what, and what the operator can do."""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agent's own errors; str() is the message shown to the operator."""


class CommandFailed(AgentError):
    """A command exited non-zero or timed out."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class UnsafeOperation(AgentError):
    """A destructive step refused because the system is not positively known to be safe."""


class ProbeFailed(AgentError):
    """A probe could not read the real state: unknown, never 'empty' (DESIGN rule 4)."""
