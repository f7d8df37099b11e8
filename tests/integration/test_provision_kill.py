"""A SIGKILL after any task of the provision group: the next boot converges (DESIGN rule 5).

For each task in the order a first boot runs them, a fresh sandbox VM is provisioned by an
agent that kills itself (SIGKILL, before doit saves its state) right after that task, then
booted again. The end state must be the uninterrupted run's, with Ready reported, and the
one-shot work done before the kill (host keys, the password) must not be done again.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from passlib.hash import sha512_crypt

from fabric import Fabric, default_scenario
from tests.conftest import need_root, need_tools
from tests.integration.provisioning import BASE_CONF, Harness

pytestmark = pytest.mark.root

# `python3 -c KILLED_BOOT TASK waagent-args...`: `waagent`, killed right after TASK succeeds.
KILLED_BOOT = """\
import os, signal, sys
from graph.cli import main
from graph import loader, reporter
victim = sys.argv.pop(1)
succeeded = reporter.WaagentReporter.add_success
def add_success(self, task):
    succeeded(self, task)
    if task.name == victim:
        os.kill(os.getpid(), signal.SIGKILL)
reporter.WaagentReporter.add_success = add_success
sys.exit(main())
"""

CONF = BASE_CONF + "Provisioning.DeleteRootPassword=y\n"


class KillableHarness(Harness):
    def run_killed_after(self, task: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", KILLED_BOOT, task, "provision", f"root={self.root}",
                f"conf={self.conf}", f"wireserver={self.fabric.wire_url}",
                f"media={self.media}"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300,
                              check=False)


def shadow_hash(root: Path, user: str) -> str:
    for line in (root / "etc/shadow").read_text().splitlines():
        if line.split(":")[0] == user:
            return line.split(":")[1]
    return ""


def end_state(root: Path, user: str, password: str) -> dict[str, object]:
    """What provisioning leaves, without what differs between runs by design (salts,
    freshly generated host keys)."""
    home = root / "home" / user
    files = ["etc/hostname", "etc/hosts", "etc/sudoers.d/waagent",
             "etc/ssh/sshd_config.d/00-waagent.conf", f"home/{user}/.ssh/authorized_keys",
             f"home/{user}/.ssh/id_rsa", f"home/{user}/.ssh/id_rsa.pub",
             "var/lib/waagent/CustomData", "var/lib/waagent/provisioned",
             "var/lib/waagent/published_hostname"]
    state: dict[str, object] = {name: (root / name).read_text() for name in files}
    state["user"] = [line.split(":")[:1] + line.split(":")[5:]
                     for line in (root / "etc/passwd").read_text().splitlines()
                     if line.startswith(f"{user}:")]
    state["password"] = sha512_crypt.verify(password, shadow_hash(root, user))
    state["root locked"] = shadow_hash(root, "root") == "*LOCK*"
    state["home"] = (home.stat().st_uid, home.is_dir())
    state["host keys"] = sorted(p.name for p in (root / "etc/ssh").glob("ssh_host_*"))
    return state


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    need_root()
    need_tools("useradd", "chpasswd", "ssh-keygen", "visudo", "sshd", "unshare")
    with Fabric(default_scenario()) as running:
        yield running


def test_a_sigkill_after_any_task_converges_without_repeating_one_shot_work(
        fabric: Fabric, tmp_path: Path) -> None:
    scenario = fabric.scenario
    reference = KillableHarness(tmp_path / "reference", fabric, CONF)
    reference.run(check=True)
    wanted = end_state(reference.root, scenario.username, scenario.password)
    tasks = reference.last_report()["tasks"]
    order = [name for _start, name in sorted((entry["start"], name)
                                             for name, entry in tasks.items()
                                             if entry.get("result") == "changed")]
    assert {"user:password", "ssh:hostkeys", "report:ready"} <= set(order)

    for victim in order:
        case = KillableHarness(tmp_path / victim.replace(":", "-"), fabric, CONF)
        killed = case.run_killed_after(victim)
        assert killed.returncode == -9, (victim, killed.stderr[-2000:])
        host_key = case.root / "etc/ssh/ssh_host_rsa_key.pub"
        key_then = host_key.read_text() if host_key.exists() else None
        password_then = shadow_hash(case.root, scenario.username)

        case.run(check=True)
        assert fabric.record.health_reports()[-1]["state"] == "Ready", victim
        assert end_state(case.root, scenario.username, scenario.password) == wanted, victim
        done = order[:order.index(victim) + 1]
        if "ssh:hostkeys" in done:
            assert host_key.read_text() == key_then, f"host keys made again after {victim}"
        if "user:password" in done:
            assert shadow_hash(case.root, scenario.username) == password_then, \
                f"password set again after {victim}"
