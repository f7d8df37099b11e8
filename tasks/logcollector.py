"""Log collection: `waagent -collect-logs [-full]`, and the daemon's periodic upload.

The collector reads a manifest (tasks/data/logcollector-*.manifest: `echo`, `ll`, `cat`
and `copy` lines), picks the files by priority within waagent's caps (30 MiB a file,
cut to its tail; 150 MiB in all before compression), streams them through a redactor
into `<Lib.Dir>/logcollector/logs.zip` (atomically) and writes a `results.txt` of what
it took, what it left out and why.

Bounds: only regular files of the VM are read (never /proc, /sys or /dev, never a
link that leaves the root, never `*.prv` or the shadow files), however the manifest's
globs are written; a glob stops after MAX_MATCHES names. Secrets are redacted in what
is copied: private keys (PEM blocks), the `protectedSettings` of settings files (kept
encrypted as on disk, then replaced by a marker), passwords and custom data in XML and
JSON, and the custom data itself wherever it appears. Compressed files are copied as
they are.

The collector is its own process: the daemon runs `waagent -collect-logs` every
`Logs.CollectPeriod` (the first after FIRST_DELAY), in a systemd scope with CPUQuota
5% and MemoryHigh 170M where systemd runs, and uploads the archive to the HostGAPlugin
(`PUT /vmAgentLog`). The collector stops itself when its anonymous memory passes
MEMORY_LIMIT (exit status EXIT_MEMORY); the daemon then stops collecting until it restarts.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from system.errors import AgentError, RootPathError

if TYPE_CHECKING:
    from graph.context import Context
    from system.root import Root
    from system.runner import Started

MiB = 1024 * 1024
FILE_CAP = 30 * MiB
TOTAL_CAP = 150 * MiB
# Anonymous memory (RssAnon) past which the collector stops itself, as waagent's does.
MEMORY_LIMIT = 25 * MiB
MAX_MATCHES = 10_000  # names one copy line may match
MAX_DEPTH = 12  # directories `**` descends
LL_MAX_ENTRIES = 2_000
CAT_MAX = 256 * 1024
BLOCK = 1 * MiB  # files are read and redacted this much (and the rest of a line) at a time
LINE_MAX = 1 * MiB  # longer lines are redacted in pieces of this size
COMPRESSED = (".gz", ".tgz", ".zip", ".xz", ".bz2", ".zst", ".lz4", ".7z")

COLLECTOR_DIR = "logcollector"
ARCHIVE = "logs.zip"
RESULTS = "results.txt"
AGENT_LOG = "/var/log/waagent.log"
MANIFESTS = {"normal": "logcollector-normal.manifest", "full": "logcollector-full.manifest"}

# The periodic collection (PLATFORM.md section 10).
FIRST_DELAY = 300.0
SCOPE_UNIT = "collect-logs"
SCOPE_SLICE = "azure-walinuxagent-logcollector.slice"
SCOPE_LIMITS = {"CPUAccounting": "yes", "CPUQuota": "5%", "MemoryAccounting": "yes",
                "MemoryHigh": "170M"}
COLLECT_TIMEOUT = 3600.0  # a collection still running after this is stopped
UPLOAD_TIMEOUT = 30.0
EXIT_MEMORY = 3

# Never copied, whatever a manifest asks: trees that are not files of the VM, and
# files that are secrets as a whole.
NEVER_TREES = ("/proc", "/sys", "/dev")
NEVER_FILES = ("*.prv", "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-",
               "/etc/ssh/ssh_host_*_key")
# Small kernel text files `cat` may show (everything else under /proc and /sys is refused).
KERNEL_TEXT = ("/proc/mounts", "/proc/partitions", "/proc/swaps", "/proc/cmdline",
               "/proc/meminfo", "/proc/cpuinfo", "/proc/version", "/proc/diskstats")


class CollectorError(AgentError):
    """Log collection failed (the manifest, the archive)."""


class OverMemory(CollectorError):
    """The collector's own memory grew past MEMORY_LIMIT."""


# -- the manifest ----------------------------------------------------------------------------


