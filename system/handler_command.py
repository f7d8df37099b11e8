"""One extension handler command (install, enable, ...), run as waagent 2.7.3 runs it.

PLATFORM.md section 8: the manifest's command line (a leading `/` stripped) runs from the
handler directory through `/bin/sh -c`. That is the one shell string the agent runs: the
manifest's command is a shell command line by contract (handlers write `bin/run.sh
-enable` or `python3 main.py enable`), it comes from the handler package the platform
chose, not from anything the agent builds, and waagent runs it the same way.

How it runs:
- in its own session and process group; on timeout SIGKILL goes to the whole group, so a
  command that forked workers leaves nothing behind (a daemon that left the group on
  purpose, with setsid, is the handler's own);
- stdout and stderr go to anonymous files in the handler's log directory, never pipes:
  handlers start daemons that keep their output open, and a pipe would block until those
  end. A tail of both (3,200 characters, waagent's format_stdout_stderr) is kept for the
  status message;
- the environment is the caller's `env` over a clean base (PATH as systemd gives
  services), not the agent's own: waagent passes its whole environment, which under
  systemd is little more than PATH, and nothing of the agent's (conf, proxies, test
  variables) should leak into handlers;
- `CommandExecution.log` in the log directory gets waagent's lines ("Executing command:
  ... with environment variables: {...}", then "Command: ..." and the output), its head
  cut at 10 MB as waagent does;
- confinement: where systemd runs (PID 1 has `/run/systemd/system` on the host root) the
  command runs in its own scope, `systemd-run --unit=<operation>_<uuid>.scope --scope
  --slice=azure-vmextensions-<handler>.slice` with CPUQuota and MemoryMax from the
  manifest's resourceLimits; if systemd-run itself fails (no scope was started), the
  command runs again without it, as waagent does. Without systemd, when cgroup v2 is
  mounted and writable at `<root>/sys/fs/cgroup` (`cgroup.controllers` there), the command
  is moved into `<cgroup fs>/azure-vmextensions/<handler>` before it executes, with cpu.max
  and memory.max written for the controllers that fs offers. Otherwise it runs without
  limits, and the log says why.

resourceLimits fields (waagent 2.7.3 reads `cpuQuota` and `memoryQuota` and does not
apply them yet): `cpuQuota` or `cpuQuotaPercentage` is a percentage of one CPU (systemd's
CPUQuota, "50" or "50%"), `memoryQuota` or `memoryQuotaInMB` megabytes.

root= is a jail: against a root that is not the running system the command runs only
with chroot=y, inside the root (`chroot <root> /bin/sh -c ...`); without it, it is
recorded as skipped, as custom data is. In plan mode it is only recorded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

from system.errors import CommandFailed
from system.redact import redact
from system.root import Root
from system.runner import Runner

log = logging.getLogger("waagent.extensions")

SHELL = "/bin/sh"
# What systemd gives a service: the agent's own environment is not passed on.
BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
TAIL_CHARS = 3200  # waagent's TELEMETRY_MESSAGE_MAX_LEN
_OUTPUT_TEMPLATE = "[stdout]\n{0}\n\n[stderr]\n{1}"
EXECUTION_LOG = "CommandExecution.log"
EXECUTION_LOG_MAX_BYTES = 10 * 1024 * 1024
SLICE_PREFIX = "azure-vmextensions"
CGROUP_FS = "/sys/fs/cgroup"
CPU_PERIOD_US = 100_000


class CommandResult(NamedTuple):
    """What a handler command did. `exit_code` is None when it timed out or did not run;
    `skipped` says why it did not run (plan mode, a root that is not the running system),
    None when it ran."""

    exit_code: int | None
    timed_out: bool
    output_tail: str
    seconds: float
    skipped: str | None = None


class ResourceLimits(NamedTuple):
    """The limits applied to a handler's commands (None: no limit)."""

    cpu_percent: float | None = None
    memory_mb: int | None = None


def parse_resource_limits(raw: Mapping[str, Any] | None) -> ResourceLimits:
    """The limits in a manifest's `resourceLimits` (values that are not positive numbers
    are ignored, with a warning: a limit must never stop a handler from running)."""
    if not raw:
        return ResourceLimits()

    def number(keys: Sequence[str], suffixes: Sequence[str]) -> float | None:
        for key in keys:
            value = raw.get(key)
            if value is None:
                continue
            text = str(value).strip()
            for suffix in suffixes:
                if text.upper().endswith(suffix):
                    text = text[:-len(suffix)].strip()
            try:
                parsed = float(text)
            except ValueError:
                parsed = -1.0
            if isinstance(value, bool) or not parsed > 0:
                log.warning("resourceLimits.%s=%r is not a positive number: ignored", key,
                            value)
                return None
            return parsed
        return None

    cpu = number(("cpuQuota", "cpuQuotaPercentage"), ("%",))
    memory = number(("memoryQuota", "memoryQuotaInMB"), ("MB", "M"))
    return ResourceLimits(cpu, None if memory is None else max(1, int(memory)))


