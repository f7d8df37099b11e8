"""Provision once, never fight the admin (DESIGN rule 5), on a sandbox root.

After the first boot the admin owns the user, keys, sudoers, sshd settings and hostname:
later boots, with or without doit's state DB, revert none of their changes and repeat no
one-shot work. Only a change of a task's inputs (here a waagent.conf option) reruns it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric import Fabric, default_scenario
from fabric.documents import render_ovf
from tests.conftest import need_root, need_tools
from tests.integration.provisioning import BASE_CONF, Harness

pytestmark = pytest.mark.root

ONCE_TASKS = {"hostname:set", "user:account", "user:password", "user:sudoers", "user:rootpw",
              "ssh:hostkeys", "ssh:config", "ssh:authorized_keys", "ssh:keypairs",
              "customdata:save"}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    need_root()
    need_tools("useradd", "chpasswd", "ssh-keygen", "visudo", "sshd", "unshare")
    with Fabric(default_scenario()) as fabric:
        yield Harness(tmp_path, fabric, BASE_CONF + "Provisioning.DeleteRootPassword=y\n"
                      "Provisioning.MonitorHostName=y\n")


def shadow_hash(root: Path, user: str) -> str:
    for line in (root / "etc/shadow").read_text().splitlines():
        if line.split(":")[0] == user:
            return line.split(":")[1]
    raise AssertionError(f"{user} not in shadow")


def admin_changes(root: Path, user: str) -> dict[Path, str]:
    """What an admin does after provisioning: files and the text they leave in them."""
    home = root / "home" / user
    keys = (home / ".ssh/authorized_keys").read_text().splitlines()
    edits = {
        home / ".ssh/authorized_keys": keys[-1] + "\n",  # one key removed
        root / "etc/sudoers.d/waagent": f"{user} ALL=(ALL) /usr/bin/true\n",  # narrowed
        root / "etc/hostname": "renamed-by-admin\n",
        root / "etc/ssh/sshd_config.d/00-waagent.conf": "PasswordAuthentication no\n",
    }
    for path, text in edits.items():
        path.write_text(text)
    (home / ".ssh/id_rsa.pub").unlink()  # a key pair's public half removed
    (root / "var/lib/waagent/CustomData").unlink()
    shadow = root / "etc/shadow"
    lines = [("root:$6$adminsalt$adminhash:" + ":".join(line.split(":")[2:]))
             if line.startswith("root:") else line
             for line in shadow.read_text().splitlines()]
    shadow.write_text("\n".join(lines) + "\n")  # root given a password by the admin
    return edits


def test_later_boots_revert_no_admin_change_even_without_the_state_db(harness: Harness) -> None:
    harness.run(check=True)
    root, user = harness.root, harness.scenario.username
    host_key = (root / "etc/ssh/ssh_host_rsa_key.pub").read_text()
    password = shadow_hash(root, user)
    edits = admin_changes(root, user)

    def unchanged_since_the_admin() -> None:
        for path, text in edits.items():
            assert path.read_text() == text, f"{path} was reverted"
        assert not (root / "home" / user / ".ssh/id_rsa.pub").exists()
        assert not (root / "var/lib/waagent/CustomData").exists()
        assert shadow_hash(root, "root") == "$6$adminsalt$adminhash"
        assert (root / "etc/ssh/ssh_host_rsa_key.pub").read_text() == host_key
        assert shadow_hash(root, user) == password

    harness.run(check=True)
    assert not harness.ran() & ONCE_TASKS, harness.ran()
    # Provisioning.MonitorHostName (on by default): the admin's rename is published.
    assert "publish:hostname" in harness.ran()
    unchanged_since_the_admin()

    # doit's state is a cache: without it, only idempotent work is redone.
    (root / "var/lib/waagent/graph-state.sqlite3").unlink()
    harness.run(check=True)
    assert not harness.ran() & ONCE_TASKS, harness.ran()
    unchanged_since_the_admin()
    # The rename is the admin's: it is what gets published, never reverted.
    assert (root / "var/lib/waagent/published_hostname").read_text().strip() == \
        "renamed-by-admin"


def test_the_plan_says_why_a_provisioned_task_is_up_to_date(harness: Harness) -> None:
    harness.run(check=True)
    (harness.root / "etc/sudoers.d/waagent").unlink()
    out = harness.run("user:sudoers", command="plan", check=True).stdout
    assert "ok   user:sudoers" in out
    assert (f"because provisioned for VM id {harness.scenario.vm_id}; inputs unchanged"
            in out)


def test_a_changed_input_reruns_its_task(harness: Harness) -> None:
    harness.run(check=True)
    dropin = harness.root / "etc/ssh/sshd_config.d/00-waagent.conf"
    assert "ClientAliveInterval 180" in dropin.read_text()
    harness.set_conf(harness.conf.read_text() + "OS.SshClientAliveInterval=120\n")
    plan = harness.run("ssh:config", command="plan", check=True).stdout
    assert "ssh:config: changed ClientAliveInterval: 180 -> 120" in plan
    harness.run(check=True)
    assert harness.ran() & ONCE_TASKS == {"ssh:config"}
    assert "ClientAliveInterval 120" in dropin.read_text()


def as_if_another_agent_provisioned(root: Path, marker: str) -> None:
    """The root as waagent leaves a VM it provisioned: its `provisioned` marker and the
    kept ovf-env.xml, none of this agent's records, facts or doit state."""
    lib = root / "var/lib/waagent"
    for name in ("provisioning", "facts", "runs", "history"):
        shutil.rmtree(lib / name, ignore_errors=True)
    for path in lib.glob("graph-state.sqlite3*"):
        path.unlink()
    (lib / "published_hostname").unlink(missing_ok=True)
    (lib / "provisioned").write_text(marker)