class Entry(NamedTuple):
    """One manifest line: `command,argument`, with its line number."""

    command: str
    argument: str
    line: int


COMMANDS = ("echo", "ll", "cat", "copy")


def parse_manifest(text: str, variables: dict[str, str]) -> tuple[list[Entry], list[str]]:
    """The manifest's entries with $VARIABLES expanded, and the problems of bad lines
    (reported in results.txt; the other lines still count, as in waagent)."""
    entries: list[Entry] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        command, comma, argument = line.partition(",")
        command = command.strip().lower()
        if not comma or command not in COMMANDS:
            problems.append(f"manifest line {number}: {raw!r} is not one of "
                            f"{', '.join(c + ',...' for c in COMMANDS)}")
            continue
        for name in sorted(variables, key=len, reverse=True):
            argument = argument.replace(name, variables[name])
        argument = argument.strip() if command != "echo" else argument
        if command != "echo":
            why = _path_problem(argument)
            if why:
                problems.append(f"manifest line {number}: {argument!r} {why}")
                continue
        entries.append(Entry(command, argument, number))
    return entries, problems


def _path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return "is not an absolute path"
    if ".." in path.split("/"):
        return "climbs with '..': refused"
    if "\0" in path:
        return "holds a NUL byte"
    return None


def manifest_text(full: bool) -> str:
    """The shipped manifest (tasks/data/)."""
    name = MANIFESTS["full" if full else "normal"]
    return (Path(__file__).parent / "data" / name).read_text(encoding="utf-8")


def manifest_variables(ctx: Context) -> dict[str, str]:
    return {"$LIB_DIR": ctx.conf.required_path("Lib.Dir").rstrip("/"),
            "$LOG_DIR": (ctx.conf.text("Extension.LogDir") or "/var/log/azure").rstrip("/"),
            "$AGENT_LOG": AGENT_LOG}


# -- finding files inside the root -----------------------------------------------------------


class Found(NamedTuple):
    """A regular file of the VM that a copy line named."""

    shown: str  # the path as the VM sees it (links inside the root followed)
    real: Path
    size: int
    mtime: float
    ino: tuple[int, int]


class Refused(NamedTuple):
    shown: str
    why: str


def _has_magic(name: str) -> bool:
    return any(c in name for c in "*?[")


def expand_glob(root: Root, pattern: str, limit: int = MAX_MATCHES) -> list[str]:
    """The system paths a glob names inside the root: `*`, `?`, `[...]` within a name
    (not matching a leading dot, as the shell), `**` for any depth of directories. The
    walk never follows a directory link out of the root and stops after `limit` names."""
    found: list[str] = []
    current = ["/"]
    parts = [p for p in pattern.split("/") if p]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        following: list[str] = []
        for directory in current:
            if part == "**":
                following += _walk(root, directory, limit, files=last)
            elif not _has_magic(part):
                following.append(_join(directory, part))
            else:
                following += [_join(directory, name) for name in _list(root, directory)
                              if fnmatch.fnmatchcase(name, part)
                              and (part.startswith(".") or not name.startswith("."))]
            if len(following) >= limit:
                break
        current = sorted(set(following))[:limit]
        if last:
            found = current
    if not parts:
        found = ["/"]
    return found


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def _real_dir(root: Root, directory: str) -> Path | None:
    try:
        return root.follow(directory)
    except RootPathError:
        return None


def _list(root: Root, directory: str) -> list[str]:
    real = _real_dir(root, directory)
    if real is None:
        return []
    try:
        with os.scandir(real) as entries:
            names = []
            for entry in entries:
                names.append(entry.name)
                if len(names) >= MAX_MATCHES:
                    break
            return sorted(names)
    except OSError:
        return []


def _walk(root: Root, directory: str, limit: int, *, files: bool) -> list[str]:
    """The directory and every directory below it (not through links), and with `files`
    the other names in them too; names starting with '.' are skipped, as the shell does."""
    found = [directory]
    todo = [(directory, 0)]
    while todo and len(found) < limit:
        path, depth = todo.pop()
        if depth >= MAX_DEPTH:
            continue
        real = _real_dir(root, path)
        if real is None:
            continue
        try:
            with os.scandir(real) as scan:
                entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in scan
                                 if not e.name.startswith("."))
        except OSError:
            continue
        for name, is_dir in entries:
            if is_dir or files:
                found.append(_join(path, name))
            if is_dir:
                todo.append((_join(path, name), depth + 1))
    return found[:limit]


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree + "/")


