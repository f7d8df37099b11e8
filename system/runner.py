"""Runner: commands as argument lists, with a timeout, LC_ALL=C, secrets on stdin only.

`probe` runs read-only commands (also in plan mode); `change` runs commands that
change the machine, and in plan mode only records what it would have run.
In chroot mode (an offline image root) commands run inside the root; without it,
against a root that is not the running system, they are the host's tools, and a
command naming a program of the image (or chroot) is refused, and arguments naming
paths in the root are resolved inside it (DESIGN rule 8).
"""

import logging
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from system.errors import CommandFailed, UnsafeOperation
from system.redact import redact
from system.root import Root

log = logging.getLogger("waagent.run")

DEFAULT_TIMEOUT = 120.0
# Tools found here in any distro; the sandbox's PATH is not the host's.
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A command's whole environment: the tools' PATH, the C locale, and `extra`."""
    return {"PATH": os.environ.get("PATH", _PATH) + ":" + _PATH, "LC_ALL": "C", **(extra or {})}


class Result(NamedTuple):
    """What a command did."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float = 0.0
    planned: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class PlannedChange(NamedTuple):
    """A change the agent would make, recorded in plan mode."""

    kind: str  # "run", "write", "remove", "mkdir", "chmod", "chown", "move", "symlink"
    target: str
    why: str

    def __str__(self) -> str:
        return f"{self.kind} {self.target}  ({self.why})" if self.why else f"{self.kind} {self.target}"


