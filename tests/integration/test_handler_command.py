"""Handler commands in a real cgroup v2 and inside a sandbox root with chroot=y (root).

The real cgroup is one the test makes under a cgroup2 mount of this machine and removes
afterwards (`/sys/fs/cgroup` on a cgroup v2 system, `/sys/fs/cgroup/unified` on a hybrid
one); limits are checked for the controllers that mount offers. The chroot run uses a
minimal root holding dash and a few tools, with its `sys/fs/cgroup` built as plain files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from system.handler_command import run_handler_command
from system.root import Root
from system.runner import Runner
from tests.conftest import need_root

pytestmark = pytest.mark.root

HANDLER = "Test.Handler-1.0"


def cgroup2_mount() -> Path | None:
    """A writable cgroup v2 mount of this machine, if it has one."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2" and os.access(fields[1], os.W_OK):
            return Path(fields[1])
    return None


@pytest.fixture
def cgroup_parent() -> Iterator[tuple[Path, str]]:
    """A cgroup v2 mount and the name of a test cgroup below it, removed afterwards."""
    need_root()
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no writable cgroup v2 mount on this machine")
    name = f"waagent-test-{uuid.uuid4().hex[:8]}"
    yield mount, name
    parent = mount / name
    for group in sorted(parent.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if group.is_dir():
            group.rmdir()  # a cgroup directory goes with rmdir, its files with it
    if parent.exists():
        parent.rmdir()


def test_a_command_runs_in_its_handlers_real_cgroup(tmp_path: Path,
                                                     cgroup_parent: tuple[Path, str]) -> None:
    mount, parent = cgroup_parent
    handler_dir = tmp_path / HANDLER
    handler_dir.mkdir()
    script = handler_dir / "where.sh"
    script.write_text("#!/bin/sh\ncat /proc/self/cgroup\n")
    script.chmod(0o755)
    controllers = (mount / "cgroup.controllers").read_text().split()
    result = run_handler_command(
        Runner(Root("/")), "where.sh", cwd=handler_dir, env={}, timeout=30,
        log_dir=tmp_path / "log", handler=HANDLER, operation="enable",
        resource_limits={"cpuQuota": 50, "memoryQuota": 128}, cgroup_fs=str(mount),
        cgroup_parent=parent, use_systemd=False)
    assert result.exit_code == 0, result.output_tail
    assert f"0::/{parent}/{HANDLER}\n" in result.output_tail
    group = mount / parent / HANDLER
    if "cpu" in controllers:
        assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
    if "memory" in controllers:
        assert (group / "memory.max").read_text().strip() == str(128 * 1024 * 1024)
    # The command ended: its cgroup is empty again.
    assert (group / "cgroup.procs").read_text() == ""


def copy_program(root: Path, program: str, name: str | None = None) -> None:
    """Copy a host program and the libraries it loads into `root` (same paths)."""
    path = Path(shutil.which(program) or program).resolve()
    target = root / "bin" / (name or path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, target)
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        parts = line.split()
        library = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if library.startswith("/"):
            copy = root / library.lstrip("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(library, copy)


@pytest.fixture
def mini_root(tmp_path: Path) -> Path:
    """A root with /bin/sh (dash), env, cat and sleep, and a plain-file cgroup v2 fs."""
    need_root()
    root = tmp_path / "vm"
    copy_program(root, "dash", "sh")
    for tool in ("env", "cat"):
        copy_program(root, tool)
    cgroup = root / "sys/fs/cgroup"
    cgroup.mkdir(parents=True)
    (cgroup / "cgroup.controllers").write_text("cpu memory pids\n")
    (cgroup / "cgroup.subtree_control").write_text("")
    return root


def test_chroot_runs_inside_the_root(mini_root: Path) -> None:
    handler_dir = mini_root / "var/lib/waagent" / HANDLER
    handler_dir.mkdir(parents=True)
    script = handler_dir / "probe.sh"
    script.write_text("#!/bin/sh\necho \"cwd=$(pwd)\"\nenv > env.txt\n"
                      "echo $PPID > ppid\n")
    script.chmod(0o755)
    runner = Runner(Root(mini_root), chroot=True)
    result = run_handler_command(
        runner, "/probe.sh -enable", cwd=handler_dir,
        env={"AZURE_GUEST_AGENT_EXTENSION_PATH": f"/var/lib/waagent/{HANDLER}"},
        timeout=30, log_dir=mini_root / "var/log/azure/Test.Handler", handler=HANDLER,
        operation="enable", resource_limits={"cpuQuota": 20})
    assert result.exit_code == 0, result.output_tail
    assert f"cwd=/var/lib/waagent/{HANDLER}" in result.output_tail
    env = dict(line.split("=", 1) for line in (handler_dir / "env.txt").read_text().split())
    assert env["AZURE_GUEST_AGENT_EXTENSION_PATH"] == f"/var/lib/waagent/{HANDLER}"
    log = (mini_root / "var/log/azure/Test.Handler/CommandExecution.log").read_text()
    assert f"Executing command: /var/lib/waagent/{HANDLER}/probe.sh -enable" in log
    group = mini_root / "sys/fs/cgroup/azure-vmextensions" / HANDLER
    assert (group / "cpu.max").read_text() == "20000 100000"
    # chroot executed the shell that runs the script: the pid moved in is the script's parent.
    assert (group / "cgroup.procs").read_text() == (handler_dir / "ppid").read_text().strip()
    assert [c.kind for c in runner.planned] == ["run"]
