"""A zip archive streamed to a temporary file and renamed into place (DESIGN rule 6).

Members are written through file-like streams, so a large file passes through the
archive a buffer at a time and never sits whole in memory. A failure, or an exception
in the `with` block, leaves the previous archive untouched and removes the temporary
file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import zipfile
from pathlib import Path
from types import TracebackType
from typing import IO

from system.runner import Runner

log = logging.getLogger("waagent.fs")

# Zip stores local times from 1980 on; older (or unset) times are clamped.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class ArchiveWriter:
    """`with ArchiveWriter(runner, path, why=...) as archive:` then `archive.member(...)`."""

    def __init__(self, runner: Runner, path: Path, *, why: str, mode: int = 0o600) -> None:
        self.runner = runner
        self.path = runner.root.contain(path)
        self.why = why
        self.mode = mode
        self._tmp: str | None = None
        self._file: IO[bytes] | None = None
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> ArchiveWriter:
        self.runner.record("write", self.runner.root.system_path(self.path), self.why)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.runner.plan:  # nothing is kept: the members go to a file removed at once
            self._file = tempfile.TemporaryFile()
        else:
            fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            os.fchmod(fd, self.mode)
            self._file = os.fdopen(fd, "w+b")
        self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_DEFLATED)
        return self

    def member(self, name: str, mtime: float | None = None) -> IO[bytes]:
        """A stream that writes one member, deflated; close it before the next."""
        assert self._zip is not None, "use ArchiveWriter in a with block"
        stamp = time.localtime(time.time() if mtime is None else mtime)[:6]
        info = zipfile.ZipInfo(name, date_time=max(stamp, _ZIP_EPOCH))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o600 << 16
        return self._zip.open(info, "w")

    def add(self, name: str, data: bytes) -> None:
        """A small member written at once (results.txt)."""
        with self.member(name) as out:
            out.write(data)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        assert self._zip is not None and self._file is not None
        try:
            if kind is None:
                self._zip.close()
            else:  # the archive is thrown away: its own error would hide the first
                with contextlib.suppress(Exception):
                    self._zip.close()
            if kind is None and self._tmp is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            self._file.close()
        if self._tmp is None:
            return
        if kind is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            return
        os.replace(self._tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        log.info("changed: %s (%s)", self.runner.root.system_path(self.path), self.why)

    def size(self) -> int:
        """Bytes written so far (the archive's compressed size once closed)."""
        assert self._file is not None
        return self._file.tell()
