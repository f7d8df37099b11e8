"""tasks/deprovision.py: steps, the confirmation, plans on a sandbox root, and the engine run."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graph.context import Context, make_context
from system.errors import AgentError, UnsafeOperation
from tasks import deprovision
from tests.sandbox import make_sandbox_root
from tests.support.provisioned import CUSTOM_DATA, USERNAME, lay_down_provisioned_state

BIN = Path(sys.executable).parent
VM_ID = "11111111-2222-3333-4444-555555555555"
USER_HASH = "$6$saltsalt$provisionedhashprovisionedhash"


def provisioned_root(root: Path) -> Path:
    """A sandbox root as a provisioning run leaves it (accounts written by hand)."""
    make_sandbox_root(root, VM_ID)
    lay_down_provisioned_state(root)
    with open(root / "etc/passwd", "a") as passwd:
        passwd.write(f"{USERNAME}:x:1000:1000::/home/{USERNAME}:/bin/bash\n")
    with open(root / "etc/shadow", "a") as shadow:
        shadow.write(f"{USERNAME}:{USER_HASH}:19000:0:99999:7:::\n")
    (root / "etc/shadow-").write_text((root / "etc/shadow").read_text())
    (root / "etc/resolv.conf").write_text("nameserver 168.63.129.16\n")
    ssh = root / "etc/ssh"
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
        (ssh / name).write_text("host key\n")
    return root


def plan_context(root: Path, **variables: str) -> Context:
    return make_context({"root": str(root), **variables}, plan=True)


def snapshot(root: Path) -> dict[str, str | bytes]:
    """Every entry below root: file contents, link targets, directories."""
    found: dict[str, str | bytes] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = path.read_bytes()
    return found


def no_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unreadable(io.StringIO):
        def readline(self, *args: object) -> str:  # type: ignore[override]
            raise AssertionError("the question was asked")

    monkeypatch.setattr(sys, "stdin", Unreadable())


def task_names(ctx: Context) -> list[str]:
    return [task["name"] for task in deprovision.generate(ctx)]


def test_tasks_follow_confirm_and_agent_state_is_last(sandbox: Path) -> None:
    ctx = plan_context(provisioned_root(sandbox))
    tasks = {task["name"]: task for task in deprovision.generate(ctx)}
    assert list(tasks)[0] == "confirm"
    assert "user" not in tasks and "root-password" not in tasks
    for name, task in tasks.items():
        if name != "confirm":
            assert "deprovision:confirm" in task["task_dep"], name
            assert task["actions"], name
    others = {f"deprovision:{n}" for n in tasks if n not in ("confirm", "agent-state")}
    assert others <= set(tasks["agent-state"]["task_dep"])
    assert tasks["agent-state"]["teardown"], "the state DB goes after doit closed it"
    assert tasks["confirm"]["verbosity"] == 2, "the question must not be captured"


def test_variables_and_options_add_steps(sandbox: Path) -> None:
    root = provisioned_root(sandbox)
    (root / "etc/waagent.conf").write_text("Provisioning.DeleteRootPassword=y\n"
                                           "Provisioning.RegenerateSshHostKeyPair=n\n")
    names = task_names(plan_context(root, user="y"))
    assert "user" in names and "root-password" in names and "host-keys" not in names
    tasks = {t["name"]: t for t in deprovision.generate(plan_context(root, user="y"))}
    assert "deprovision:user" in tasks["shadow-backups"]["task_dep"]
    assert "deprovision:root-password" in tasks["shadow-backups"]["task_dep"]


def test_plan_lists_every_secret_without_asking_and_changes_nothing(
        sandbox: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = provisioned_root(sandbox)
    # Both options set: the list must not depend on their defaults.
    (root / "etc/waagent.conf").write_text("Provisioning.DeleteRootPassword=y\n"
                                           "Provisioning.RegenerateSshHostKeyPair=y\n")
    before = snapshot(root)
    ctx = plan_context(root, user="y")
    steps = deprovision.deprovision_steps(ctx)
    no_stdin(monkeypatch)
    deprovision.confirm(ctx, steps)
    listed = capsys.readouterr().out
    for expected in ("/var/lib/waagent/ovf-env.xml", "/var/lib/waagent/CustomData",
                     "/var/lib/waagent/EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62.prv",
                     "/var/lib/waagent/EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62.crt",
                     "/var/lib/dhcp/dhclient.eth0.leases", "/run/systemd/netif/leases/2",
                     "/etc/ssh/ssh_host_ed25519_key", "empty /etc/machine-id",
                     "/etc/sudoers.d/waagent", f"userdel --prefix {root} -f -r {USERNAME}",
                     f"usermod --prefix {root} -p '*LOCK*' root", "/etc/shadow-",
                     "/root/.bash_history", "/var/lib/cloud/instances", "/etc/resolv.conf",
                     "/var/log/waagent.log", "write /etc/hostname", "WARNING!"):
        assert expected in listed, expected
    for step in steps:
        deprovision.apply_step(ctx, step)
    planned = [str(change) for change in ctx.run.planned]
    assert any("remove /var/lib/waagent/ovf-env.xml" in c for c in planned)
    assert any(c.startswith("run userdel") for c in planned)
    assert snapshot(root) == before, "plan mode changed the root"


def test_nothing_to_remove_asks_nothing(sandbox: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    make_sandbox_root(sandbox, VM_ID)
    (sandbox / "etc/hostname").write_text("localhost.localdomain\n")
    ctx = make_context({"root": str(sandbox)})
    no_stdin(monkeypatch)
    deprovision.confirm(ctx, deprovision.deprovision_steps(ctx))
    assert "nothing to remove" in capsys.readouterr().out


@pytest.mark.parametrize("answer", ["", "\n", "n\n", "no\n", "maybe\n"])
def test_anything_but_yes_cancels(sandbox: Path, answer: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_context({"root": str(provisioned_root(sandbox))})
    monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
    with pytest.raises(AgentError, match="nothing was removed"):
        deprovision.confirm(ctx, deprovision.deprovision_steps(ctx))


def test_yes_or_force_proceeds(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = provisioned_root(sandbox)
    ctx = make_context({"root": str(root)})
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    deprovision.confirm(ctx, deprovision.deprovision_steps(ctx))
    forced = make_context({"root": str(root), "force": "y"})
    no_stdin(monkeypatch)
    deprovision.confirm(forced, deprovision.deprovision_steps(forced))


def test_user_refused_without_the_ovf_copy(sandbox: Path) -> None:
    root = provisioned_root(sandbox)
    (root / "var/lib/waagent/ovf-env.xml").unlink()
    ctx = make_context({"root": str(root), "user": "y", "force": "y"})
    with pytest.raises(AgentError, match="cannot tell which user was provisioned"):
        deprovision.confirm(ctx, deprovision.deprovision_steps(ctx))


def test_user_refused_for_a_system_account(sandbox: Path) -> None:
    root = provisioned_root(sandbox)
    lay_down_provisioned_state(root, username="daemon", home=False)
    ctx = make_context({"root": str(root), "user": "y", "force": "y"})
    with pytest.raises(UnsafeOperation, match="system account"):
        deprovision.user(ctx)


def test_sudoers_loses_only_the_users_lines(sandbox: Path) -> None:
    root = provisioned_root(sandbox)
    (root / "etc/sudoers.d/admins").write_text(f"ops ALL=(ALL) ALL\n{USERNAME} ALL=(ALL) ALL\n")
    ctx = plan_context(root, user="y")
    changes = {(c.kind, c.path.name if c.path else c.argv[0]) for c in deprovision.user(ctx)}
    assert ("remove", "waagent") in changes and ("write", "admins") in changes
    written = [c for c in deprovision.user(ctx) if c.kind == "write"]
    assert written[0].text == "ops ALL=(ALL) ALL\n"
    assert deprovision._without_user("# c\nazureuserx ALL=ALL\n", USERNAME) == \
        "# c\nazureuserx ALL=ALL\n"


def test_resolv_conf_kept_when_a_resolver_manager_owns_it(sandbox: Path) -> None:
    root = provisioned_root(sandbox)
    resolv = root / "etc/resolv.conf"
    resolv.unlink()
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    ctx = plan_context(root)
    assert deprovision.resolver_manager(ctx) == "systemd-resolved"
    assert deprovision.resolv_conf(ctx) == []
    resolv.unlink()
    resolv.symlink_to("/run/resolvconf/resolv.conf")
    original = root / "etc/resolvconf/resolv.conf.d/original"
    original.parent.mkdir(parents=True)
    original.write_text("nameserver 10.0.0.1\n")
    assert [c.path for c in deprovision.resolv_conf(ctx)] == [original]


def test_tree_removed_whole_and_leftover_aside_finished(sandbox: Path) -> None:
    root = provisioned_root(sandbox)
    ctx = make_context({"root": str(root)})
    instances = root / "var/lib/cloud/instances"
    deprovision.remove_whole(ctx, instances, "test")
    assert not instances.exists()
    assert not list(instances.parent.glob(".*removing")), "nothing left aside"
    # An interrupted run left a tree aside: the next run finds and finishes it.
    aside = root / "var/lib/cloud/.data.deprovision-removing"
    (root / "var/lib/cloud/data").rename(aside)
    found = [c.path for c in deprovision.cloud_init(ctx)]
    assert aside in found
    for change in deprovision.cloud_init(ctx):
        deprovision.apply_change(ctx, change)
    assert not aside.exists()


def test_refuses_a_path_leading_out_of_the_root(sandbox: Path, tmp_path: Path) -> None:
    root = provisioned_root(sandbox)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".bash_history").write_text("host's history\n")
    home = root / f"home/{USERNAME}"
    for entry in home.iterdir():
        entry.unlink()
    home.rmdir()
    home.symlink_to(outside)
    ctx = make_context({"root": str(root)})
    with pytest.raises(UnsafeOperation, match="outside the root"):
        for change in deprovision.histories(ctx):
            deprovision.apply_change(ctx, change)
    assert (outside / ".bash_history").exists()


def test_firewall_rules_of_the_agent() -> None:
    listed = ("-P OUTPUT ACCEPT\n"
              "-A OUTPUT -d 168.63.129.16/32 -p tcp -m tcp --dport 53 -j ACCEPT\n"
              "-A OUTPUT -d 168.63.129.16/32 -p tcp -m owner --uid-owner 0 -j ACCEPT\n"
              "-A OUTPUT -d 10.1.1.1/32 -j DROP\n")
    rules = deprovision.agent_iptables_rules(listed, "168.63.129.16")
    assert rules == [["-D", "OUTPUT", "-d", "168.63.129.16/32", "-p", "tcp", "-m", "tcp",
                      "--dport", "53", "-j", "ACCEPT"],
                     ["-D", "OUTPUT", "-d", "168.63.129.16/32", "-p", "tcp", "-m", "owner",
                      "--uid-owner", "0", "-j", "ACCEPT"]]


def test_image_root_never_touches_live_state(sandbox: Path) -> None:
    ctx = plan_context(provisioned_root(sandbox), chroot="y")
    kinds = {c.kind for step in deprovision.deprovision_steps(ctx) for c in step.changes(ctx)}
    assert "live" not in kinds


# -- the engine, end to end on a sandbox (no account changes: no root needed) -------------

def waagent(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "waagent"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


def test_without_force_and_no_answer_nothing_is_removed(sandbox: Path, tmp_path: Path) -> None:
    root = provisioned_root(sandbox)
    before = snapshot(root)
    out = waagent(["run", "deprovision", f"root={root}"], tmp_path)
    assert out.returncode != 0
    assert "Do you want to proceed (y/n)?" in out.stdout
    assert "nothing was removed" in out.stdout + out.stderr
    after = snapshot(root)
    # The engine's own files (log, state DB, lock, run report) are the only difference.
    engine = {"var/log/waagent.log", "var/lib/waagent/graph-state.sqlite3",
              "var/lib/waagent/waagent-graph.lock", "var/lib/waagent/runs"}
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert {k for k in changed if not any(k.startswith(e) for e in engine)} == set()


def test_forced_run_removes_the_state_and_a_second_run_finds_nothing(
        sandbox: Path, tmp_path: Path) -> None:
    root = provisioned_root(sandbox)
    out = waagent(["run", "deprovision", f"root={root}", "force=y"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lib = root / "var/lib/waagent"
    assert sorted(p.name for p in lib.iterdir()) == ["waagent-graph.lock"]
    assert (root / "etc/machine-id").exists() and (root / "etc/machine-id").read_text() == ""
    assert (root / "etc/hostname").read_text() == "localhost.localdomain\n"
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                assert CUSTOM_DATA.encode() not in path.read_bytes(), path
    again = waagent(["run", "deprovision", f"root={root}", "force=y"], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    ran = [line.split()[1] for line in again.stdout.splitlines() if line.startswith("ran ")]
    # Only what each run makes anew: the confirmation, this run's log, the state DB.
    assert set(ran) <= {"deprovision:confirm", "deprovision:agent-logs",
                        "deprovision:agent-state"}, again.stdout


def test_cloud_init_state_and_logs_removed_even_without_cloud_init(
        sandbox: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As `cloud-init clean --logs`: all of /var/lib/cloud but seed/, and cloud-init's logs,
    whether or not cloud-init is still installed (user data holds secrets)."""
    root = provisioned_root(sandbox)
    (root / "usr/bin/cloud-init").unlink()  # uninstalled, its state left behind
    cloud = root / "var/lib/cloud"
    for name in ("instances/iid-1/user-data.txt", "sem/config_scripts_per_once.once",
                 "handlers/x", "seed/nocloud/user-data", "seed/nocloud/meta-data"):
        (cloud / name).parent.mkdir(parents=True, exist_ok=True)
        (cloud / name).write_text("#cloud-config\npassword: secret\n")
    logs = root / "var/log"
    logs.mkdir(parents=True, exist_ok=True)
    for name in ("cloud-init.log", "cloud-init-output.log", "cloud-init.log.1", "syslog"):
        (logs / name).write_text("log\n")

    ctx = plan_context(root)
    steps = [s for s in deprovision.deprovision_steps(ctx) if s.name == "cloud-init"]
    no_stdin(monkeypatch)
    deprovision.confirm(ctx, steps)
    listed = capsys.readouterr().out
    for expected in ("remove /var/lib/cloud/instances ", "remove /var/lib/cloud/instance ",
                     "remove /var/lib/cloud/data ", "remove /var/lib/cloud/sem ",
                     "remove /var/lib/cloud/handlers ", "remove /var/log/cloud-init.log ",
                     "remove /var/log/cloud-init-output.log ",
                     "remove /var/log/cloud-init.log.1 "):
        assert expected in listed, expected
    assert "/var/lib/cloud/seed" not in listed and "syslog" not in listed

    ctx = make_context({"root": str(root)})
    for step in steps:
        deprovision.apply_step(ctx, step)
    assert sorted(p.name for p in cloud.iterdir()) == ["seed"]
    assert (cloud / "seed/nocloud/user-data").is_file()
    assert sorted(p.name for p in logs.iterdir() if "cloud" in p.name) == []
    assert (logs / "syslog").is_file()
    assert deprovision.cloud_init(ctx) == []


def test_plan_deprovision_shows_cloud_init_leftovers(sandbox: Path, tmp_path: Path) -> None:
    root = provisioned_root(sandbox)
    (root / "usr/bin/cloud-init").unlink()
    (root / "var/log").mkdir(parents=True, exist_ok=True)
    (root / "var/log/cloud-init-output.log").write_text("user data ran\n")
    out = waagent(["plan", "deprovision", f"root={root}"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "would remove /var/lib/cloud/instances" in out.stdout
    assert "would remove /var/log/cloud-init-output.log" in out.stdout
