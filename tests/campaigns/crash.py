"""Crash campaign: the agent killed at every task boundary and at random points inside actions,
then run again; the end state must be the uninterrupted run's, no data lost, one-shot work
done once (DESIGN rule 5).

A kill point is `after:TASK` (SIGKILL right after TASK succeeded, before doit saves its
state: tests/integration/test_provision_kill.py's approach), `delay:SECONDS` (a timer in the
agent SIGKILLs it wherever it is: inside an action, a child process running), or
`term-after:TASK` (SIGTERM: the agent stops before the next task).

Areas: the provision group (a sandbox root), the resource disk (a loop device: first boot,
then a second boot with user data on the disk), deprovision (of a provisioned sandbox), and
extensions (install, enable, update in a Debian root with chroot=y). Also: the state DB
deleted, the facts store corrupted or truncated, Lib.Dir full (a small tmpfs), a read-only root.
Every case returns a list of problems (empty: converged); each case audits secrets too.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric import Fabric, default_scenario
from tests.integration.provisioning import REPO, WAAGENT, Harness
from tests.integration.test_provision_kill import CONF, end_state, shadow_hash
from tests.support import secrets_audit
from tests.support.secrets_audit import AuditResult

# `python -c KILLER POINT waagent-args...`
KILLER = """\
import os, signal, sys, threading
from graph.cli import main
from graph import loader, reporter  # noqa: F401 - loader first (import order)
mode, arg = sys.argv.pop(1).split(":", 1)
sig = signal.SIGTERM if mode.startswith("term") else signal.SIGKILL
if mode.endswith("after"):
    succeeded = reporter.WaagentReporter.add_success
    def add_success(self, task):
        succeeded(self, task)
        if task.name == arg:
            os.kill(os.getpid(), sig)
    reporter.WaagentReporter.add_success = add_success
else:
    timer = threading.Timer(float(arg), os.kill, (os.getpid(), sig))
    timer.daemon = True
    timer.start()