def format_output(stdout: str, stderr: str, max_len: int = TAIL_CHARS) -> str:
    """stdout and stderr in waagent's status format, at most `max_len` characters: the
    end of each, a stream that needs less leaving its room to the other."""
    each = (max_len - len(_OUTPUT_TEMPLATE) + 6) // 2
    if each <= 0:
        return ""
    if len(stdout) + len(stderr) < max_len:
        return _OUTPUT_TEMPLATE.format(stdout, stderr)
    if len(stdout) < each:
        return _OUTPUT_TEMPLATE.format(stdout, stderr[-min(each * 2 - len(stdout),
                                                           len(stderr)):])
    if len(stderr) < each:
        return _OUTPUT_TEMPLATE.format(stdout[-min(each * 2 - len(stderr), len(stdout)):],
                                       stderr)
    return _OUTPUT_TEMPLATE.format(stdout[-each:], stderr[-each:])


def _tail(handle: IO[bytes], chars: int = TAIL_CHARS) -> str:
    """The last `chars` characters of an output file (invalid UTF-8 escaped, as waagent)."""
    size = os.fstat(handle.fileno()).st_size
    handle.seek(max(0, size - 4 * chars))
    return handle.read().decode("utf-8", errors="backslashreplace")[-chars:]


def slice_name(handler: str) -> str:
    """waagent's slice for a handler: `-` separates slice levels, so it becomes `_`."""
    return f"{SLICE_PREFIX}-{handler.replace('-', '_')}.slice"


def systemd_run_argv(argv: Sequence[str], *, unit: str, handler: str,
                     limits: ResourceLimits) -> list[str]:
    """`argv` in its own transient scope `unit`, in the handler's slice, with its limits."""
    full = ["systemd-run", f"--unit={unit}", "--scope", f"--slice={slice_name(handler)}"]
    if limits.cpu_percent is not None:
        full.append(f"--property=CPUQuota={limits.cpu_percent:g}%")
    if limits.memory_mb is not None:
        full.append(f"--property=MemoryMax={limits.memory_mb}M")
    return [*full, *argv]


def _systemd_runs(root: Root) -> bool:
    """sd_booted(): systemd manages the running system (only the host root counts)."""
    return root.is_host and (root / "run/systemd/system").is_dir() and shutil.which(
        "systemd-run") is not None


# How commands are confined is decided once per agent process, not before every command
# (systemd does not come or go under a running agent, nor does the cgroup fs): the answer
# for a root, and the cgroup prepared for each handler and its limits. A group that
# refused a child, or is gone, is prepared again.
_SYSTEMD: dict[str, bool] = {}
_GROUPS: dict[tuple[str, str, str, str, ResourceLimits], Path | None] = {}


def _systemd_runs_once(root: Root) -> bool:
    key = str(root.base)
    if key not in _SYSTEMD:
        _SYSTEMD[key] = _systemd_runs(root)
    return _SYSTEMD[key]


def _cgroup_once(root: Root, handler: str, limits: ResourceLimits, *, cgroup_fs: str,
                 parent: str) -> Path | None:
    key = (str(root.base), cgroup_fs, parent, handler, limits)
    if key in _GROUPS:
        group = _GROUPS[key]
        if group is None or group.is_dir():
            return group
    group = _GROUPS[key] = prepare_cgroup(root, handler, limits, cgroup_fs=cgroup_fs,
                                          parent=parent)
    return group


