"""The launcher: `waagent -daemon` runs the newest good version of the agent.

Versions the daemon downloaded live beside each other in `<Lib.Dir>/waagent-graph-X/`
(graph/update.py installs them). The service always starts the installed agent, whose
first step is `hand_over`: unless `AutoUpdate.Enabled=n`, it takes the newest installed
version above its own that is not blacklisted and `exec`s it (same PID, so Pid.File,
`-start` and systemd's main PID stay right) with its directory first in `PYTHONPATH`;
otherwise it returns and the installed agent runs as the daemon itself. Nothing here
comes from a downloaded version: a broken one can crash, never replace the launcher.

Crashes. Each version's `error.json` lists its launches; the version's daemon marks its
launch ended when it exits on its own (SIGTERM, a switch to another version). A launch
that never ended is a crash. At the next start (systemd restarts the service), a version
with 3 crashes in the last 5 minutes is blacklisted, for good, and the launcher goes to
the next one down, in the end the installed agent: the rollback. waagent 2.7.3 keeps the
same file and the same rule (CHILD_LAUNCH_RESTART_MAX in CHILD_LAUNCH_INTERVAL).

A daemon that has installed a new version calls `relaunch`: it execs the launcher again,
with the environment the launcher started with, and the launcher chooses again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from graph.version import AGENT_NAME, AGENT_VERSION

if TYPE_CHECKING:
    from graph.context import Context

log = logging.getLogger("waagent.launcher")

RECORD_FILE = "error.json"
CRASHES = 3
CRASH_WINDOW = 5 * 60.0
KEEP_LAUNCHES = 10
# Set in a version the launcher started: how to run the launcher again (argv, the
# environment it had), the version's record and the installed version.
LAUNCHER_ENV = "WAAGENT_GRAPH_LAUNCHER"
RESTORED_ENV = ("PYTHONPATH", "PYTHONSAFEPATH")
_DIR = re.compile(rf"^{re.escape(AGENT_NAME)}-(\d+(?:\.\d+){{1,3}})$")


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


class Record(NamedTuple):
    """A version's `error.json`: its launches and whether it is blacklisted."""

    launches: tuple[dict[str, Any], ...] = ()
    blacklisted: dict[str, Any] | None = None

    def crashes(self, now: float) -> int:
        """Launches in the last CRASH_WINDOW that never ended."""
        return sum(1 for launch in self.launches
                   if launch.get("ended") is None and now - launch.get("at", 0) <= CRASH_WINDOW)


def version_dir(ctx: Context, version: str) -> Path:
    return ctx.lib_dir / f"{AGENT_NAME}-{version}"


def load_record(directory: Path) -> Record:
    try:
        data = json.loads((directory / RECORD_FILE).read_text())
    except FileNotFoundError:
        return Record()
    except (OSError, ValueError) as err:
        log.warning("%s unreadable (%s): starting it afresh", directory / RECORD_FILE, err)
        return Record()
    launches = tuple(item for item in data.get("launches", ()) if isinstance(item, dict))
    blacklisted = data.get("blacklisted")
    return Record(launches, blacklisted if isinstance(blacklisted, dict) else None)


def save_record(ctx: Context, directory: Path, record: Record) -> None:
    text = json.dumps({"launches": list(record.launches[-KEEP_LAUNCHES:]),
                       "blacklisted": record.blacklisted}, indent=1) + "\n"
    ctx.fs.write(directory / RECORD_FILE, text, mode=0o644, quiet=True,
                 why=f"launch record of {directory.name}")


def blacklist(ctx: Context, version: str, reason: str) -> None:
    """Never run this version again (its directory stays, so it is not downloaded again)."""
    directory = version_dir(ctx, version)
    record = load_record(directory)
    if record.blacklisted is None:
        log.warning("%s-%s blacklisted: %s", AGENT_NAME, version, reason)
        save_record(ctx, directory, record._replace(
            blacklisted={"at": time.time(), "reason": reason}))


def installed_versions(ctx: Context) -> dict[str, Record]:
    """Versions installed in Lib.Dir (a directory whose agent.json names its version)."""
    from graph.agent_package import MANIFEST_FILE, BadAgentPackage, parse_manifest

    found: dict[str, Record] = {}
    try:
        entries = list(ctx.lib_dir.iterdir())
    except FileNotFoundError:
        return found
    for entry in entries:
        match = _DIR.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            manifest = parse_manifest((entry / MANIFEST_FILE).read_bytes(), str(entry))
        except (OSError, BadAgentPackage):
            continue
        if manifest.version == match.group(1):
            found[manifest.version] = load_record(entry)
    return found


