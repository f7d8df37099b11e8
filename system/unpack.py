"""Extension packages: a zip checked whole before one byte is unpacked, then unpacked atomically.

A handler package comes from the network and is unpacked as root, so it is treated as
hostile. `check_zip` refuses, naming the archive and the member: more than `max_files`
entries or `max_bytes` in all (zip bombs, also by ratio), absolute names, `..`, NUL or
backslashes in names, duplicates (also `a` and `./a`), device, fifo and socket entries,
encrypted entries, and a bad CRC (every member is read once, its size held to the one
declared). waagent 2.7.3 runs zipfile's extractall, which drops `..` and leading `/`
silently and ignores every mode; we refuse instead, so a broken package says so.

Symbolic links: allowed only when they stay inside the handler directory: a relative
target whose `..` never climbs above the directory and never follows another link of
the archive, and no member may be stored below a link (that would write through it).
With those rules a chain of links cannot leave the directory either. Links are made
last, after every file, so no write ever goes through one.

`unpack_zip` extracts into a fresh temporary directory beside the target and renames it
into place: a crash leaves the whole tree or none of it. Modes are the zip's permission
bits without setuid, setgid, sticky and group or other write (waagent's files are
0644 under its umask: never writable by others), and like waagent (ExtHandlerInstance.initialize)
every file gets its owner's execute bit: packages zipped on Windows carry no modes and
handlers rely on their scripts being executable.
"""

from __future__ import annotations

import contextlib
import io
import logging
import lzma
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO

from system.errors import AgentError
from system.fs import FileSystem

log = logging.getLogger("waagent.unpack")

MiB = 1024 * 1024
MAX_BYTES = 512 * MiB
MAX_FILES = 10_000
MAX_RATIO = 200
# Small members compress far better than any ratio limit (a few KB of zeros): the ratio
# is only checked for members and archives above this size.
RATIO_MIN_BYTES = 1 * MiB
MAX_LINK_TARGET = 4096
_CHUNK = 256 * 1024


class UnsafeArchive(AgentError):
    """A package refused before anything was unpacked; the message names the archive, the
    member and what is wrong with it."""

    def __init__(self, archive: str, member: str | None, problem: str) -> None:
        where = f"{archive}: member {member!r}" if member is not None else archive
        super().__init__(f"refusing to unpack {where}: {problem}; the package is damaged or "
                         "hostile: nothing was unpacked, ask its publisher for a fixed version")
        self.archive = archive
        self.member = member
        self.problem = problem


def _kind(info: zipfile.ZipInfo) -> str:
    """"file", "dir" or "link" from the Unix mode in the entry (none: by the name)."""
    mode = info.external_attr >> 16
    fmt = stat.S_IFMT(mode)
    if fmt == stat.S_IFLNK:
        return "link"
    if fmt == stat.S_IFDIR or (fmt == 0 and info.filename.endswith("/")):
        return "dir"
    if fmt in (0, stat.S_IFREG):
        return "file"
    return {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
            stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}.get(fmt, f"type {oct(fmt)}")


def _parts(name: str, archive: str) -> tuple[str, ...]:
    """The path components of a member name, refused when unsafe."""
    if "\x00" in name:
        raise UnsafeArchive(archive, name, "its name holds a NUL byte (zipfile would cut it "
                            "there and unpack another name)")
    if "\\" in name:
        raise UnsafeArchive(archive, name, "its name holds a backslash, which Windows tools "
                            "read as a separator (`..\\` tricks): names must use '/'")
    if name.startswith("/"):
        raise UnsafeArchive(archive, name, "its name is an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(archive, name, "its name holds '..' (zip slip)")
    if not parts:
        raise UnsafeArchive(archive, name, "its name names no file")
    return parts


def _link_stays_inside(link: tuple[str, ...], target: str, links: set[tuple[str, ...]]) -> str:
    """Why a link's target would leave the directory, or "" when it stays inside."""
    if not target:
        return "its target is empty"
    if target.startswith("/"):
        return f"it points to the absolute path {target!r}"
    if "\x00" in target or "\\" in target:
        return "its target holds a NUL or a backslash"
    where = list(link[:-1])
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                return f"its target {target!r} climbs above the handler directory"
            if tuple(where) in links:
                return (f"its target {target!r} climbs out of the link "
                        f"{'/'.join(where)!r}, which could lead anywhere")
            where.pop()
        else:
            where.append(part)
    return ""


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: str,
                 out: IO[bytes] | None, budget: int) -> int:
    """Stream a member (to `out`, or nowhere) and return its size; refuse a bad CRC, a
    member larger than it declared, or more than `budget` bytes."""
    size = 0
    try:
        with zf.open(info) as member:
            while chunk := member.read(_CHUNK):
                size += len(chunk)
                if size > info.file_size:
                    raise UnsafeArchive(archive, info.filename, "it unpacks to more than the "
                                        f"{info.file_size} bytes it declares (a zip bomb)")
                if size > budget:
                    raise UnsafeArchive(archive, info.filename, "the archive unpacks to more "
                                        "than its size limit (a zip bomb)")
                if out is not None:
                    out.write(chunk)
    except UnsafeArchive:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            NotImplementedError, RuntimeError, zlib.error, lzma.LZMAError) as err:
        # zipfile says "Bad CRC-32 for file ..." for a corrupt member; a damaged deflate
        # or LZMA stream raises its codec's own error (bzip2's is an OSError).
        raise UnsafeArchive(archive, info.filename, f"it cannot be read: {err}") from None
    if size != info.file_size:
        raise UnsafeArchive(archive, info.filename, f"it holds {size} bytes, not the "
                            f"{info.file_size} it declares")
    return size