def smbios_order(vm_id: str) -> str:
    groups = vm_id.split("-")
    swapped = ["".join(reversed([g[i:i + 2] for i in range(0, len(g), 2)])) for g in groups[:3]]
    return "-".join(swapped + groups[3:]).upper()


@pytest.mark.parametrize("form", ["as written here", "upper case", "SMBIOS byte order",
                                  "empty (older agents)"])
def test_a_vm_waagent_provisioned_is_taken_over_without_provisioning_again(
        harness: Harness, form: str) -> None:
    """waagent replaced by this agent on a running VM: nothing of provisioning is done again,
    whatever form of the VM id waagent's marker holds; Ready is reported; afterwards a
    changed input reruns its task as on a VM this agent provisioned."""
    harness.run(check=True)
    root, user, vm = harness.root, harness.scenario.username, harness.scenario.vm_id
    host_key = (root / "etc/ssh/ssh_host_rsa_key.pub").read_text()
    password = shadow_hash(root, user)
    edits = admin_changes(root, user)
    marker = {"as written here": vm, "upper case": vm.upper(),
              "SMBIOS byte order": smbios_order(vm), "empty (older agents)": ""}[form]
    as_if_another_agent_provisioned(root, marker)
    readies = [h for h in harness.health() if h[0] == "Ready"]

    harness.run(check=True)
    for path, text in edits.items():
        assert path.read_text() == text, f"{path} was reverted"
    assert not (root / "home" / user / ".ssh/id_rsa.pub").exists()
    assert not (root / "var/lib/waagent/CustomData").exists(), "custom data saved again"
    assert shadow_hash(root, "root") == "$6$adminsalt$adminhash"
    assert (root / "etc/ssh/ssh_host_rsa_key.pub").read_text() == host_key
    assert shadow_hash(root, user) == password
    assert (root / "var/lib/waagent/provisioned").read_text() == marker, "the marker is kept"
    assert len([h for h in harness.health() if h[0] == "Ready"]) == len(readies) + 1
    assert not any(h[1] == "ProvisioningFailed" for h in harness.health())
    record = json.loads((root / f"var/lib/waagent/provisioning/{vm}.json").read_text())
    assert ONCE_TASKS - {"user:rootpw"} <= set(record), record

    harness.run(check=True)
    assert not harness.ran() & ONCE_TASKS, harness.ran()
    harness.set_conf(harness.conf.read_text() + "OS.SshClientAliveInterval=120\n")
    harness.run(check=True)
    assert harness.ran() & ONCE_TASKS == {"ssh:config"}
    assert "ClientAliveInterval 120" in \
        (root / "etc/ssh/sshd_config.d/00-waagent.conf").read_text()


def test_a_provisioned_vm_without_ovf_data_reports_ready_not_a_failure(
        harness: Harness) -> None:
    """No DVD and no kept ovf-env.xml on a VM waagent provisioned (an admin removed the
    copy): nothing to provision from and nothing to provision; Ready, not ProvisioningFailed."""
    harness.run(check=True)
    root = harness.root
    host_key = (root / "etc/ssh/ssh_host_rsa_key.pub").read_text()
    as_if_another_agent_provisioned(root, harness.scenario.vm_id)
    (root / "var/lib/waagent/ovf-env.xml").unlink()
    (root / "dev").mkdir(exist_ok=True)  # no DVD device in it
    for _ in range(2):
        out = harness.run(media=False, check=True)
    assert "this VM is provisioned: its provisioning is left as it is" in out.stderr
    assert harness.health()[-1][0] == "Ready"
    assert not any(h[1] == "ProvisioningFailed" for h in harness.health())
    assert (root / "etc/ssh/ssh_host_rsa_key.pub").read_text() == host_key


def test_waagents_masked_password_in_its_kept_copy_never_becomes_the_password(
        harness: Harness) -> None:
    """waagent keeps ovf-env.xml with `<UserPassword>*</UserPassword>`. Without the DVD, a
    rerun of user:password after a VM was taken over (a changed PasswordCryptId) keeps the
    hash that is set instead of making "*" the password."""
    harness.run(check=True)
    root, user = harness.root, harness.scenario.username
    password = shadow_hash(root, user)
    as_if_another_agent_provisioned(root, harness.scenario.vm_id)
    masked = re.sub(r"<UserPassword>.*?<", "<UserPassword>*<", render_ovf(harness.scenario))
    (root / "var/lib/waagent/ovf-env.xml").write_text(masked)
    (root / "dev").mkdir(exist_ok=True)  # no DVD device in it
    harness.run(media=False, check=True)
    harness.set_conf(harness.conf.read_text() + "Provisioning.PasswordCryptSaltLength=12\n")
    harness.run(media=False, check=True)
    assert "user:password" in harness.ran()
    assert shadow_hash(root, user) == password, "the password was set again (to \"*\"?)"