sys.exit(main())
"""

ADMIN_FILES = {"root/notes.txt": "the admin's notes\n", "etc/motd": "the admin's motd\n"}


def killed(point: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", KILLER, point, *args], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=REPO,
                          stdin=subprocess.DEVNULL)


def task_order(report: dict[str, Any], prefix: str = "") -> list[str]:
    """Tasks that changed something, in the order they started."""
    tasks = report["tasks"]
    return [name for _start, name in sorted((entry["start"], name)
                                             for name, entry in tasks.items()
                                             if entry.get("result") == "changed"
                                             and name.startswith(prefix))]


def points(order: list[str], seconds: float, delays: int, seed: int = 21) -> list[str]:
    """Every boundary, and `delays` random instants within the uninterrupted run's time
    (plus half a second: the interpreter starting)."""
    rng = random.Random(seed)
    return [f"after:{task}" for task in order] + [
        f"delay:{rng.uniform(0.5, seconds + 0.5):.2f}" for _ in range(delays)]


@dataclass
class Tally:
    """The figures of one area: kill points tried and converged, and the problems seen."""

    area: str
    tried: int = 0
    converged: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)

    def add(self, point: str, problems: list[str]) -> None:
        self.tried += 1
        if problems:
            self.problems[point] = problems
        else:
            self.converged += 1


def plant_admin_files(root: Path) -> None:
    for name, text in ADMIN_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def admin_files_lost(root: Path) -> list[str]:
    return [f"the admin's {name} changed or went" for name, text in ADMIN_FILES.items()
            if not (root / name).is_file() or (root / name).read_text() != text]


def audit_root(root: Path, scenario: Any, outputs: dict[str, str], record: Any,
               audit: AuditResult | None) -> list[str]:
    if audit is None:
        return []
    found = secrets_audit.audit(root, scenario, texts=outputs, record=record)
    audit.merge(found)
    return found.findings


# --- the provision group ---------------------------------------------------------------------

class Provision:
    """Reference run, then one fresh sandbox per kill point, against one fabric."""

    def __init__(self, tmp: Path, fabric: Fabric) -> None:
        self.tmp = tmp
        self.fabric = fabric
        reference = Harness(tmp / "reference", fabric, CONF)
        plant_admin_files(reference.root)
        start = time.monotonic()
        reference.run(check=True)
        self.seconds = time.monotonic() - start
        self.scenario = fabric.scenario
        self.wanted = end_state(reference.root, self.scenario.username, self.scenario.password)
        self.order = task_order(reference.last_report())

    def case(self, point: str, audit: AuditResult | None = None) -> list[str]:
        harness = Harness(self.tmp / point.replace(":", "-"), self.fabric, CONF)
        plant_admin_files(harness.root)
        args = ("provision", f"root={harness.root}", f"conf={harness.conf}",
                f"wireserver={self.fabric.wire_url}", f"media={harness.media}")
        first = killed(point, *args)
        problems: list[str] = []
        if point.startswith(("after:", "delay:")) and first.returncode not in (-9, 0):
            problems.append(f"killed run ended {first.returncode}: {first.stderr[-500:]}")
        return problems + self.converges(harness, first.stdout + first.stderr, audit)

    def converges(self, harness: Harness, before: str, audit: AuditResult | None) -> list[str]:
        """Run again; compare with the reference; one-shot work not done again."""
        problems: list[str] = []
        host_key = harness.root / "etc/ssh/ssh_host_ed25519_key.pub"
        key_then = host_key.read_text() if host_key.exists() else None
        password_then = shadow_hash(harness.root, self.scenario.username)
        again = harness.run()
        if again.returncode != 0:
            return [f"the rerun failed ({again.returncode}): {again.stdout[-800:]}"]
        if self.fabric.record.health_reports()[-1]["state"] != "Ready":
            problems.append("the rerun did not report Ready")
        state = end_state(harness.root, self.scenario.username, self.scenario.password)
        problems += [f"{key}: {state.get(key)!r} != {value!r}"[:300]
                     for key, value in self.wanted.items() if state.get(key) != value]
        if key_then is not None and host_key.read_text() != key_then:
            problems.append("host keys made again")
        if password_then.startswith("$") and shadow_hash(harness.root, self.scenario.username) != password_then:
            problems.append("password set again")
        problems += admin_files_lost(harness.root)
        problems += audit_root(harness.root, self.scenario,
                               {"killed run output": before,
                                "rerun output": again.stdout + again.stderr},
                               self.fabric.record, audit)
        return problems

    def extra_cases(self, audit: AuditResult | None = None) -> dict[str, list[str]]:
        """SIGTERM, state DB deleted, facts corrupted or truncated, a full Lib.Dir, a
        read-only root."""
        results: dict[str, list[str]] = {}
        for victim in (self.order[len(self.order) // 3], self.order[2 * len(self.order) // 3]):
            results[f"term-after:{victim}"] = self.case(f"term-after:{victim}", audit)
        results["state DB deleted"] = self.after_full_run(
            "db", lambda lib: (lib / "graph-state.sqlite3").unlink(), audit)
        results["facts truncated"] = self.after_full_run(
            "facts-truncated", lambda lib: [p.write_bytes(p.read_bytes()[:7])
                                            for p in (lib / "facts").glob("*.json")], audit)
        results["facts corrupted"] = self.after_full_run(
            "facts-corrupted", lambda lib: [p.write_bytes(b"\x00garbage{" + p.read_bytes()[::-1])
                                            for p in (lib / "facts").glob("*.json")], audit)
        results["state DB and facts gone"] = self.after_full_run(
            "db-facts", lambda lib: ((lib / "graph-state.sqlite3").unlink(),
                                     shutil.rmtree(lib / "facts")), audit)
        results["Lib.Dir full"] = self.full_lib_dir(audit)
        results["read-only root"] = self.read_only_root(audit)
        return results

    def after_full_run(self, name: str, damage: Callable[[Path], object],
                       audit: AuditResult | None) -> list[str]:
        harness = Harness(self.tmp / name, self.fabric, CONF)
        plant_admin_files(harness.root)
        first = harness.run()
        if first.returncode != 0:
            return [f"the first run failed: {first.stdout[-500:]}"]
        damage(harness.root / "var/lib/waagent")
        return self.converges(harness, first.stdout + first.stderr, audit)

    def full_lib_dir(self, audit: AuditResult | None) -> list[str]:
        """Lib.Dir on a 2 MiB tmpfs that a filler leaves almost no room in: the run fails
        and says so; once room is made, the next run converges."""
        harness = Harness(self.tmp / "full", self.fabric, CONF)
        plant_admin_files(harness.root)
        lib = harness.root / "var/lib/waagent"
        lib.mkdir(parents=True, exist_ok=True)
        problems: list[str] = []
        with tmpfs(lib, "2m"):
            filler = lib / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"],
                           capture_output=True, check=False)
            first = harness.run()
            if first.returncode == 0:
                problems.append("a run on a full Lib.Dir said it succeeded")
            if "Traceback" in first.stdout + first.stderr:
                problems.append(f"a full Lib.Dir gave a traceback: {first.stderr[-600:]}")
            filler.unlink()
            problems += self.converges(harness, first.stdout + first.stderr, audit)
            problems += broken_json(lib)
        return problems

    def read_only_root(self, audit: AuditResult | None) -> list[str]:
        harness = Harness(self.tmp / "readonly", self.fabric, CONF)
        plant_admin_files(harness.root)
        problems: list[str] = []
        with read_only(harness.root):
            first = harness.run()
        if first.returncode == 0:
            problems.append("a run on a read-only root said it succeeded")
        if "Traceback" in first.stdout + first.stderr:
            problems.append(f"a read-only root gave a traceback: {first.stderr[-600:]}")
        return problems + self.converges(harness, first.stdout + first.stderr, audit)


def broken_json(lib: Path) -> list[str]:
    """JSON files the agent keeps that do not parse (a half-written file)."""
    broken = []
    for path in [*lib.glob("*.json"), *lib.glob("facts/*.json"), *lib.glob("provisioning/*")]:
        try:
            json.loads(path.read_text())
        except (ValueError, OSError):
            broken.append(f"{path.relative_to(lib)} does not parse")
    return broken


@contextmanager
def tmpfs(target: Path, size: str) -> Iterator[None]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "campaign", str(target)],
                   check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@contextmanager
def read_only(root: Path) -> Iterator[None]:
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


# --- the resource disk -------------------------------------------------------------------

DISK_TASKS = ("disk:partition", "disk:mkfs", "disk:mount", "disk:readme", "disk:swapfile")
USER_DATA = "the user's data on the resource disk\n"


def disk_case(tmp: Path, point: str) -> list[str]:
    """First boot killed at `point`, rerun; then user data on the disk, a reboot (unmounted,
    swap off) killed at the same point, rerun: converged, the data kept, no reformat."""
    from tests.integration.diskutil import loop_device, sh, vm_root

    problems: list[str] = []
    tmp.mkdir(parents=True, exist_ok=True)
    with loop_device(tmp) as device, vm_root(tmp, device) as vm:
        vm.configure(EnableSwap="y", SwapSizeMB="32")
        args = ("run", "disk", f"root={vm.root}", f"conf={vm.conf}")
        for boot in ("first boot", "second boot"):
            killed(point, *args)
            again = vm.agent()
            if again.returncode != 0:
                return problems + [f"{boot}: the rerun failed: {again.stdout[-600:]}"]
            target = vm.mount_target()
            if vm.fstype() != "ext4" or vm.mounted_source() != os.stat(vm.partition).st_rdev:
                problems.append(f"{boot}: the disk is not formatted and mounted")
            if not (target / "DATALOSS_WARNING_README.txt").exists():
                problems.append(f"{boot}: no README")
            if list(vm.swaps().values()) != [32 * 1024 - 4]:
                problems.append(f"{boot}: swap {vm.swaps()}")
            if boot == "first boot":
                uuid = vm.uuid()
                (target / "user-data.txt").write_text(USER_DATA)
                sh("swapoff", str(target / "swapfile"), check=False)
                sh("umount", str(target))
            else:
                if vm.uuid() != uuid:
                    problems.append("second boot: the disk was formatted again")
                data = target / "user-data.txt"
                if not data.exists() or data.read_text() != USER_DATA:
                    problems.append("second boot: the user's data is lost")
    return problems


# --- deprovision ---------------------------------------------------------------------------

def tree(root: Path) -> set[str]:
    """Files and directories under root, but run reports and logs (they differ by run)."""
    found = set()
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            relative = os.path.relpath(os.path.join(top, name), root)
            if not relative.startswith(("var/lib/waagent/runs", "var/log", "proc", "sys")):
                found.add(relative)
    return found


class Deprovision:
    """A provisioned sandbox per kill point, deprovisioned (force, user) and killed."""

    def __init__(self, tmp: Path, fabric: Fabric) -> None:
        self.tmp = tmp
        self.fabric = fabric
        reference = self.provisioned("reference")
        start = time.monotonic()
        out = self.deprovision(reference)
        self.seconds = time.monotonic() - start
        assert out.returncode == 0, out.stdout + out.stderr
        self.wanted = tree(reference.root)
        # Deprovision leaves no run report (Lib.Dir is emptied): its output names the tasks.
        self.order = [line.split()[1] for line in out.stdout.splitlines()
                      if line.startswith("ran deprovision:")]

    def provisioned(self, name: str) -> Harness:
        harness = Harness(self.tmp / name, self.fabric, CONF)
        plant_admin_files(harness.root)
        harness.run(check=True)
        return harness

    @staticmethod
    def args(harness: Harness) -> tuple[str, ...]:
        return ("run", "deprovision", f"root={harness.root}", f"conf={harness.conf}",
                "force=y", "user=y")

    def deprovision(self, harness: Harness) -> subprocess.CompletedProcess[str]:
        return subprocess.run([WAAGENT, *self.args(harness)], capture_output=True, text=True,
                              timeout=300, check=False, cwd=REPO, stdin=subprocess.DEVNULL)

    def case(self, point: str, audit: AuditResult | None = None) -> list[str]:
        harness = self.provisioned(point.replace(":", "-"))
        first = killed(point, *self.args(harness))
        again = self.deprovision(harness)
        if again.returncode != 0:
            return [f"the rerun failed: {again.stdout[-600:]}"]
        problems = []
        got = tree(harness.root)
        if got != self.wanted:
            problems.append(f"left {sorted(got - self.wanted)[:8]}, "
                            f"removed too {sorted(self.wanted - got)[:8]}")
        problems += admin_files_lost(harness.root)
        if audit is not None:
            found = secrets_audit.audit(harness.root, self.fabric.scenario,
                                        texts={"killed": first.stdout + first.stderr,
                                               "rerun": again.stdout + again.stderr})
            audit.merge(found)
            problems += found.findings
        return problems


def fabric_for_campaign() -> Fabric:
    return Fabric(default_scenario())


# --- extensions: install, enable, update in a Debian root (chroot=y) ------------------------

class Extensions:
    """`waagent -run-exthandlers chroot=y` on a fresh Debian root per kill point: the recorder
    handler installed and enabled (seq 0), then updated to 1.1.0."""

    def __init__(self, tmp: Path) -> None:
        from tests.campaigns import fault_schedules as fs

        self.tmp = tmp
        self.fs = fs
        self.package = fs.handler_package(tmp / "package")

    def fabric(self) -> Fabric:
        return Fabric(self.fs.extension_scenario(self.package))

    def harness(self, fabric: Fabric, name: str) -> Any:
        from tests.integration.test_daemon_extensions import ChrootDaemonHarness

        return ChrootDaemonHarness(self.tmp / name, fabric, self.fs.DAEMON_CONF)

    @staticmethod
    def args(harness: Any) -> tuple[str, ...]:
        return ("-run-exthandlers", f"root={harness.root}", f"conf={harness.conf}",
                f"wireserver={harness.fabric.wire_url}",
                f"hostplugin={harness.fabric.hostplugin_url}", "chroot=y")

    def run(self, harness: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([WAAGENT, *self.args(harness)], capture_output=True, text=True,
                              timeout=300, check=False, cwd=REPO, stdin=subprocess.DEVNULL)

    def reference(self) -> tuple[list[str], list[str], float]:
        """Task orders of the install run and of the update run, and the install run's time."""
        with self.fabric() as fabric:
            harness = self.harness(fabric, "reference")
            start = time.monotonic()
            out = self.run(harness)
            seconds = time.monotonic() - start
            assert out.returncode == 0, out.stdout + out.stderr
            install = task_order(harness.last_report(), "extensions")
            fabric.set_extension(self.fs.EXTENSION, version="1.1.0")
            out = self.run(harness)
            assert out.returncode == 0, out.stdout + out.stderr
            update = task_order(harness.last_report(), "extensions")
        return install, update, seconds

    def check(self, harness: Any, version: str, seq: int) -> list[str]:
        problems = []
        lib = harness.root / "var/lib/waagent"
        state = lib / f"{self.fs.EXTENSION}-{version}/config/HandlerState"
        if not state.exists() or state.read_text() != "Enabled":
            problems.append(f"{version}: HandlerState {state.read_text() if state.exists() else None}")
        if self.fs.handler_status(harness.fabric) != ("success", seq):
            problems.append(f"{version}: status {self.fs.handler_status(harness.fabric)}")
        return problems

    def case(self, point: str, update: bool, audit: AuditResult | None = None) -> list[str]:
        with self.fabric() as fabric:
            harness = self.harness(fabric, ("update-" if update else "") + point.replace(":", "-"))
            if update:
                out = self.run(harness)
                if out.returncode != 0:
                    return [f"the install run failed: {out.stdout[-400:]}"]
                fabric.set_extension(self.fs.EXTENSION, version="1.1.0")
            first = killed(point, *self.args(harness))
            again = self.run(harness)
            if again.returncode != 0:
                return [f"the rerun failed ({again.returncode}): {again.stdout[-600:]}"]
            problems = self.check(harness, "1.1.0" if update else "1.0.0", 0)
            log = self.fs.handler_log(harness.root)
            if update:
                old = harness.root / f"var/lib/waagent/{self.fs.EXTENSION}-1.0.0"
                if old.exists():
                    problems.append("the old version's directory is left")
            elif log.count("install 0") != 1:
                problems.append(f"install ran {log.count('install 0')} times: {log}")
            problems += audit_root(harness.root, fabric.scenario,
                                   {"killed": first.stdout + first.stderr,
                                    "rerun": again.stdout + again.stderr},
                                   fabric.record, audit)
        return problems
