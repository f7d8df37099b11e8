"""system/handler_command.py: handler commands run as waagent runs them, on the host root
in a temporary handler directory (no root needed). Cgroup files are plain directories the
test builds; the real cgroup v2 and chroot runs are in tests/integration."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from system.handler_command import (
    BASE_ENV,
    TAIL_CHARS,
    CommandResult,
    ResourceLimits,
    format_output,
    parse_resource_limits,
    run_handler_command,
    slice_name,
    systemd_run_argv,
)
from system.root import Root
from system.runner import Runner

HANDLER = "Test.Handler-1.0"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z INFO ExtHandler "
                      r"\[Test\.Handler-1\.0\] ")


class Handler:
    """A handler directory with scripts, and a log directory beside it."""

    def __init__(self, top: Path) -> None:
        self.dir = top / "lib" / HANDLER
        self.log_dir = top / "log" / "Test.Handler"
        self.cgroup_fs = top / "no-cgroup"  # no cgroup v2 unless a test builds one
        self.dir.mkdir(parents=True)

    def script(self, name: str, body: str) -> None:
        path = self.dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)

    def run(self, command: str, *, runner: Runner | None = None, timeout: float = 30,
            env: dict[str, str] | None = None, **kwargs: object) -> CommandResult:
        return run_handler_command(
            runner or Runner(Root("/")), command, cwd=self.dir, env=env or {},
            timeout=timeout, log_dir=self.log_dir, handler=HANDLER, operation="enable",
            use_systemd=kwargs.pop("use_systemd", False),
            cgroup_fs=str(kwargs.pop("cgroup_fs", self.cgroup_fs)), **kwargs)  # type: ignore[arg-type]

    @property
    def execution_log(self) -> str:
        return (self.log_dir / "CommandExecution.log").read_text()


@pytest.fixture
def handler(tmp_path: Path) -> Handler:
    return Handler(tmp_path)


# A script's process group (field 5 of /proc/PID/stat): the outer shell's pid.
PGID = "cut -d' ' -f5 /proc/$$/stat"


def live_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies do not count)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def test_exit_codes_and_output(handler: Handler) -> None:
    handler.script("exit.sh", 'echo "out $1"; echo "err $1" >&2; exit "$1"\n')
    ok = handler.run("exit.sh 0")
    assert (ok.exit_code, ok.timed_out, ok.skipped) == (0, False, None)
    assert ok.output_tail == "[stdout]\nout 0\n\n\n[stderr]\nerr 0\n"
    failed = handler.run("/exit.sh 7")  # a leading / is the handler directory's
    assert failed.exit_code == 7 and "err 7" in failed.output_tail
    missing = handler.run("absent.sh")
    assert missing.exit_code == 127 and "absent.sh" in missing.output_tail


def test_output_tail_is_capped_in_waagents_format(handler: Handler) -> None:
    handler.script("noisy.sh", "i=0; while [ $i -lt 500 ]; do echo line-$i; i=$((i+1)); "
                               "done; echo short >&2\n")
    result = handler.run("noisy.sh")
    assert len(result.output_tail) <= TAIL_CHARS
    assert result.output_tail.startswith("[stdout]\n")
    assert result.output_tail.endswith("line-499\n\n\n[stderr]\nshort\n")  # the end is kept


def test_format_output_as_waagent() -> None:
    assert format_output("a", "b") == "[stdout]\na\n\n[stderr]\nb"
    each = (TAIL_CHARS - 26 + 6) // 2  # waagent's max_len_each
    both = format_output("o" * 5000, "e" * 5000)
    assert both == f"[stdout]\n{'o' * each}\n\n[stderr]\n{'e' * each}"
    # A short stream leaves its room to the other.
    short = format_output("x" * 10, "0123456789" * 500)
    assert short.endswith("0123456789") and len(short) <= TAIL_CHARS
    assert short.count("x") == 10


def test_execution_log_lines(handler: Handler) -> None:
    handler.script("hello.sh", "echo hello\necho\necho oops >&2\n")
    handler.run("hello.sh -enable", env={"ConfigSequenceNumber": "3"})
    lines = handler.execution_log.splitlines()
    assert LOG_LINE.match(lines[0])
    assert lines[0].endswith(f"Executing command: {handler.dir}/hello.sh -enable with "
                             'environment variables: {"ConfigSequenceNumber": "3"}')
    assert LOG_LINE.match(lines[1]) and lines[1].endswith("Command: hello.sh -enable")
    # Empty lines are dropped, as waagent does.
    assert lines[2:] == ["[stdout]", "hello", "[stderr]", "oops"]
    handler.run("hello.sh -enable")
    assert len(handler.execution_log.splitlines()) == 12  # appended


def test_execution_log_head_is_cut(handler: Handler) -> None:
    handler.log_dir.mkdir(parents=True)
    (handler.log_dir / "CommandExecution.log").write_text("old line\n" * 1000)
    handler.script("a.sh", "true\n")
    handler.run("a.sh", max_log_bytes=100)
    text = handler.execution_log
    assert text.count("old line") <= 11 and "Executing command" in text


def test_environment_is_exactly_the_callers_over_a_clean_base(
        handler: Handler, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAAGENT_AGENT_ONLY", "leak")
    handler.script("env.sh", "env > env.txt\npwd > pwd.txt\n")
    env = {"AZURE_GUEST_AGENT_EXTENSION_PATH": str(handler.dir),
           "ConfigSequenceNumber": "0", "Quoted": "a b 'c' $HOME"}
    assert handler.run("env.sh", env=env).exit_code == 0
    seen = dict(line.split("=", 1) for line in
                (handler.dir / "env.txt").read_text().splitlines())
    shell_own = {"PWD", "OLDPWD", "SHLVL", "_"}
    assert {k: v for k, v in seen.items() if k not in shell_own} == {**BASE_ENV, **env}
    assert (handler.dir / "pwd.txt").read_text().strip() == str(handler.dir)


def test_timeout_kills_the_whole_process_group(handler: Handler) -> None:
    handler.script("hang.sh", f"{PGID} > pgid\nsleep 300 &\nsleep 301 &\nsleep 302\n")
    started = time.monotonic()
    result = handler.run("hang.sh", timeout=1)
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 10
    pgid = int((handler.dir / "pgid").read_text())
    assert pgid > 1
    deadline = time.monotonic() + 5
    while live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_members(pgid) == []
    assert "Command: hang.sh" in handler.execution_log


def test_a_daemon_left_behind_does_not_block(handler: Handler) -> None:
    # The daemon keeps the command's stdout and stderr open: with pipes, this would wait.
    handler.script("daemon.sh", f"{PGID} > pgid\nsleep 300 &\necho started\n")
    started = time.monotonic()
    result = handler.run("daemon.sh", timeout=60)
    try:
        assert result.exit_code == 0 and "started" in result.output_tail
        assert time.monotonic() - started < 10
    finally:
        os.killpg(int((handler.dir / "pgid").read_text()), signal.SIGKILL)


def test_plan_mode_only_records(handler: Handler) -> None:
    runner = Runner(Root("/"), plan=True)
    handler.script("a.sh", "touch ran\n")
    result = handler.run("a.sh -install", runner=runner)
    assert result.skipped == "plan mode" and not (handler.dir / "ran").exists()
    assert not handler.log_dir.exists()
    assert [(c.kind, c.target) for c in runner.planned] == [
        ("run", f"{handler.dir}/a.sh -install")]


def test_another_root_without_chroot_records_a_skip(tmp_path: Path) -> None:
    root = tmp_path / "vm"
    handler = Handler(root)
    handler.script("a.sh", "touch ran\n")
    runner = Runner(Root(root))
    result = handler.run("a.sh", runner=runner)
    assert result.exit_code is None and result.skipped is not None
    assert "chroot=y" in result.skipped and not (handler.dir / "ran").exists()
    assert runner.planned[0].kind == "skip"
    assert runner.planned[0].target == f"/lib/{HANDLER}/a.sh"


def build_cgroup_fs(top: Path, controllers: str) -> Path:
    """A cgroup v2 root as plain files: what the agent reads and writes there."""
    top.mkdir(parents=True)
    (top / "cgroup.controllers").write_text(controllers + "\n")
    (top / "cgroup.subtree_control").write_text("")
    return top


def test_cgroup_v2_limits_and_the_child_moved_in(handler: Handler, tmp_path: Path) -> None:
    cgroup_fs = build_cgroup_fs(tmp_path / "cgroup", "cpuset cpu io memory pids")
    # The outer `sh -c` is the process moved in; the script is its child.
    handler.script("pid.sh", "echo $PPID > ppid\n")
    result = handler.run("pid.sh", cgroup_fs=cgroup_fs,
                         resource_limits={"cpuQuota": 50, "memoryQuota": 256})
    assert result.exit_code == 0
    group = cgroup_fs / "azure-vmextensions" / HANDLER
    assert (group / "cpu.max").read_text() == "50000 100000"
    assert (group / "memory.max").read_text() == str(256 * 1024 * 1024)
    assert (cgroup_fs / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (cgroup_fs / "azure-vmextensions" / "cgroup.subtree_control").read_text() == \
        "+cpu +memory"
    # The child wrote itself in before it executed the shell: same pid.
    assert (group / "cgroup.procs").read_text() == (handler.dir / "ppid").read_text().strip()


def test_cgroup_v2_without_the_controllers(handler: Handler, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    cgroup_fs = build_cgroup_fs(tmp_path / "cgroup", "pids")
    handler.script("a.sh", "true\n")
    result = handler.run("a.sh", cgroup_fs=cgroup_fs, resource_limits={"cpuQuota": "5%"})
    group = cgroup_fs / "azure-vmextensions" / HANDLER
    assert result.exit_code == 0 and (group / "cgroup.procs").exists()
    assert not (group / "cpu.max").exists()
    assert "the cpu controller is not available" in caplog.text


def test_no_cgroup_v2_runs_without_limits(handler: Handler,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    handler.script("a.sh", "true\n")
    assert handler.run("a.sh", resource_limits={"cpuQuota": 5}).exit_code == 0
    assert "no cgroup v2" in caplog.text


def test_a_cgroup_that_refuses_the_child_runs_it_unconfined(
        handler: Handler, tmp_path: Path) -> None:
    cgroup_fs = build_cgroup_fs(tmp_path / "cgroup", "cpu")
    group = cgroup_fs / "azure-vmextensions" / HANDLER
    group.mkdir(parents=True)
    (group / "cgroup.procs").mkdir()  # writing the pid fails
    handler.script("a.sh", "echo ran\n")
    result = handler.run("a.sh", cgroup_fs=cgroup_fs)
    assert result.exit_code == 0 and "ran" in result.output_tail



def test_the_cgroup_is_prepared_once_per_handler(handler: Handler, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import system.handler_command as hc

    prepared: list[str] = []
    real = hc.prepare_cgroup

    def counting(*args: object, **kwargs: object) -> Path | None:
        prepared.append(str(args[1]))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hc, "prepare_cgroup", counting)
    cgroup_fs = build_cgroup_fs(tmp_path / "cgroup", "cpu")
    handler.script("a.sh", "true\n")
    for _ in range(3):
        assert handler.run("a.sh", cgroup_fs=cgroup_fs).exit_code == 0
    assert prepared == [HANDLER]
    # Gone (removed by someone else): made again, and the command runs in it.
    group = cgroup_fs / "azure-vmextensions" / HANDLER
    for child in group.iterdir():
        child.unlink()
    group.rmdir()
    assert handler.run("a.sh", cgroup_fs=cgroup_fs).exit_code == 0
    assert prepared == [HANDLER, HANDLER] and (group / "cgroup.procs").exists()

def test_resource_limits_fields() -> None:
    assert parse_resource_limits(None) == ResourceLimits()
    assert parse_resource_limits({"cpuQuota": 50, "memoryQuota": 512}) == \
        ResourceLimits(50.0, 512)
    assert parse_resource_limits({"cpuQuotaPercentage": "12.5%",
                                  "memoryQuotaInMB": "64M"}) == ResourceLimits(12.5, 64)
    assert parse_resource_limits({"cpuQuota": "lots", "memoryQuota": -1,
                                  "services": [{"name": "x.service"}]}) == ResourceLimits()
    assert parse_resource_limits({"cpuQuota": True}) == ResourceLimits()


def test_systemd_run_argv() -> None:
    argv = systemd_run_argv(["/bin/sh", "-c", "/var/lib/waagent/A-1.0/run.sh -enable"],
                            unit="enable_1234.scope", handler="Microsoft.A.Linux-1.0.2",
                            limits=ResourceLimits(25.0, 256))
    assert argv == ["systemd-run", "--unit=enable_1234.scope", "--scope",
                    "--slice=azure-vmextensions-Microsoft.A.Linux_1.0.2.slice",
                    "--property=CPUQuota=25%", "--property=MemoryMax=256M",
                    "/bin/sh", "-c", "/var/lib/waagent/A-1.0/run.sh -enable"]
    assert systemd_run_argv(["x"], unit="u.scope", handler="H-1",
                            limits=ResourceLimits()) == [
        "systemd-run", "--unit=u.scope", "--scope", "--slice=azure-vmextensions-H_1.slice",
        "x"]
    assert slice_name("A-B-1.0") == "azure-vmextensions-A_B_1.0.slice"


FAKE_SYSTEMD_RUN = """#!/bin/sh
echo "$@" > "$ARGS_FILE"
unit=
while [ $# -gt 0 ]; do
    case "$1" in
        --unit=*) unit="${1#--unit=}"; shift ;;
        --*) shift ;;
        *) break ;;
    esac