def check_zip(data: bytes, *, name: str, max_bytes: int = MAX_BYTES,
              max_files: int = MAX_FILES, max_ratio: int = MAX_RATIO) -> list[zipfile.ZipInfo]:
    """The members of a zip archive, each checked and read once (CRC); UnsafeArchive naming
    `name`, the member and the problem otherwise. Nothing is written anywhere."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError,
            NotImplementedError) as err:  # "zip file version 12.7": one it cannot read
        raise UnsafeArchive(name, None, f"it is not a readable zip archive ({err})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise UnsafeArchive(name, None, f"it holds {len(infos)} entries, over the limit "
                                f"of {max_files}")
        declared = sum(info.file_size for info in infos)
        if declared > max_bytes:
            raise UnsafeArchive(name, None, f"it unpacks to {declared} bytes, over the limit "
                                f"of {max_bytes} (a zip bomb)")
        if declared > RATIO_MIN_BYTES and declared > max_ratio * max(len(data), 1):
            raise UnsafeArchive(name, None, f"it unpacks to {declared} bytes from "
                                f"{len(data)}, more than {max_ratio} times (a zip bomb)")

        seen: dict[tuple[str, ...], str] = {}
        kinds: dict[tuple[str, ...], str] = {}
        for info in infos:
            parts = _parts(info.orig_filename, name)
            kind = _kind(info)
            if kind not in ("file", "dir", "link"):
                raise UnsafeArchive(name, info.filename, f"it is a {kind}: a package holds "
                                    "only files, directories and links")
            if info.flag_bits & 0x1:
                raise UnsafeArchive(name, info.filename, "it is encrypted")
            if parts in seen:
                raise UnsafeArchive(name, info.filename, "the archive holds this name twice "
                                    f"(also as {seen[parts]!r})")
            if (kind == "file" and info.file_size > RATIO_MIN_BYTES
                    and info.file_size > max_ratio * max(info.compress_size, 1)):
                raise UnsafeArchive(name, info.filename, f"it unpacks {info.compress_size} "
                                    f"bytes to {info.file_size}, more than {max_ratio} times "
                                    "(a zip bomb)")
            seen[parts] = info.filename
            kinds[parts] = kind

        links = {parts for parts, kind in kinds.items() if kind == "link"}
        for parts, member in seen.items():
            for depth in range(1, len(parts)):
                above = kinds.get(parts[:depth])
                if above in ("link", "file"):
                    raise UnsafeArchive(name, member, f"it is stored below "
                                        f"{'/'.join(parts[:depth])!r}, which is a {above} "
                                        "in the archive")

        budget = max_bytes
        for info in infos:
            if kinds[_parts(info.orig_filename, name)] == "dir":
                continue
            if kinds[_parts(info.orig_filename, name)] == "link":
                if info.file_size > MAX_LINK_TARGET:
                    raise UnsafeArchive(name, info.filename, "its link target is "
                                        f"{info.file_size} bytes long")
                buffer = io.BytesIO()
                _read_member(zf, info, name, buffer, budget)
                target = buffer.getvalue().decode("utf-8", errors="replace")
                why = _link_stays_inside(_parts(info.orig_filename, name), target, links)
                if why:
                    raise UnsafeArchive(name, info.filename, f"it is a symbolic link and "
                                        f"{why}: links must stay inside the handler directory")
                continue
            budget -= _read_member(zf, info, name, None, budget)
    return infos


def _file_mode(info: zipfile.ZipInfo, kind: str) -> int:
    """The mode to give a member: its permission bits without setuid/setgid/sticky (0644
    or 0755 when the zip has none), plus the owner's execute bit on files, as waagent."""
    # Never writable by group or others: these are scripts root runs.
    mode = stat.S_IMODE(info.external_attr >> 16) & 0o755
    if kind == "dir":
        return mode | 0o700 if mode else 0o755
    return (mode or 0o644) | stat.S_IXUSR | stat.S_IRUSR


