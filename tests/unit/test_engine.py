"""graph/: the doit engine, its commands, up-to-date checks and the waagent command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from graph import cli
from graph.uptodate import Inputs, Probe
from tasks import AREAS, GROUPS

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False, **kw)  # type: ignore[call-overload]


def test_doit_list_from_checkout_shows_groups_with_docs(sandbox: Path) -> None:
    out = run([str(BIN / "doit"), "list", f"root={sandbox}"], cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    for area in AREAS:
        assert area.name in lines and area.doc.split(":")[0] in lines[area.name]
    assert "provision" in lines


# Runs a command line as `doit` (from the checkout) or `waagent` would, then prints the
# task modules it loaded.
LOADED_AREAS = """
import sys
from doit.__main__ import main as doit
from graph.main import run_doit as waagent
try:
    {entry}
finally:
    print(" ".join(sorted(m for m in sys.modules if m.startswith("tasks."))))
"""


@pytest.mark.parametrize("entry", ["doit()", "waagent(sys.argv[1:])"])
def test_a_boot_loads_only_the_provision_group_areas(sandbox: Path, entry: str) -> None:
    code = LOADED_AREAS.format(entry=entry)
    out = run([sys.executable, "-c", code, "provision", f"root={sandbox}"], cwd=REPO)
    loaded = set(out.stdout.split())
    assert {"tasks.gather", "tasks.user", "tasks.ssh", "tasks.disk"} <= loaded, out.stderr
    assert not loaded & {"tasks.deprovision", "tasks.serialconsole"}
    # Any other command may need any area (a task's dependencies can lie in other areas).
    out = run([sys.executable, "-c", code, "list", f"root={sandbox}"], cwd=REPO)
    assert "tasks.deprovision" in out.stdout.split(), out.stderr


def test_waagent_works_from_any_directory(tmp_path: Path) -> None:
    for args in (["-help"], ["-version"], ["-show-configuration"], ["/show-configuration"]):
        out = run([str(BIN / "waagent"), *args], cwd=tmp_path)
        assert out.returncode == 0, (args, out.stderr)
    out = run([str(BIN / "waagent"), "--show-configuration"], cwd=tmp_path)
    assert "Provisioning.Enabled = True" in out.stdout
    assert "ResourceDisk.MountPoint = /mnt/resource" in out.stdout


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head` once it has read its lines: every write fails
    try:
        writer = subprocess.run([str(BIN / "waagent"), "-show-configuration"], cwd=tmp_path,
                                stdout=write_end, stderr=subprocess.PIPE, text=True,
                                timeout=60, check=False)
    finally:
        os.close(write_end)
    assert writer.returncode == 1
    assert "Traceback" not in writer.stderr, writer.stderr


def test_show_configuration_reports_bad_line(tmp_path: Path) -> None:
    conf = tmp_path / "waagent.conf"
    conf.write_text("ResourceDisk.Format=y\nResourceDisk.SwapSizeMB=lots\n")
    out = run([str(BIN / "waagent"), "-show-configuration", f"-configuration-path:{conf}"],
              cwd=tmp_path)
    assert out.returncode == 1
    assert f"{conf}:2: ResourceDisk.SwapSizeMB='lots'" in out.stderr


def vm_root(sandbox: Path) -> Path:
    from tests.sandbox import make_sandbox_root

    return make_sandbox_root(sandbox, "09b01725-bf09-5941-9be9-bc7c6f7e0a55")


def test_a_run_writes_state_under_lib_dir(sandbox: Path, tmp_path: Path) -> None:
    vm_root(sandbox)
    out = run([str(BIN / "waagent"), "run", "gather:vm", f"root={sandbox}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lib = sandbox / "var/lib/waagent"
    assert (lib / "graph-state.sqlite3").exists()
    assert oct(lib.stat().st_mode & 0o777) == "0o700"
    assert list((lib / "runs").glob("*.json"))
    assert not list(tmp_path.glob(".doit*")), "no doit state in the working directory"


def test_bad_config_fails_before_any_task(sandbox: Path, tmp_path: Path) -> None:
    conf = tmp_path / "waagent.conf"
    conf.write_text("Provisioning.Enabled=maybe\n")
    for argv in ([str(BIN / "waagent")], [sys.executable, "-m", "doit", "-f",
                                          str(Path(__file__).parents[2] / "dodo.py")]):
        out = run([*argv, "provision", f"root={sandbox}", f"conf={conf}"], cwd=tmp_path)
        assert out.returncode == 3
        # One line naming file, line and option; no traceback.
        assert f"ERROR: {conf}:1: Provisioning.Enabled='maybe'" in out.stderr
        assert "Traceback" not in out.stderr
    assert not (sandbox / "var/lib/waagent").exists(), "nothing done"


def test_stray_doit_cfg_is_ignored(sandbox: Path, tmp_path: Path) -> None:
    (tmp_path / "doit.cfg").write_text("[GLOBAL]\ndep_file = stray.db\nbackend = json\n")
    vm_root(sandbox)
    out = run([str(BIN / "waagent"), "run", "gather:vm", f"root={sandbox}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "stray.db").exists()


def test_reset_dep_and_strace_are_refused(sandbox: Path) -> None:
    for command in ("reset-dep", "strace"):
        out = run([str(BIN / "waagent"), command, f"root={sandbox}"], cwd=sandbox)
        assert out.returncode == 3
        assert "not available" in out.stderr
        out = run([str(BIN / "doit"), command], cwd=REPO)
        assert out.returncode == 3, "plain doit from the checkout refuses too"


def test_sandbox_root_never_guesses_a_platform(sandbox: Path, tmp_path: Path) -> None:
    """Without wireserver= a sandbox has no platform: the fixed address is never tried."""
    vm_root(sandbox)
    out = run([str(BIN / "waagent"), "run", "gather:goalstate", f"root={sandbox}"],
              cwd=tmp_path)
    assert out.returncode != 0
    assert "is not the running system" in out.stdout and "wireserver=URL" in out.stdout


def test_collect_logs_runs_the_collector_with_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.logcollector

    seen: list[dict[str, str]] = []
    monkeypatch.setattr(tasks.logcollector, "run_collect_logs", lambda v: seen.append(v) or 0)
    calls: list[list[str]] = []
    status = cli.main(["-collect-logs", "-full", "root=/tmp/vm"],
                      run_doit=lambda a: calls.append(a) or 0)
    assert status == 0 and not calls
    assert seen == [{"root": "/tmp/vm", "full": "y"}]


@pytest.mark.parametrize("arg", ["-version", "--version", "/version", "-VERSION"])
def test_prefixes(arg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([arg]) == 0
    assert "waagent-graph" in capsys.readouterr().out


def test_cli_parse_flags_and_configuration_path() -> None:
    inv = cli.parse(["-verbose", "-force", "-configuration-path:/tmp/w.conf", "-deprovision+user"])
    assert inv.verb == "deprovision+user"
    assert inv.flags == {"verbose", "force"}
    assert inv.conf_path == "/tmp/w.conf"
    with pytest.raises(cli.UsageError):
        cli.parse(["-deprovision", "-daemon"])
    with pytest.raises(cli.UsageError):
        cli.parse(["-nosuch"])


def test_doit_commands_route_with_variables() -> None:
    calls: list[list[str]] = []
    cli.main(["provision", "root=/x"], run_doit=lambda a: calls.append(a) or 0)
    cli.main(["list", "--all"], run_doit=lambda a: calls.append(a) or 0)
    assert calls == [["run", "provision", "root=/x"], ["list", "--all"]]


def test_groups_name_existing_areas() -> None:
    names = {a.name for a in AREAS}
    for group in GROUPS:
        assert {entry.split(":")[0] for entry in group.areas} <= names


def test_inputs_check_reports_old_and_new_and_masks_secrets() -> None:
    current = {"ResourceDisk.SwapSizeMB": 2048, "secret:password": "pw1"}
    check = Inputs("swap", lambda: current)
    task = SimpleNamespace(value_savers=[])
    assert check(task, {}) is False and check.reason == "never run"
    saved = task.value_savers[0]()
    assert "pw1" not in str(saved)
    assert check(SimpleNamespace(value_savers=[]), saved) is True
    current.update({"ResourceDisk.SwapSizeMB": 4096, "secret:password": "pw2"})
    assert check(SimpleNamespace(value_savers=[]), saved) is False
    assert "ResourceDisk.SwapSizeMB: 2048 -> 4096" in check.reason
    assert "pw2" not in check.reason and "secret:password" in check.reason


def test_probe_check_reason() -> None:
    check = Probe("swap", lambda: "swap active 0 MB, want 2048 MB")
    assert check(None, {}) is False and check.reason == "swap active 0 MB, want 2048 MB"


def test_sigterm_saves_finished_tasks(sandbox: Path, tmp_path: Path) -> None:
    """SIGTERM: the running task finishes, the run stops before the next one, and doit
    records the tasks that finished."""
    dodo = tmp_path / "dodo.py"
    flag = tmp_path / "first-done"
    third = tmp_path / "third-done"
    dodo.write_text(f'''
import time
from pathlib import Path
from doit.tools import config_changed
from graph.loader import dodo_namespace
globals().update(dodo_namespace({{"root": "{sandbox}"}}))
def task_slow():
    yield {{"name": "first", "actions": [lambda: Path("{flag}").write_text("x") and None],
            "uptodate": [config_changed("v1")]}}
    yield {{"name": "second", "actions": [lambda: time.sleep(2)], "task_dep": ["slow:first"],
            "uptodate": [config_changed("v1")]}}
    yield {{"name": "third", "actions": [lambda: Path("{third}").write_text("x") and None],
            "task_dep": ["slow:second"], "uptodate": [config_changed("v1")]}}
''')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([str(BIN / "python"), "-m", "doit", "-f", str(dodo), "-d",
                             str(tmp_path), "slow"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert flag.exists(), "the first task ran"
    out = run([str(BIN / "python"), "-m", "doit", "list", "-f", str(dodo), "-d", str(tmp_path),
               "--all", "--status"], cwd=REPO, env=env)
    status = {line.split()[1]: line.split()[0] for line in out.stdout.splitlines()
              if len(line.split()) > 1}
    assert status.get("slow:first") == "U", out.stdout + out.stderr
    assert status.get("slow:second") == "U", "the running task finished and was recorded"
    assert status.get("slow:third") == "R" and not third.exists(), "nothing ran after it"


@pytest.mark.parametrize("pattern", ["ssh:*", "ssh:host*", "ssh*", "*", "user:account",
                                     "s?h:*", "[su]*:*", "*:report", "nothing:*"])
def test_group_wildcards_expand_in_definition_order(pattern: str) -> None:
    """doit expands a group's `AREA:*` and `AREA:TASK*` dependencies, in the order the
    tasks were defined (the groups rely on it), and matches as fnmatchcase does."""
    import fnmatch

    from doit.control import TaskControl
    from doit.task import Task

    names = ["gather:vm", "ssh:hostkeys", "ssh:config", "sshd:x", "user:account", "ssh",
             "report:ready", "s*h:odd"]
    group = Task("group", None, task_dep=[pattern])
    control = TaskControl([*(Task(name, None) for name in names), group])
    expected = [n for n in [*names, "group"] if fnmatch.fnmatchcase(n, pattern)]
    assert control.tasks["group"].task_dep == (expected if "*" in pattern or "?" in pattern
                                               or "[" in pattern else [pattern])


def test_run_never_takes_reporters_or_backends_from_installed_packages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from doit.plugin import PluginDict

    from graph.commands import Run
    from graph.main import WaagentLoader

    scanned: list[str] = []
    monkeypatch.setattr(PluginDict, "_from_entry_points",
                        lambda self, category: scanned.append(category) or {})
    Run(task_loader=WaagentLoader(), config={}, bin_name="doit", cmds={})
    assert scanned == [], "Run looked up entry points"
    assert PluginDict()._from_entry_points("REPORTER") == {}
