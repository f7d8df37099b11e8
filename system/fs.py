"""FileSystem: the agent's file changes, atomic, with mode and owner, recorded in plan mode.

Writes go to a temporary file in the same directory, are fsynced and renamed over
the target (DESIGN rule 6), so a crash leaves either the old or the new file.

Every path is checked again against the root (rule 8: callers join names below root
paths, and pathlib does not ask the Root), and each operation says whether it follows a
final link, always inside the root:
- write compares with what the link names, and then replaces the link itself with the
  file (the rename acts on the directory entry): it never writes through a link;
- mkdir, chmod and truncate act on what a final link names (as they would in a chroot);
- remove, move and chown act on a final link itself, never on its target.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from system.runner import Runner

# The characters of tempfile.mkstemp's random part (tempfile._RandomNameSequence).
MKSTEMP_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")

log = logging.getLogger("waagent.fs")

MARKER = "Managed by waagent-graph"


class FileSystem:
    """File changes below the runner's root; in plan mode they are only recorded."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @property
    def plan(self) -> bool:
        return self.runner.plan

    def _entry(self, path: Path) -> Path:
        """The path inside the root, its last component not followed."""
        return self.runner.root.contain(path)

    def _followed(self, path: Path) -> Path:
        """The path inside the root, a final link followed inside it."""
        return self.runner.root.contain(path, follow=True)

    def _shown(self, path: Path) -> str:
        try:
            return self.runner.root.system_path(path)
        except ValueError:
            return str(path)

    def write(
        self,
        path: Path,
        data: str | bytes,
        *,
        why: str,
        mode: int | None = None,
        owner: tuple[int, int] | None = None,
        secret: bool = False,
        quiet: bool = False,
        durable: bool = True,
    ) -> bool:
        """Write a file atomically; return False (and do nothing) when it already holds data.

        Without `mode`/`owner` an existing file keeps its own; a new file gets 0644 and root.
        `secret` keeps the reason out of the log; `quiet` logs the change at DEBUG (state files).
        `durable=False` skips the fsyncs, for records whose loss in a power cut costs
        nothing (run reports) or is found and repaired by the next run: still atomic (never
        partly written), but possibly absent or empty after a crash.
        """
        content = data.encode() if isinstance(data, str) else data
        target, seen = self._entry(path), self._followed(path)
        try:
            current = seen.read_bytes()
            st: os.stat_result | None = seen.stat()
        except FileNotFoundError:
            current, st = None, None
        want_mode = mode if mode is not None else (stat.S_IMODE(st.st_mode) if st else 0o644)
        want_owner = owner if owner is not None else ((st.st_uid, st.st_gid) if st else None)
        same_meta = st is not None and stat.S_IMODE(st.st_mode) == want_mode and (
            want_owner is None or (st.st_uid, st.st_gid) == want_owner)
        if current == content and same_meta:
            return False
        shown = self._shown(path)
        self.runner.record("write", shown, why)
        if self.plan:
            return True
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        except FileNotFoundError:  # the first file of its directory
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            # Mode before content, so a secret is never readable by others, even briefly.
            os.fchmod(fd, want_mode)
            if want_owner is not None:
                os.fchown(fd, *want_owner)
            with os.fdopen(fd, "wb") as out:
                out.write(content)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if secret:
            self._remove_killed_writes(target, want_mode)
        if durable:
            self._fsync_dir(target.parent)
        log.log(logging.DEBUG if quiet else logging.INFO, "changed: %s%s", shown,
                "" if secret else f" ({why})")
        return True

    def mkdir(self, path: Path, *, why: str, mode: int = 0o755,
              owner: tuple[int, int] | None = None, quiet: bool = False) -> bool:
        """Create a directory (and parents) or fix its mode/owner; False when already right."""
        real = self._followed(path)
        try:
            st = real.stat()
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{self._shown(path)} exists and is not a directory")
        if st is not None and stat.S_IMODE(st.st_mode) == mode and (
                owner is None or (st.st_uid, st.st_gid) == owner):
            return False
        shown = self._shown(path)
        self.runner.record("mkdir", shown, why)
        if self.plan:
            return True
        real.mkdir(parents=True, exist_ok=True)
        os.chmod(real, mode)
        if owner is not None:
            os.chown(real, *owner, follow_symlinks=False)
        log.log(logging.DEBUG if quiet else logging.INFO, "changed: %s/ (%s)", shown, why)
        return True

    def remove(self, path: Path, *, why: str, quiet: bool = False) -> bool:
        """Remove a file, link or directory tree; False when it was not there."""
        path = self._entry(path)
        if not os.path.lexists(path):
            return False
        shown = self._shown(path)
        self.runner.record("remove", shown, why)
        if self.plan:
            return True
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        log.log(logging.DEBUG if quiet else logging.INFO, "removed: %s (%s)", shown, why)
        return True

    def chmod(self, path: Path, mode: int, *, why: str) -> bool:
        """Set a mode; False when already set."""
        path = self._followed(path)
        if stat.S_IMODE(path.stat().st_mode) == mode:
            return False
        self.runner.record("chmod", f"{oct(mode)} {self._shown(path)}", why)
        if not self.plan:
            os.chmod(path, mode)
        return True

    def chown(self, path: Path, owner: tuple[int, int], *, why: str) -> bool:
        """Set owner and group (of a link itself, not its target); False when already set."""
        path = self._entry(path)
        st = path.lstat()
        if (st.st_uid, st.st_gid) == owner:
            return False
        self.runner.record("chown", f"{owner[0]}:{owner[1]} {self._shown(path)}", why)
        if not self.plan:
            os.lchown(path, *owner)
        return True

    def move(self, source: Path, target: Path, *, why: str) -> bool:
        """Rename a file or link (used to move rules aside); False when the source is absent."""
        source, target = self._entry(source), self._entry(target)
        if not os.path.lexists(source):
            return False
        self.runner.record("move", f"{self._shown(source)} -> {self._shown(target)}", why)
        if not self.plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            log.info("moved: %s -> %s (%s)", self._shown(source), self._shown(target), why)
        return True

    def symlink(self, path: Path, target: str, *, why: str) -> bool:
        """Make `path` a link to `target` (as the VM reads it), replacing a different link;
        False when it already is that link."""
        path = self._entry(path)
        if path.is_symlink() and os.readlink(path) == target:
            return False
        self.runner.record("symlink", f"{self._shown(path)} -> {target}", why)
        if not self.plan:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            os.symlink(target, temporary)
            os.replace(temporary, path)
            log.info("linked: %s -> %s (%s)", self._shown(path), target, why)
        return True

    def truncate(self, path: Path, *, why: str) -> bool:
        """Empty a file, keeping it (e.g. /etc/machine-id); False when already empty or absent."""
        path = self._followed(path)
        if not path.exists() or path.stat().st_size == 0:
            return False
        self.runner.record("truncate", self._shown(path), why)
        if not self.plan:
            with open(path, "r+b") as handle:
                handle.truncate(0)
                os.fsync(handle.fileno())
        return True

    @contextlib.contextmanager
    def scratch_file(self, data: str | bytes, *, name: str = "candidate",
                     directory: Path | None = None) -> Iterator[Path]:
        """A private temporary file (0600) holding `data`, removed afterwards: a candidate
        to validate (visudo -c, sshd -t) before the real file is replaced."""
        if directory is not None:
            directory = self._followed(directory)
        with tempfile.TemporaryDirectory(prefix="waagent-", dir=directory) as tmp:
            path = Path(tmp) / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data.encode() if isinstance(data, str) else data)
            yield path

    @staticmethod
    def _remove_killed_writes(target: Path, mode: int) -> None:
        """A write killed (SIGKILL, power cut) between its temporary file and the rename
        leaves that file, `.NAME.`, mkstemp's 8 characters and the secret's mode, behind.
        Such a copy would outlive the secret, so the next successful write of the same file
        removes those that match all three (runs take the agent's lock: no other writer of
        this file is at work; a file of another shape is not the agent's, and stays)."""
        prefix = f".{target.name}."
        for entry in os.scandir(target.parent):
            suffix = entry.name[len(prefix):]
            if (entry.name.startswith(prefix) and len(suffix) == 8
                    and set(suffix) <= MKSTEMP_CHARACTERS
                    and entry.is_file(follow_symlinks=False)
                    and stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode) == mode):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