def never_copied(shown: str) -> str | None:
    """Why a file (as the VM sees it) is never copied, or None."""
    for tree in NEVER_TREES:
        if _under(shown, tree):
            return f"in {tree}: not a file of the VM"
    name = shown.rsplit("/", 1)[-1]
    for pattern in NEVER_FILES:
        if fnmatch.fnmatchcase(shown if "/" in pattern else name, pattern):
            return "a secret as a whole (private key or password hashes)"
    return None


def resolve(root: Root, system_path: str) -> Found | Refused | None:
    """The regular file a name leads to inside the root, why it is refused, or None for
    what is not a file (absent, a directory)."""
    try:
        real = root.follow(system_path) if not root.is_host else Path(
            os.path.realpath(system_path))
    except RootPathError as err:
        return Refused(system_path, str(err))
    shown = root.system_path(real)
    why = never_copied(shown) or (never_copied(system_path) if shown != system_path else None)
    if why:
        return Refused(system_path, why + (f" (it leads to {shown})" if shown != system_path
                                           else ""))
    try:
        st = os.lstat(real)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    if not stat.S_ISREG(st.st_mode):
        return Refused(system_path, "not a regular file")
    return Found(shown, real, st.st_size, st.st_mtime, (st.st_dev, st.st_ino))


def open_found(found: Found) -> IO[bytes]:
    """Open a file found earlier, refusing it if it became a link or another file."""
    fd = os.open(found.real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != found.ino:
        os.close(fd)
        raise CollectorError(f"{found.shown} changed while it was collected")
    return os.fdopen(fd, "rb")


# -- choosing within the caps ----------------------------------------------------------------


class Candidate(NamedTuple):
    """A file to collect, with its place in the fill order (lower first)."""

    found: Found
    rank: tuple[int, float]  # the copy line, then newest first


class Pick(NamedTuple):
    found: Found
    take: int  # bytes taken: the whole file, or its tail
    tail: bool


class LeftOut(NamedTuple):
    shown: str
    why: str


def is_compressed(path: str) -> bool:
    return path.lower().endswith(COMPRESSED)


def choose(candidates: Iterable[Candidate], file_cap: int = FILE_CAP,
           total_cap: int = TOTAL_CAP) -> tuple[list[Pick], list[LeftOut]]:
    """Fill the archive in rank order: a file over `file_cap` is cut to its tail (a
    compressed one is left out: its tail is no use), and a file that would take the
    total past `total_cap` is left out, smaller ones after it may still fit."""
    picks: list[Pick] = []
    left: list[LeftOut] = []
    total = 0
    for candidate in sorted(candidates, key=lambda c: c.rank):
        found = candidate.found
        if found.size > file_cap and is_compressed(found.shown):
            left.append(LeftOut(found.shown, f"compressed, {found.size} b: over the "
                                f"{file_cap // MiB} MiB a file and cannot be cut"))
            continue
        take = min(found.size, file_cap)
        if total + take > total_cap:
            left.append(LeftOut(found.shown, f"{take} b: the archive is full ({total} b of "
                                f"{total_cap // MiB} MiB taken by files before it)"))
            continue
        picks.append(Pick(found, take, found.size > file_cap))
        total += take
    return picks, left


def archive_name(pick: Pick) -> str:
    """The member name: the path without its leading '/'; a cut file as waagent names it,
    `truncated_` and the path with '/' as '_'."""
    relative = pick.found.shown.lstrip("/")
    return "truncated_" + relative.replace("/", "_") if pick.tail else relative


# -- redaction -------------------------------------------------------------------------------

MARK = b"<redacted by waagent>"
_SECRET_XML = (rb"(?:UserPassword|AdminPassword|Password|CustomData|ProtectedSettings|"
               rb"protectedSettings)")
_XML_ONE_LINE = re.compile(rb"(<(?:\w+:)?(" + _SECRET_XML + rb")\b[^>]*(?<!/)>).*?"
                           rb"(</(?:\w+:)?\2\s*>)", re.IGNORECASE)
_XML_OPEN = re.compile(rb"<(?:\w+:)?(" + _SECRET_XML + rb")\b[^>]*(?<!/)>", re.IGNORECASE)
_SECRET_JSON = (rb"protectedSettings|password|adminPassword|userPassword|customData|"
                rb"privateKey|secret")
_JSON_STRING = re.compile(rb'("(?:' + _SECRET_JSON + rb')"\s*:\s*)"(?:[^"\\]|\\.)*"',
                          re.IGNORECASE)
_JSON_OBJECT = re.compile(rb'("(?:' + _SECRET_JSON + rb')"\s*:\s*)\{[^{}]*\}',
                          re.IGNORECASE)
_PEM_ONE_LINE = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?"
                           rb"-----END [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_BEGIN = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_END = re.compile(rb"-----END [A-Z0-9 ]*PRIVATE KEY-----")
# A block without any of these (lower-cased) and without a literal secret passes as is.
_TRIGGERS = (b"private key", b"password", b"customdata", b"protectedsettings", b"secret",
             b"privatekey")


class Redactor:
    """Masks secrets in a text stream fed in blocks of whole lines (`feed`).

    Within a line: secret XML elements and JSON members keep their name and lose their
    value, one-line PEM private keys go, and literal secrets (the custom data) are
    masked. Across lines: everything from a `BEGIN ... PRIVATE KEY` line, or from a
    secret XML element's opening tag, to its end is dropped. A stream that starts inside
    a private key (a log's tail cut there) loses everything up to the key's END line.
    Blocks with nothing that could start a secret pass as they are (most log text).
    """

    def __init__(self, literals: Iterable[bytes] = ()) -> None:
        self.literals = sorted({s for s in literals if len(s) >= 6}, key=len, reverse=True)
        self.count = 0
        self._closing: re.Pattern[bytes] | None = None  # the end of a region being dropped
        self._first = True

    def feed(self, block: bytes) -> bytes:
        if self._first:
            self._first = False
            end, begin = _PEM_END.search(block), _PEM_BEGIN.search(block)
            if end is not None and (begin is None or begin.start() > end.start()):
                self.count += 1
                block = MARK + b"\n" + block[end.end():].partition(b"\n")[2]
        if self._closing is None and not self._suspect(block):
            return block
        return b"".join(self._line(line) for line in block.splitlines(keepends=True))

    def _suspect(self, block: bytes) -> bool:
        lowered = block.lower()
        return (any(t in lowered for t in _TRIGGERS)
                or any(secret in block for secret in self.literals))

    def _line(self, line: bytes) -> bytes:
        if self._closing is not None:
            found = self._closing.search(line)
            if found is None:
                return b""
            # A key's END line goes with the key; an XML element keeps its closing tag.
            line = line[found.end():] if self._closing is _PEM_END else line[found.start():]
            self._closing = None
            if not line.strip():
                return b""
        line = self._sub(_PEM_ONE_LINE, MARK, line)
        line = self._sub(_XML_ONE_LINE, rb"\1" + MARK + rb"\3", line)
        line = self._sub(_JSON_STRING, rb'\1"' + MARK + rb'"', line)
        line = self._sub(_JSON_OBJECT, rb'\1"' + MARK + rb'"', line)
        for secret in self.literals:
            if secret in line:
                self.count += line.count(secret)
                line = line.replace(secret, MARK)
        begin = _PEM_BEGIN.search(line)
        if begin:
            self.count += 1
            self._closing = _PEM_END
            return line[:begin.start()] + MARK + b"\n"
        opened = _XML_OPEN.search(line)
        if opened and not line[opened.end():].startswith(MARK):
            self.count += 1
            name = re.escape(opened.group(1))
            self._closing = re.compile(rb"</(?:\w+:)?" + name + rb"\s*>", re.IGNORECASE)
            return line[:opened.end()] + MARK + b"\n"
        return line

    def _sub(self, pattern: re.Pattern[bytes], replacement: bytes, line: bytes) -> bytes:
        line, count = pattern.subn(replacement, line)
        self.count += count
        return line


def custom_data_secrets(ctx: Context) -> list[bytes]:
    """The custom data as saved (`<Lib.Dir>/CustomData`) and as ovf-env.xml carries it
    (base64), and its longer lines: a log that quotes it shows one of these."""
    values: list[bytes] = []
    for name in ("CustomData", "ovf-env.xml"):
        try:
            with open(ctx.root.follow(ctx.conf.required_path("Lib.Dir") + "/" + name),
                      "rb") as handle:
                data = handle.read(4 * MiB)
        except (OSError, RootPathError):
            continue
        if name == "ovf-env.xml":
            found = re.search(rb"<(?:\w+:)?CustomData>\s*([^<]*?)\s*</", data)
            if not found:
                continue
            data = found.group(1)
        values.append(data.strip())
        try:
            values.append(base64.b64decode(data, validate=False).strip())
        except (binascii.Error, ValueError):
            pass
    secrets: set[bytes] = set()
    for value in values:
        if len(value) >= 6:
            secrets.add(value)
            secrets.update(line.strip() for line in value.splitlines() if len(line.strip()) >= 16)
    return sorted(secrets)


# -- the collection --------------------------------------------------------------------------


def anonymous_memory() -> int:
    """This process's anonymous resident memory (RssAnon). It is read from the real
    /proc/self, not through the root: it is about this process, not the VM."""
    try:
        with open("/proc/self/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_memory() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Results:
    """results.txt: what the manifest said, what was taken, left out and why."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, text: str = "") -> None:
        self.lines.append(text)

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode("utf-8", "backslashreplace")


class Outcome(NamedTuple):
    archive: Path
    results: Path
    taken: int
    left_out: int
    refused: int
    uncompressed: int
    compressed: int
    seconds: float


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def collect(ctx: Context, *, full: bool = False, manifest: str | None = None,
            memory_limit: int = MEMORY_LIMIT, file_cap: int = FILE_CAP,
            total_cap: int = TOTAL_CAP) -> Outcome:
    """Build `<Lib.Dir>/logcollector/logs.zip` and `results.txt` from the manifest."""
    from system.archive import ArchiveWriter
    from system.redact import register_secret

    started = time.time()
    results = Results()
    results.add(f"Log collection started at {_clock(started)}, mode {'full' if full else 'normal'}"
                f", root {ctx.root.base}")
    variables = manifest_variables(ctx)
    for name, value in variables.items():
        results.add(f"Using {value} as {name}")
    entries, problems = parse_manifest(manifest if manifest is not None else manifest_text(full),
                                       variables)
    for problem in problems:
        results.add(f"ERROR {problem}")
    secrets = custom_data_secrets(ctx)
    for secret in secrets:
        register_secret(secret.decode("utf-8", "replace"))

    own = ctx.root.system_path(ctx.lib_dir / COLLECTOR_DIR)
    candidates: dict[tuple[int, int], Candidate] = {}
    refused: dict[str, str] = {}
    for rank, entry in enumerate(entries):
        if entry.command == "echo":
            results.add(entry.argument)
        elif entry.command == "ll":
            results.add(f"ll {entry.argument}")
            results.lines += list_directory(ctx.root, entry.argument)
        elif entry.command == "cat":
            results.add(f"cat {entry.argument}")
            results.lines += show_text_file(ctx.root, entry.argument, secrets)
        else:
            matched = 0
            for name in expand_glob(ctx.root, entry.argument):
                got = resolve(ctx.root, name)
                if isinstance(got, Refused):
                    refused.setdefault(got.shown, got.why)
                elif got is not None and _under(got.shown, own):
                    refused.setdefault(got.shown, "the collector's own output")
                elif got is not None and got.ino not in candidates:
                    matched += 1
                    candidates[got.ino] = Candidate(got, (rank, -got.mtime))
            results.add(f"copy {entry.argument}: {matched} file{'s' * (matched != 1)}")

    picks, left = choose(candidates.values(), file_cap, total_cap)
    results.add("")
    results.add("### Archive ###")
    directory = ctx.lib_dir / COLLECTOR_DIR
    ctx.fs.mkdir(directory, why="log collection", mode=0o700, quiet=True)
    taken = uncompressed = 0
    check = _memory_check(memory_limit)
    with ArchiveWriter(ctx.run, directory / ARCHIVE, why="collected logs") as archive:
        for pick in picks:
            name = archive_name(pick)
            try:
                with open_found(pick.found) as source, archive.member(
                        name, pick.found.mtime) as target:
                    copied, masked = copy_file(source, target, pick, secrets, check)
            except (OSError, CollectorError) as err:
                results.add(f"FAILED   {pick.found.shown}: {err}")
                continue
            taken += 1
            uncompressed += copied
            how = (f"tail, {copied} b of {pick.found.size} b, as {name}" if pick.tail
                   else f"{copied} b")
            results.add(f"taken    {pick.found.shown} ({how})"
                        + (f", {masked} secret{'s' * (masked != 1)} redacted" if masked else ""))
            check(force=True)
        for item in left:
            results.add(f"left out {item.shown}: {item.why}")
        for shown, why in sorted(refused.items()):
            results.add(f"refused  {shown}: {why}")
        finished = time.time()
        results.add("")
        results.add(f"{taken} files taken, {len(left)} left out, {len(refused)} refused; "
                    f"{uncompressed} b before compression")
        results.add(f"Finished at {_clock(finished)} in {finished - started:.1f} s; "
                    f"peak RSS {peak_memory() // 1024} KiB")
        archive.add(RESULTS, results.text())
        compressed = archive.size()
    ctx.fs.write(directory / RESULTS, results.text(), mode=0o600, quiet=True, durable=False,
                 why="log collection results")
    return Outcome(directory / ARCHIVE, directory / RESULTS, taken, len(left), len(refused),
                   uncompressed, compressed, finished - started)


def _memory_check(limit: int) -> Callable[..., None]:
    """A check called as data flows: every 8 MiB (or when forced) it reads RssAnon and
    raises OverMemory past the limit."""
    state = {"since": 0}

    def check(flowed: int = 0, *, force: bool = False) -> None:
        state["since"] += flowed
        if not force and state["since"] < 8 * MiB:
            return
        state["since"] = 0
        used = anonymous_memory()
        if used > limit:
            raise OverMemory(f"log collection stopped: its anonymous memory is {used // MiB} "
                             f"MiB, over its limit of {limit // MiB} MiB")
    return check


def copy_file(source: IO[bytes], target: IO[bytes], pick: Pick, secrets: list[bytes],
              check: Callable[..., None]) -> tuple[int, int]:
    """Stream a file (or its tail) into the archive; a compressed file as it is, any
    other through the Redactor. The bytes read and the secrets masked."""
    remaining = pick.take
    if pick.tail:
        size = os.fstat(source.fileno()).st_size
        source.seek(max(0, size - pick.take))
    copied = 0
    if is_compressed(pick.found.shown):
        while remaining > 0:
            block = source.read(min(remaining, MiB))
            if not block:
                break
            target.write(block)
            remaining -= len(block)
            copied += len(block)
            check(len(block))
        return copied, 0
    redactor = Redactor(secrets)
    while remaining > 0:
        block = source.read(min(remaining, BLOCK))
        if not block:
            break
        if not block.endswith(b"\n") and len(block) < remaining:
            block += source.readline(min(remaining - len(block), LINE_MAX))
        remaining -= len(block)
        copied += len(block)
        target.write(redactor.feed(block))
        check(len(block))
    return copied, redactor.count


def list_directory(root: Root, directory: str) -> list[str]:
    """`ll DIR` for results.txt: mode, owner, size, time and name, as `ls -alF` shows
    them (numeric owners: the root's users are not this process's)."""
    real = _real_dir(root, directory)
    if real is None:
        return ["  (refused: the path leaves the root)"]
    try:
        with os.scandir(real) as scan:
            entries = []
            for count, entry in enumerate(scan):
                if count >= LL_MAX_ENTRIES:
                    break
                entries.append(entry)
            more = sum(1 for _ in scan)
        entries.sort(key=lambda e: e.name)
    except OSError as err:
        return [f"  ({err.strerror or err})"]
    lines = []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        name = entry.name
        if stat.S_ISLNK(st.st_mode):
            try:
                name += " -> " + os.readlink(entry.path)
            except OSError:
                pass
        elif stat.S_ISDIR(st.st_mode):
            name += "/"
        lines.append(f"  {stat.filemode(st.st_mode)} {st.st_uid:>5} {st.st_gid:>5} "
                     f"{st.st_size:>12} {time.strftime('%Y-%m-%d %H:%M', time.gmtime(st.st_mtime))}"
                     f" {name}")
    if more:
        lines.append(f"  ... and {more} more, not listed")
    return lines


def show_text_file(root: Root, path: str, secrets: list[bytes]) -> list[str]:
    """`cat FILE` for results.txt: a small text file, redacted. Under /proc and /sys
    only the KERNEL_TEXT files; elsewhere the copy rules hold."""
    if any(_under(path, tree) for tree in NEVER_TREES):
        if path not in KERNEL_TEXT:
            return ["  (refused: only " + ", ".join(KERNEL_TEXT) + " are shown from /proc)"]
        try:
            real = root.follow(path) if not root.is_host else Path(path)
        except RootPathError as err:
            return [f"  (refused: {err})"]
        opened: Found | None = None
    else:
        got = resolve(root, path)
        if isinstance(got, Refused):
            return [f"  (refused: {got.why})"]
        if got is None:
            return ["  (not found)"]
        real, opened = got.real, got
    try:
        if opened is not None:
            with open_found(opened) as handle:
                data = handle.read(CAT_MAX + 1)
        else:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    return ["  (refused: not a regular file)"]
                data = handle.read(CAT_MAX + 1)
    except (OSError, CollectorError) as err:
        return [f"  ({getattr(err, 'strerror', None) or err})"]
    redactor = Redactor(secrets)
    text = redactor.feed(data[:CAT_MAX])
    lines = ["  " + line for line in text.decode("utf-8", "backslashreplace").splitlines()]
    if len(data) > CAT_MAX:
        lines.append(f"  ... cut at {CAT_MAX} b")
    return lines


# -- `waagent -collect-logs` -----------------------------------------------------------------


def run_collect_logs(variables: dict[str, str]) -> int:
    """`waagent -collect-logs [-full]`: 0 done, 1 failed, EXIT_MEMORY over its memory."""
    from graph.context import make_context

    full = variables.get("full", "n").lower() in ("y", "yes", "1", "true")
    print(f"Running log collector mode {'full' if full else 'normal'}")
    try:
        ctx = make_context(variables)
        outcome = collect(ctx, full=full)
    except OverMemory as err:
        print(err, file=sys.stderr)
        return EXIT_MEMORY
    except (AgentError, OSError) as err:
        print(f"Log collection completed unsuccessfully. Error: {err}", file=sys.stderr)
        return 1
    print(f"Log collection successfully completed. Archive can be found at {outcome.archive} "
          f"and detailed log output can be found at {outcome.results}")
    print(f"{outcome.taken} files, {outcome.uncompressed} b, {outcome.compressed} b "
          f"compressed, in {outcome.seconds:.1f} s")
    return 0


# -- the daemon's periodic collection --------------------------------------------------------


def collector_argv(ctx: Context) -> list[str]:
    """The command that collects: this agent's `-collect-logs`, in its own scope where
    systemd runs. The child imports the same code as the daemon (PYTHONPATH kept)."""
    from system.scope import scope_argv, systemd_runs

    argv = [sys.executable, "-m", "graph.cli", "-collect-logs"]
    argv += [f"{name}={ctx.vars[name]}" for name in ("root", "conf") if ctx.vars.get(name)]
    if os.environ.get("PYTHONPATH"):
        argv = ["env", f"PYTHONPATH={os.environ['PYTHONPATH']}", *argv]
    if systemd_runs(ctx.root):
        argv = scope_argv(argv, unit=SCOPE_UNIT, slice_name=SCOPE_SLICE, properties=SCOPE_LIMITS)
    return argv


def upload(ctx: Context, target: Any, archive: Path) -> int:
    """`PUT /vmAgentLog` of the archive through the HostGAPlugin; its size."""
    from tasks.status import hostplugin
    from wire.http import HttpClient

    client = hostplugin(ctx, target)
    client.http = HttpClient(timeout=UPLOAD_TIMEOUT)
    data = archive.read_bytes()
    client.put_vm_agent_log(data)
    return len(data)


class PeriodicCollection:
    """The daemon's log collection: with Logs.Collect, the first FIRST_DELAY after the
    start, then every Logs.CollectPeriod. The collector runs as a child process while the
    daemon's loop goes on; `tick` (called every loop) starts it when due, and when it
    has ended uploads its archive."""

    def __init__(self, clock: Callable[[], float], first_delay: float = FIRST_DELAY,
                 start: Callable[[Context, list[str]], Started] | None = None,
                 send: Callable[[Context, Any, Path], int] = upload) -> None:
        self.clock = clock
        self.due = clock() + first_delay
        self.running: Started | None = None
        self.started_at = 0.0
        self.disabled: str | None = None
        self._start = start or _start_collector
        self._send = send

    def tick(self, ctx: Context, target: Any) -> dict[str, Any] | None:
        """Start or finish a collection; what happened (for daemon.json), or None."""
        import logging

        log = logging.getLogger("waagent.logcollector")
        now = self.clock()
        if self.running is not None:
            if not self.running.done():
                if now - self.started_at > COLLECT_TIMEOUT:
                    self.running.stop()
                    self.running = None
                    self.due = now + self.period(ctx)
                    log.warning("log collection stopped after %.0f s", COLLECT_TIMEOUT)
                    return {"at": time.time(), "result": "stopped: took too long"}
                return None
            return self._finish(ctx, target, now, log)
        if self.disabled or now < self.due or not ctx.conf.flag("Logs.Collect"):
            return None
        if target is None:  # no goal state yet: nowhere to upload to
            return None
        if ctx.run.chroot:
            self.disabled = "chroot=y: no collection for an image"
            return None
        log.info("collecting logs")
        self.running = self._start(ctx, collector_argv(ctx))
        self.started_at = now
        return None

    def _finish(self, ctx: Context, target: Any, now: float, log: Any) -> dict[str, Any]:
        assert self.running is not None
        result = self.running.wait(check=False)
        self.running = None
        self.due = now + self.period(ctx)
        seconds = round(now - self.started_at, 1)
        if result.returncode != 0:
            if result.returncode in (EXIT_MEMORY, -9, 137):
                self.disabled = f"collector exit status {result.returncode} (memory)"
                log.warning("log collection stopped over its memory limit: no more "
                            "collections until the agent restarts")
            else:
                log.warning("log collection failed (exit status %s): %s", result.returncode,
                            (result.stderr or result.stdout).strip()[-500:])
            return {"at": time.time(), "seconds": seconds,
                    "result": f"collector exit {result.returncode}"}
        from wire.errors import WireError

        archive = ctx.lib_dir / COLLECTOR_DIR / ARCHIVE
        try:
            size = self._send(ctx, target, archive)
        except (WireError, OSError) as err:
            log.warning("collected logs not uploaded: %s", err)
            return {"at": time.time(), "seconds": seconds, "result": f"upload failed: {err}"}
        log.info("logs collected in %.1f s and uploaded (%s b)", seconds, size)
        return {"at": time.time(), "seconds": seconds, "result": "uploaded", "bytes": size}

    def period(self, ctx: Context) -> float:
        return float(ctx.conf.number("Logs.CollectPeriod") or 3600)

    def stop(self) -> None:
        """The daemon stops: a collection still running is stopped too."""
        if self.running is not None:
            self.running.stop()
            self.running = None


def _start_collector(ctx: Context, argv: list[str]) -> Started:
    return ctx.run.start(argv, why="collect logs", timeout=COLLECT_TIMEOUT + 60)