def unpack_zip(fs: FileSystem, data: bytes, target: Path, *, name: str,
               replace: bool = False, durable: bool = True,
               checked: list[zipfile.ZipInfo] | None = None,
               keep: tuple[str, ...] = ()) -> None:
    """Check the package, then unpack it to `target` (a real path below the root, e.g.
    `<Lib.Dir>/<Name>-<Version>`) through a temporary directory renamed into place.

    UnsafeArchive before anything is written when the zip is refused. An existing
    `target` is an error unless `replace` (it is then swapped for the new tree). In plan
    mode the unpack is only recorded. `durable` fsyncs every file before the rename.
    `checked`: what `check_zip` returned for these very bytes (the caller keeps their
    digest), so they are not read and decompressed a second time. `keep`: top-level names
    of a replaced tree moved into the new one as they are (state written beside the
    package's files, which a repair must not lose).
    """
    infos = checked if checked is not None else check_zip(data, name=name)
    root = fs.runner.root
    real = root.contain(target)  # the directory entry itself: never through a link
    shown = root.system_path(real)
    exists = os.path.lexists(real)
    if exists and not replace:
        raise FileExistsError(f"cannot unpack {name} to {shown}: it already exists; "
                              "remove it first (or unpack with replace=True)")
    if exists and (real.is_symlink() or not real.is_dir()):
        raise UnsafeArchive(name, None, f"{shown} exists and is not a directory: refusing "
                            "to replace it")
    files = sum(1 for info in infos if _kind(info) == "file")
    fs.runner.record("unpack", shown, f"unpack {name} ({files} files)")
    if fs.plan:
        return
    if not real.parent.exists():
        fs.mkdir(real.parent, why=f"directory for {shown}", mode=0o755)
    parent = root.contain(real.parent, follow=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{real.name}.unpack-"))
    try:
        _extract(infos, data, staging, name, durable=durable)
        os.chmod(staging, 0o755)
        if exists:
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{real.name}.old-"))
            os.replace(real, old / "tree")
            for entry in keep:
                if os.path.lexists(old / "tree" / entry):
                    _remove(staging / entry)
                    os.replace(old / "tree" / entry, staging / entry)
            os.replace(staging, real)
            shutil.rmtree(old)
        else:
            os.replace(staging, real)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        raise
    if durable:
        _fsync(parent)
    log.info("changed: %s/ (unpacked %d files from %s)", shown, files, name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _extract(infos: list[zipfile.ZipInfo], data: bytes, staging: Path, name: str, *,
             durable: bool) -> None:
    """Write the members below `staging` (fresh, ours): directories, then files created
    exclusively without following links, then links; directory modes set last. `durable`:
    every file fsynced as written, then every directory once (those the archive names and
    those made as parents of its members alike), so the tree is whole before its rename."""
    dir_modes: dict[Path, int] = {}
    made: set[Path] = set()  # every directory below staging, named or made as a parent
    links: list[tuple[Path, str]] = []
    budget = MAX_BYTES
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in infos:
            parts = _parts(info.orig_filename, name)
            kind = _kind(info)
            path = staging.joinpath(*parts)
            made.update(staging.joinpath(*parts[:depth]) for depth in range(1, len(parts)))
            if kind == "dir":
                path.mkdir(parents=True, exist_ok=True, mode=0o700)
                dir_modes[path] = _file_mode(info, kind)
                made.add(path)
                continue
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if kind == "link":
                buffer = io.BytesIO()
                _read_member(zf, info, name, buffer, MAX_LINK_TARGET)
                links.append((path, buffer.getvalue().decode("utf-8", errors="replace")))
                continue
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                budget -= _read_member(zf, info, name, out, budget)
                os.fchmod(out.fileno(), _file_mode(info, kind))
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
    for path, link_target in links:
        os.symlink(link_target, path)
    # Deepest first, so a read-only directory is closed after its children were made.
    for path in sorted(made, key=lambda p: len(p.parts), reverse=True):
        os.chmod(path, dir_modes.get(path, 0o755))  # made as a parent: as waagent would
    if durable:
        for directory in [staging, *made]:
            _fsync(directory)


def _fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
