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


class RootPathError(AgentError):
    """A path inside root= that cannot be resolved safely (DESIGN rule 8)."""

    def __init__(self, system_path: str, root: str, link: str | None, message: str) -> None:
        super().__init__(message)
        self.system_path = system_path  # as the VM sees it: /etc/sudoers.d/waagent
        self.root = root
        self.link = link  # the image's link that led there, if one did


class PathEscapesRoot(RootPathError):
    """A path that `..` or a link in the image leads outside the root: refused."""

    def __init__(self, system_path: str, root: str, link: str | None,
                 why: str | None = None) -> None:
        if why is None:
            why = (f"the link {link} in the image climbs above it" if link else
                   "its '..' climbs above it")
        fix = f"; fix or remove the link {link} in the image" if link else ""
        super().__init__(system_path, root, link,
                         f"refusing {system_path}: it leads outside the root {root} ({why})"
                         f"{fix}")


class SymlinkLoop(RootPathError):
    """Too many links on the way to a path inside the root (ELOOP)."""

    def __init__(self, system_path: str, root: str, link: str) -> None:
        super().__init__(system_path, root, link,
                         f"refusing {system_path} in the root {root}: too many levels of "
                         f"symbolic links, last at {link}; fix the link loop in the image")