def pick(installed: dict[str, Record], base: str, now: float) -> tuple[str | None, list[str]]:
    """The version to run (None: the installed agent) and the versions that have just
    earned their blacklisting (CRASHES crashes within CRASH_WINDOW)."""
    to_blacklist = []
    for version in sorted(installed, key=version_key, reverse=True):
        record = installed[version]
        if version_key(version) <= version_key(base) or record.blacklisted is not None:
            continue
        if record.crashes(now) >= CRASHES:
            to_blacklist.append(version)
            continue
        return version, to_blacklist
    return None, to_blacklist


def hand_over(variables: dict[str, str]) -> None:
    """Exec the version to run, or return to run the installed agent (see the module)."""
    if os.environ.get(LAUNCHER_ENV):
        return  # this is a version the launcher started
    from graph.context import make_context
    from graph.loader import configure_logging

    try:
        ctx = make_context(variables)
        # Before anything is decided: which version runs and a blacklisting go to the
        # agent log, as the daemon's own lines do (no handler yet: they would be lost).
        configure_logging(ctx)
        if not ctx.conf.flag("AutoUpdate.Enabled") or _daemon_running(ctx):
            return
        now = time.time()
        version, failed = pick(installed_versions(ctx), AGENT_VERSION, now)
        for bad in failed:
            blacklist(ctx, bad, f"{CRASHES} crashes within {CRASH_WINDOW / 60:.0f} minutes")
    except Exception as err:  # noqa: BLE001 - whatever it is, the installed agent runs
        log.warning("launcher: %s; running the installed agent %s", err, AGENT_VERSION)
        return
    if version is not None:
        _exec_version(ctx, version, now)


def _daemon_running(ctx: Context) -> bool:
    """Another daemon holds Pid.File: the installed agent says so and stops."""
    try:
        fd = os.open(ctx.root / ctx.conf.required_path("Pid.File"),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _exec_version(ctx: Context, version: str, now: float) -> None:
    directory = version_dir(ctx, version)
    record = load_record(directory)
    launch = {"at": now, "pid": os.getpid(), "ended": None}
    save_record(ctx, directory, record._replace(launches=(*record.launches, launch)))
    launcher = {"argv": sys.orig_argv, "env": {k: os.environ.get(k) for k in RESTORED_ENV},
                "record": str(directory / RECORD_FILE), "base": AGENT_VERSION}
    # The version's directory first; the path the installed agent had stays after it for
    # the libraries (an agent installed with its dependencies beside it, as in /opt).
    path = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, LAUNCHER_ENV: json.dumps(launcher), "PYTHONPATH": path,
           # `python -m` would put the current directory first (a checkout's own code).
           "PYTHONSAFEPATH": "1"}
    argv = [sys.executable, "-m", "graph.cli", *sys.argv[1:]]
    log.info("launcher: running %s-%s from %s", AGENT_NAME, version,
             ctx.root.system_path(directory))
    _flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError as err:  # the launch stays unended: a crash of that version
        log.error("launcher: cannot run %s-%s (%s): running the installed agent %s",
                  AGENT_NAME, version, errno.errorcode.get(err.errno or 0, err), AGENT_VERSION)


def launched() -> dict[str, Any] | None:
    """What the launcher said to this version (None: this is the installed agent)."""
    given = os.environ.get(LAUNCHER_ENV)
    if not given:
        return None
    try:
        found = json.loads(given)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def base_version() -> str:
    """The installed agent's version: no version below it is ever run."""
    return str((launched() or {}).get("base") or AGENT_VERSION)


def record_clean_exit(ctx: Context) -> None:
    """This version's daemon ends on its own: its launch is no crash."""
    info = launched()
    if info is None or not info.get("record"):
        return
    directory = Path(info["record"]).parent
    record = load_record(directory)
    launches = [dict(launch) for launch in record.launches]
    mine = [launch for launch in launches
            if launch.get("pid") == os.getpid() and launch.get("ended") is None]
    if mine:
        mine[-1]["ended"] = time.time()
        save_record(ctx, directory, record._replace(launches=tuple(launches)))


def relaunch() -> NoReturn:
    """Exec the launcher again, as it was started, to run the version it now chooses."""
    info = launched()
    env = dict(os.environ)
    argv = list(sys.orig_argv)
    if info is not None:
        argv = list(info.get("argv") or argv)
        env.pop(LAUNCHER_ENV, None)
        for key, value in (info.get("env") or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
    log.info("restarting through the launcher")
    _flush()
    os.execve(sys.executable, argv, env)


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