def prepare_cgroup(root: Root, handler: str, limits: ResourceLimits, *,
                   cgroup_fs: str = CGROUP_FS, parent: str = SLICE_PREFIX) -> Path | None:
    """The handler's cgroup v2 directory, made with its limits, or None (logged) when
    cgroup v2 is not mounted or not writable at `cgroup_fs` in the root.

    cgroup files are written in place (a cgroup fs has no temporary files or renames),
    and only for the controllers the fs offers: a limit it cannot hold is logged."""
    top = root.follow(cgroup_fs)
    if not (top / "cgroup.controllers").is_file():
        log.info("%s: no cgroup v2 at %s: running without resource limits", handler,
                 cgroup_fs)
        return None
    if not os.access(top, os.W_OK):
        log.info("%s: cgroup v2 at %s is not writable: running without resource limits",
                 handler, cgroup_fs)
        return None
    if "/" in handler or handler in ("", ".", "..") or "/" in parent:
        log.warning("%r is not a cgroup name: running without resource limits", handler)
        return None
    group = root.contain(top / parent / handler)
    try:
        group.mkdir(parents=True, exist_ok=True)
        available = (top / "cgroup.controllers").read_text().split()
        wanted = [name for name, limit in (("cpu", limits.cpu_percent),
                                           ("memory", limits.memory_mb)) if limit is not None]
        for name in wanted:
            if name not in available:
                log.warning("%s: the %s controller is not available in %s: its limit is "
                            "not applied", handler, name, cgroup_fs)
        enable = " ".join(f"+{name}" for name in wanted if name in available)
        if enable:
            for level in (top, top / parent):
                _write_cgroup_file(level / "cgroup.subtree_control", enable)
            if limits.cpu_percent is not None and "cpu" in available:
                quota = max(1000, int(limits.cpu_percent * CPU_PERIOD_US / 100))
                _write_cgroup_file(group / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            if limits.memory_mb is not None and "memory" in available:
                _write_cgroup_file(group / "memory.max", str(limits.memory_mb * 1024 * 1024))
    except OSError as err:
        log.warning("%s: cannot set up the cgroup %s (%s): limits not applied", handler,
                    root.system_path(group), err.strerror or err)
    return group


def _write_cgroup_file(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _joiner(group: Path) -> Callable[[], None]:
    """A preexec step moving the child into `group` before it executes the command, so
    that everything it forks is born there. Plain os calls only: it runs between fork and
    exec."""
    procs = os.fsencode(group / "cgroup.procs")

    def join() -> None:
        fd = os.open(procs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)

    return join


def _execution_log_line(handler: str, message: str) -> bytes:
    """A line of CommandExecution.log in waagent's logger format (ASCII, escaped)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{stamp} INFO ExtHandler [{handler}] {redact(message)}\n".encode(
        "ascii", errors="backslashreplace")


def _truncate_head(path: Path, max_bytes: int) -> None:
    """Keep the last `max_bytes` of the log, from a line start (waagent's
    __truncate_file_head)."""
    try:
        if path.stat().st_size <= max_bytes:
            return
        with open(path, "rb") as old:
            old.seek(-max_bytes, os.SEEK_END)
            old.readline()
            rest = old.read()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(rest)
        os.replace(tmp, path)
    except FileNotFoundError:
        return


def run_handler_command(
    runner: Runner,
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    log_dir: Path,
    handler: str,
    operation: str,
    resource_limits: Mapping[str, Any] | None = None,
    log_name: str = EXECUTION_LOG,
    cgroup_fs: str = CGROUP_FS,
    cgroup_parent: str = SLICE_PREFIX,
    use_systemd: bool | None = None,
    max_log_bytes: int = EXECUTION_LOG_MAX_BYTES,
) -> CommandResult:
    """Run a manifest's `command` for `operation` from the handler directory `cwd`.

    `cwd` and `log_dir` are real paths below the runner's root (`<Lib.Dir>/<Name>-<Ver>`
    and `/var/log/azure/<Name>`); `handler` is waagent's full name, `<Name>-<Version>`
    (multi-config `<Name>.<Ext>-<Version>`): the log prefix and the cgroup's name.
    `log_name` is `CommandExecution_<ext>.log` for multi-config. `use_systemd` None
    decides by the system; False never uses systemd-run. A command that cannot be started
    at all raises CommandFailed; its exit status, output and timeout are in the result.
    """
    root = runner.root
    real_cwd = root.contain(cwd, follow=True)
    inside_cwd = root.system_path(real_cwd)
    full_command = f"{inside_cwd.rstrip('/')}/{command.lstrip('/')}"
    why = f"{operation} of the extension handler {handler}"
    if runner.plan:
        runner.record("run", full_command, why)
        return CommandResult(0, False, "", 0.0, skipped="plan mode")
    if not (root.is_host or runner.chroot):
        reason = (f"root {root.base} is not the running system: handler commands run only "
                  "on the VM itself or in its chroot (chroot=y)")
        runner.record("skip", full_command, f"{why}; {reason}")
        log.info("skipped: %s (%s)", full_command, reason)
        return CommandResult(None, False, "", 0.0, skipped=reason)
    runner.record("run", full_command, why)

    if root.is_host:
        argv = [SHELL, "-c", full_command]
    else:
        # chroot(8) starts in the root's `/`: the shell changes to the handler directory.
        argv = ["chroot", str(root.base), SHELL, "-c", 'cd -- "$1" && exec /bin/sh -c "$2"',
                "sh", inside_cwd, full_command]
    limits = parse_resource_limits(resource_limits)
    real_log_dir = root.contain(log_dir, follow=True)
    real_log_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    execution_log = real_log_dir / log_name
    _truncate_head(execution_log, max_log_bytes)
    child_env = {**BASE_ENV, **env}
    # Open once for the command's two lines; flushed before it starts, so an agent killed
    # meanwhile leaves the "Executing" line.
    with open(execution_log, "ab") as exec_log:
        exec_log.write(_execution_log_line(
            handler, f"Executing command: {full_command} with environment variables: "
                     f"{json.dumps(dict(env))}"))
        exec_log.flush()
        result = _confined_run(argv, real_cwd, child_env, timeout, real_log_dir, runner,
                               handler=handler, operation=operation, limits=limits,
                               use_systemd=use_systemd, cgroup_fs=cgroup_fs,
                               cgroup_parent=cgroup_parent)
        lines = [line for line in result.output_tail.split("\n") if line != ""]
        exec_log.write(_execution_log_line(handler, "\n".join([f"Command: {command}",
                                                               *lines])))
    if result.timed_out:
        log.warning("%s: %s timed out after %.0f s: its process group was killed", handler,
                    operation, timeout)
    else:
        log.info("%s: %s exited with status %s after %.1f s", handler, operation,
                 result.exit_code, result.seconds)
    return result


def _confined_run(argv: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float,
                  output_dir: Path, runner: Runner, *, handler: str, operation: str,
                  limits: ResourceLimits, use_systemd: bool | None, cgroup_fs: str,
                  cgroup_parent: str) -> CommandResult:
    """Run in a systemd scope, else in the handler's cgroup, else unconfined: the first
    that can start the command."""
    systemd = _systemd_runs_once(runner.root) if use_systemd is None else use_systemd
    if systemd:
        unit = f"{operation}_{uuid.uuid4()}.scope"
        result = _run(systemd_run_argv(argv, unit=unit, handler=handler, limits=limits),
                      cwd, env, timeout, output_dir, None, runner, scope=unit)
        if result is not None:
            return result
        log.warning("%s: systemd-run could not start the scope %s: running %s without "
                    "it", handler, unit, operation)
    group = _cgroup_once(runner.root, handler, limits, cgroup_fs=cgroup_fs,
                         parent=cgroup_parent)
    result = _run(argv, cwd, env, timeout, output_dir, group, runner)
    if result is None:  # the move into the cgroup failed: run unconfined
        _GROUPS.clear()  # and look at the cgroup fs again next time
        result = _run(argv, cwd, env, timeout, output_dir, None, runner)
    assert result is not None
    return result


def _run(argv: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float,
         output_dir: Path, group: Path | None, runner: Runner, *,
         scope: str | None = None) -> CommandResult | None:
    """Run once. None when the confinement failed before the command ran: the preexec
    move into `group`, or systemd-run without its scope (`scope` never named on stderr)."""
    started = time.monotonic()
    with open_output(output_dir) as stdout, open_output(output_dir) as stderr:
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv list; the shell line is the manifest's
                list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=cwd,
                env=dict(env), start_new_session=True,
                preexec_fn=_joiner(group) if group is not None else None)
        except subprocess.SubprocessError as err:
            log.warning("cannot move the command into the cgroup %s (%s): running it "
                        "without limits", group, err)
            return None
        except OSError as err:
            raise CommandFailed(f"cannot start {argv[0]} to run {argv[-1]!r}: "
                                f"{err.strerror}; install it or check the handler "
                                "directory", 127) from None
        timed_out = False
        try:
            exit_code: int | None = wait_exit(proc, timeout)
        except subprocess.TimeoutExpired:
            timed_out, exit_code = True, None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
            proc.wait()
        seconds = time.monotonic() - started
        runner.child_seconds += seconds
        out, err_text = _tail(stdout), _tail(stderr)
        stderr.seek(0)
        err_head = stderr.read(4 * TAIL_CHARS).decode("utf-8", errors="replace")
    # systemd-run names the scope on stderr once it started it (waagent's
    # _is_systemd_failure): a failure without that line is systemd-run's own.
    if scope is not None and exit_code != 0 and scope not in err_head:
        return None
    return CommandResult(exit_code, timed_out, format_output(out, err_text), seconds)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """The command's exit status as soon as it ends; TimeoutExpired after `timeout` s.

    Popen.wait(timeout=) polls with sleeps that double up to 50 ms, which delays the end of
    every short command (bench/README.md has the figures): a pidfd becomes readable when
    the process exits, so the wait ends with it."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # kernels before 5.3
        return proc.wait(timeout=timeout)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(max(0, int(timeout * 1000))):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()


def open_output(directory: Path) -> IO[bytes]:
    """An anonymous file for a command's output, in `directory` (gone when closed)."""
    return tempfile.TemporaryFile(dir=directory, mode="w+b")