class Runner:
    """Runs commands for the agent. One per process; tasks share it through the Context."""

    def __init__(
        self,
        root: Root | None = None,
        plan: bool = False,
        chroot: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        planned: list[PlannedChange] | None = None,
        child_seconds: float = 0.0,
    ) -> None:
        self.root = root if root is not None else Root()
        self.plan = plan
        self.chroot = chroot
        self.timeout = timeout
        self.planned: list[PlannedChange] = planned if planned is not None else []
        # Seconds spent inside child processes, for benchmarks that separate our own time.
        self.child_seconds = child_seconds
        # Changes made (or planned) so far, skips not counted: the run report tells a task
        # that changed something from one that ran and changed nothing.
        self.changes = 0

    def record(self, kind: str, target: str, why: str) -> None:
        """Note a change made (or, in plan mode, one that would be made)."""
        self.planned.append(PlannedChange(kind, redact(target), why))
        if kind != "skip":
            self.changes += 1

    def probe(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = False,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        """Run a read-only command: it runs in plan mode too."""
        return self._run(argv, timeout=timeout, check=check, stdin=input, env=env, cwd=None)

    def probe_pipe(
        self,
        first: Sequence[str],
        second: Sequence[str],
        *,
        input: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Run the read-only pipeline `first | second` (also in plan mode); `input` goes
        to the first. Its output goes straight into the second, never through the agent:
        binary data (a decrypted PKCS#12) stays off the disk and out of our memory.

        The second's output, both commands' stderr, and the first non-zero exit status
        (the first command's when both failed)."""
        full = [self._argv(first), self._argv(second)]
        child_env = _child_env()
        limit = timeout if timeout is not None else self.timeout
        started = time.monotonic()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs.append(subprocess.Popen(  # noqa: S603 - argv list, never a shell
                full[0], stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env))
            procs.append(subprocess.Popen(  # noqa: S603 - argv list, never a shell
                full[1], stdin=procs[0].stdout, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=child_env))
        except FileNotFoundError as err:
            for proc in procs:
                proc.kill()
                proc.communicate()
            raise CommandFailed(f"{err.filename}: command not found (needed to run: "
                                f"{self.show(first)} | {self.show(second)})", 127) from None
        head, tail = procs
        # The second command holds the pipe now; the first gets EPIPE if it ends early.
        assert head.stdout is not None
        head.stdout.close()
        head.stdout = None
        # The first is fed and drained on a thread of its own: fed from here, it could
        # block on a full pipe while the second waits for us to read its output.
        head_stderr: list[bytes] = []
        feeder = threading.Thread(target=lambda: head_stderr.append(head.communicate(
            input.encode() if input is not None else None)[1]), daemon=True)
        feeder.start()
        try:
            stdout, stderr = tail.communicate(timeout=max(0.0, started + limit - time.monotonic()))
            feeder.join(max(0.0, started + limit - time.monotonic()))
            if feeder.is_alive():
                raise subprocess.TimeoutExpired(full[0], limit)
        except subprocess.TimeoutExpired:
            for proc in procs:
                proc.kill()
            tail.communicate()
            feeder.join()
            raise CommandFailed(f"{self.show(first)} | {self.show(second)}: timed out after "
                                f"{limit:.0f} s") from None
        finally:
            self.child_seconds += time.monotonic() - started
        returncode = head.returncode or tail.returncode
        errors = b"".join(head_stderr) + stderr
        return Result((*full[0], "|", *full[1]), returncode,
                      stdout.decode(errors="replace"), errors.decode(errors="replace"),
                      time.monotonic() - started)

    def change(
        self,
        argv: Sequence[str],
        *,
        why: str,
        timeout: float | None = None,
        check: bool = True,
        secret_input: str | None = None,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Result:
        """Run a command that changes the machine; in plan mode record it and return success.

        `secret_input` goes to stdin and is never logged; `input` is ordinary stdin.
        """
        shown = self.show(argv)
        self.record("run", shown, why)
        if self.plan:
            return Result(tuple(argv), 0, "", "", planned=True)
        log.debug("run: %s (%s)", shown, why)
        stdin = secret_input if secret_input is not None else input
        return self._run(argv, timeout=timeout, check=check, stdin=stdin, env=env, cwd=cwd)

    @property
    def is_live(self) -> bool:
        """True when commands act on the running system: the host root, or a chroot
        (image builders) where the command itself stays inside the root."""
        return self.root.is_host

    def live(
        self,
        argv: Sequence[str],
        *,
        why: str,
        timeout: float | None = None,
        check: bool = True,
    ) -> Result | None:
        """A change to the running system (a service, the kernel hostname, a DHCP renew).

        Against another root (a sandbox or a mounted image) it would act on the host
        instead, so it is recorded as skipped and None is returned.
        """
        if not self.is_live:
            self.record("skip", self.show(argv), f"{why}; root {self.root.base} is not the "
                        "running system")
            log.info("skipped: %s (%s; not the running system)", self.show(argv), why)
            return None
        return self.change(argv, why=why, timeout=timeout, check=check)

    def show(self, argv: Sequence[str]) -> str:
        """The command as a redacted shell-quoted line, for logs and plans."""
        import shlex  # only runs that run something show commands

        return redact(shlex.join(self._argv(argv)))

    def _argv(self, argv: Sequence[str]) -> list[str]:
        if self.root.is_host:
            return list(argv)
        if self.chroot:
            return ["chroot", str(self.root.base), *argv]
        self._refuse_image_program(argv)
        return [self._inside_root(arg) for arg in argv]

    def _inside_root(self, arg: str) -> str:
        """An argument naming a path in the root, as a chroot would see it: the host's tool
        would follow the image's links as the host sees them (an absolute link to the
        host's /etc), so they are resolved inside the root first; one that leads out of
        the root is refused (PathEscapesRoot)."""
        base = str(self.root.base)
        if arg == base or arg.startswith(base + "/"):
            return str(self.root.contain(arg, follow=True))
        return arg

    def _refuse_image_program(self, argv: Sequence[str]) -> None:
        """Without chroot=y no program of the image runs (rule 8): the image is untrusted
        and the agent runs as root on the build host. Its commands are the host's tools,
        given the root's files as arguments."""
        program = argv[0] if argv else ""
        base = str(self.root.base)
        inside = os.path.abspath(program) == base or os.path.abspath(program).startswith(
            base + "/") if "/" in program else False
        if inside or os.path.basename(program) == "chroot":
            raise UnsafeOperation(
                f"refusing to run {program!r}: it runs a program of the image {base}, and "
                "without chroot=y no program of the image runs (it would run as root on "
                "this host); use the host's tool, or run with chroot=y to use the image's")

    def start(
        self,
        argv: Sequence[str],
        *,
        why: str,
        timeout: float | None = None,
    ) -> "Started":
        """Start a command that changes the machine and return at once; `wait()` on the
        result gives its Result (raising CommandFailed as `change` does). In plan mode it
        is recorded and not run. For work that overlaps the agent's own (key generation)."""
        shown = self.show(argv)
        self.record("run", shown, why)
        if self.plan:
            return Started(self, argv, Result(tuple(argv), 0, "", "", planned=True))
        log.debug("start: %s (%s)", shown, why)
        return self._spawn(argv, timeout=timeout, stdin=None, env=None, cwd=None)

    def _run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None,
        check: bool,
        stdin: str | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
    ) -> Result:
        return self._spawn(argv, timeout=timeout, stdin=stdin, env=env, cwd=cwd).wait(
            check=check)

    def _spawn(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None,
        stdin: str | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
    ) -> "Started":
        full = self._argv(argv)
        child_env = _child_env(env)
        limit = timeout if timeout is not None else self.timeout
        started = time.monotonic()
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv list, never a shell
                full,
                stdin=subprocess.PIPE if stdin is not None else None,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=child_env,
                cwd=cwd,
            )
        except FileNotFoundError:
            raise CommandFailed(f"{full[0]}: command not found (needed to run: {self.show(argv)})",
                                127) from None
        finally:
            self.child_seconds += time.monotonic() - started
        return Started(self, argv, proc=proc, stdin=stdin, started=started, limit=limit)


class Started:
    """A command running (or, in plan mode, recorded): `wait()` gives its Result."""

    def __init__(self, runner: Runner, argv: Sequence[str], result: Result | None = None, *,
                 proc: subprocess.Popen[str] | None = None, stdin: str | None = None,
                 started: float = 0.0, limit: float = 0.0) -> None:
        self._runner = runner
        self._argv = argv
        self._result = result
        self._proc = proc
        self._stdin = stdin
        self._started = started
        self._limit = limit

    def done(self) -> bool:
        """True once the command has ended (at once in plan mode)."""
        return self._result is not None or self._proc is None or self._proc.poll() is not None

    def stop(self) -> None:
        """Kill the command and reap it: its work is no longer wanted."""
        proc = self._proc
        if proc is None or self._result is not None:
            return
        proc.kill()
        stdout, stderr = proc.communicate()
        self._result = Result(tuple(proc.args), proc.returncode,  # type: ignore[arg-type]
                              stdout, stderr, time.monotonic() - self._started)

    def wait(self, *, check: bool = True) -> Result:
        """Wait for the command (killing it at its timeout); CommandFailed when `check` and
        it failed."""
        if self._result is None:
            self._result = self._collect()
        result = self._result
        if check and not result.ok:
            detail = redact((result.stderr or result.stdout).strip())[-2000:]
            raise CommandFailed(
                f"{self._runner.show(self._argv)} failed with exit status {result.returncode}: "
                f"{detail}", result.returncode, detail)
        return result

    def _collect(self) -> Result:
        proc = self._proc
        assert proc is not None
        waited = time.monotonic()
        try:
            remaining = max(0.0, self._started + self._limit - waited)
            stdout, stderr = proc.communicate(self._stdin, timeout=remaining)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise CommandFailed(f"{self._runner.show(self._argv)}: timed out after "
                                f"{self._limit:.0f} s") from None
        finally:
            self._runner.child_seconds += time.monotonic() - waited
        return Result(tuple(proc.args), proc.returncode, stdout, stderr,  # type: ignore[arg-type]
                      time.monotonic() - self._started)