done
if [ -n "$FAIL" ]; then
    echo "Failed to start transient scope unit: Access denied" >&2
    exit 1
fi
echo "Running scope as unit: $unit" >&2
exec "$@"
"""


@pytest.mark.parametrize("fail", [False, True])
def test_systemd_scope_and_the_fallback_when_systemd_run_fails(
        handler: Handler, tmp_path: Path, fail: bool) -> None:
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "systemd-run").write_text(FAKE_SYSTEMD_RUN)
    (fake / "systemd-run").chmod(0o755)
    handler.script("exit.sh", 'echo "done $1"; exit "$1"\n')
    env = {"PATH": f"{fake}:{BASE_ENV['PATH']}", "ARGS_FILE": str(tmp_path / "args")}
    if fail:
        env["FAIL"] = "1"
    result = handler.run("exit.sh 3", env=env, use_systemd=True,
                         resource_limits={"memoryQuota": 100})
    args = (tmp_path / "args").read_text()
    assert args.startswith("--unit=enable_") and ".scope --scope --slice=" in args
    assert "--property=MemoryMax=100M /bin/sh -c " in args
    assert result.exit_code == 3 and "done 3" in result.output_tail
    # Run again without systemd-run: its own error is not the handler's output.
    assert ("Running scope as unit" in result.output_tail) is not fail
    assert "Failed to start transient scope" not in result.output_tail
