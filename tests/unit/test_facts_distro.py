"""Distribution, users and the facts store, in temporary roots."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from conf.config import Config, parse_config
from facts import distro, store, users
from facts.ovf import parse_ovf_env
from system.errors import ProbeFailed
from system.fs import FileSystem
from system.root import Root
from system.runner import Runner

OS_RELEASES = {
    "debian": ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
               "debian", "12"),
    "ubuntu": ('NAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\nID_LIKE=debian\n', "debian",
               "22.04"),
    "rhel": ('ID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.3"\n', "rhel", "9.3"),
    "alma": ('ID="almalinux"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n', "rhel", "9.4"),
    "sles": ('NAME="SLES"\nID="sles"\nID_LIKE="suse"\nVERSION_ID="15.5"\n', "suse", "15.5"),
    "leap": ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\nVERSION_ID="15.5"\n', "suse", "15.5"),
    "flatcar": ("ID=flatcar\nID_LIKE=coreos\nVERSION_ID=3760.2.0\n", "coreos", "3760.2.0"),
    "fcos": ("ID=fedora\nVERSION_ID=39\nVARIANT_ID=coreos\n", "coreos", "39"),
    "mariner": ("ID=mariner\nVERSION_ID=2.0\n", "rhel", "2.0"),
    "other": ("ID=nixos\nVERSION_ID=24.05\n", "unknown", "24.05"),
}


def _touch(root: Root, *paths: str) -> None:
    for path in paths:
        real = root / path
        real.parent.mkdir(parents=True, exist_ok=True)
        real.write_text("")


def _enable(root: Root, unit: str, target: str = "multi-user.target") -> None:
    link = root / f"etc/systemd/system/{target}.wants/{unit}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"/lib/systemd/system/{unit}")


@pytest.mark.parametrize("name", sorted(OS_RELEASES))
def test_families(name: str, tmp_path: Path) -> None:
    text, family, version = OS_RELEASES[name]
    root = Root(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text(text)
    found = distro.distro(root)
    assert (found.family, found.version) == (family, version)
    assert found.sshd_service == ("ssh" if family == "debian" else "sshd")
    assert found.family_facts == distro.FAMILIES[family]


def test_parse_os_release_quoting() -> None:
    text = ('# comment\nNAME="Some \\"Quoted\\" OS"\nID=\'single\'\nVERSION=1\\ 2\n'
            "bad line\nX-Y=1\nEMPTY=\n")
    assert distro.parse_os_release(text) == {"NAME": 'Some "Quoted" OS', "ID": "single",
                                             "VERSION": "1 2", "EMPTY": ""}


def test_legacy_release_files_and_none(tmp_path: Path) -> None:
    root = Root(tmp_path)
    with pytest.raises(ProbeFailed, match="none of /etc/os-release"):
        distro.os_release(root)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/redhat-release").write_text("CentOS release 6.10 (Final)\n")
    assert distro.distro(root).family == "rhel"
    assert distro.distro(root).version == "6.10"
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text("ID=debian\nVERSION_ID=11\n")
    assert distro.distro(root).id == "debian"


def test_init_system(tmp_path: Path) -> None:
    root = Root(tmp_path)
    assert distro.init_system(root) == "unknown"
    (tmp_path / "etc/init.d").mkdir(parents=True)
    assert distro.init_system(root) == "sysvinit"
    _touch(root, "usr/lib/systemd/systemd")
    assert distro.init_system(root) == "systemd"


@pytest.mark.parametrize(("setup", "expected"), [
    ([], None),
    (["file:sbin/dhclient"], "dhclient"),
    (["file:sbin/dhclient", "file:usr/sbin/dhcpcd"], "dhcpcd"),
    (["file:sbin/dhclient", "file:etc/network/interfaces", "file:usr/sbin/dhcpcd"], "dhclient"),
    (["file:sbin/dhclient", "unit:systemd-networkd.service"], "networkd"),
    (["unit:systemd-networkd.service", "unit:NetworkManager.service"], "NetworkManager"),
    (["unit:wicked.service", "file:sbin/dhclient"], "wicked"),
    (["unit:NetworkManager.service", "file:run/systemd/netif/links/2"], "networkd"),
])
def test_dhcp_client(setup: list[str], expected: str | None, tmp_path: Path) -> None:
    root = Root(tmp_path)
    for item in setup:
        kind, _, value = item.partition(":")
        if kind == "file":
            _touch(root, value)
        else:
            _enable(root, value)
    assert distro.dhcp_client(root) == expected


def test_sshd_service_follows_the_unit_files(tmp_path: Path) -> None:
    root = Root(tmp_path)
    assert distro.sshd_service(root, "debian") == "ssh"
    _touch(root, "usr/lib/systemd/system/sshd.service")
    assert distro.sshd_service(root, "debian") == "sshd"  # only sshd.service exists
    _touch(root, "lib/systemd/system/ssh.service")
    assert distro.sshd_service(root, "debian") == "ssh"


def test_cloud_init(tmp_path: Path) -> None:
    root = Root(tmp_path)
    _touch(root, "usr/lib/systemd/systemd")
    assert not distro.cloud_init_present(root)
    _touch(root, "usr/bin/cloud-init")
    assert distro.cloud_init_present(root)
    assert not distro.cloud_init_enabled(root)  # installed, no unit enabled
    _enable(root, "cloud-init.target")
    assert distro.cloud_init_enabled(root)
    _touch(root, "proc/cmdline")
    (root / "proc/cmdline").write_text("root=/dev/sda1 cloud-init=disabled\n")
    assert not distro.cloud_init_enabled(root)
    (root / "proc/cmdline").write_text("root=/dev/sda1\n")
    _touch(root, "etc/cloud/cloud-init.disabled")
    assert not distro.cloud_init_enabled(root)


# --- users -----------------------------------------------------------------------------------

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
azureuser:x:1000:1000:Azure User,,,:/home/azureuser:/bin/bash
+nisuser::::::
"""


def test_users_from_the_root(tmp_path: Path) -> None:
    root = Root(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    (tmp_path / "etc/group").write_text("root:x:0:\nsudo:x:27:azureuser,other\n")
    assert users.uid_min(root) == 1000  # no login.defs: the default
    (tmp_path / "etc/login.defs").write_text("# UID_MIN 10\nUID_MIN\t\t\t 500\nUID_MAX 60000\n")
    assert users.uid_min(root) == 500
    assert users.user(root, "azureuser") == users.User("azureuser", 1000, 1000, "Azure User,,,",
                                                       "/home/azureuser", "/bin/bash")
    assert users.user(root, "nobody") is None
    assert "nisuser" not in users.users(root)
    assert users.groups(root)["sudo"].members == ("azureuser", "other")
    assert users.is_system_user(root, "daemon") and not users.is_system_user(root, "azureuser")


def test_users_damaged_files(tmp_path: Path) -> None:
    root = Root(tmp_path)
    with pytest.raises(ProbeFailed, match="/etc/passwd does not exist"):
        users.users(root)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0\n")
    with pytest.raises(ProbeFailed, match="line 1 has 4 fields"):
        users.users(root)
    (tmp_path / "etc/login.defs").write_text("UID_MIN lots\n")
    with pytest.raises(ProbeFailed, match="UID_MIN"):
        users.uid_min(root)


# --- the facts store -------------------------------------------------------------------------

@pytest.fixture
def conf() -> Config:
    return parse_config("Lib.Dir=/var/lib/waagent\n")


def test_store_writes_only_when_changed(tmp_path: Path, conf: Config) -> None:
    root = Root(tmp_path)
    fs = FileSystem(Runner(root=root))
    assert store.load(root, conf, "distro") is None
    assert store.save(fs, conf, "distro", {"family": "debian", "ids": ("a", "b")})
    path = tmp_path / "var/lib/waagent/facts/distro.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not store.save(fs, conf, "distro", {"ids": ["a", "b"], "family": "debian"})
    assert store.load(root, conf, "distro") == {"family": "debian", "ids": ["a", "b"]}
    assert store.save(fs, conf, "distro", {"family": "rhel", "ids": ["a", "b"]})


def test_store_refuses_secrets(tmp_path: Path, conf: Config) -> None:
    env = parse_ovf_env(
        b'<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" '
        b'xmlns:wa="http://schemas.microsoft.com/windowsazure"><wa:ProvisioningSection>'
        b"<wa:LinuxProvisioningConfigurationSet><wa:UserName>u</wa:UserName>"
        b"<wa:UserPassword>Store-Secret-1</wa:UserPassword>"
        b"<wa:CustomData>Y3VzdG9tLWRhdGEtc2VjcmV0</wa:CustomData>"
        b"</wa:LinuxProvisioningConfigurationSet></wa:ProvisioningSection></Environment>")
    fs = FileSystem(Runner(root=Root(tmp_path)))
    assert store.save(fs, conf, "ovf", {"env": env})  # stored as public facts
    text = (tmp_path / "var/lib/waagent/facts/ovf.json").read_text()
    assert "Store-Secret-1" not in text and "Y3VzdG9t" not in text
    assert json.loads(text)["env"]["password_set"] is True
    with pytest.raises(store.SecretInFacts):
        store.save(fs, conf, "leak", {"note": "pw is Store-Secret-1"})
    assert not (tmp_path / "var/lib/waagent/facts/leak.json").exists()


def test_store_bad_names_and_corrupt_files(tmp_path: Path, conf: Config) -> None:
    root = Root(tmp_path)
    with pytest.raises(ValueError, match="facts name"):
        store.facts_path(root, conf, "../escape")
    path = tmp_path / "var/lib/waagent/facts/x.json"
    path.parent.mkdir(parents=True)
    # Facts are a cache of what is gathered: a corrupt file is gathered again (the crash
    # campaign, tests/campaigns/crash.py: a truncated goalstate.json stopped every boot).
    for corrupt in ("{not json", '{"a": ', "[1, 2]", "\x00garbage"):
        path.write_text(corrupt)
        assert store.load(root, conf, "x") is None


def test_fingerprint_depends_on_exactly_the_subset() -> None:
    facts = {"distro": {"family": "debian", "version": "12"}, "vm": {"vm_id": "a"}}
    keys = ["distro.family", "vm.vm_id"]
    base = store.fingerprint(facts, keys)
    assert base == store.fingerprint(facts, reversed(keys))
    changed_other = {**facts, "distro": {"family": "debian", "version": "13"}}
    assert store.fingerprint(changed_other, keys) == base
    changed_used = {**facts, "vm": {"vm_id": "b"}}
    assert store.fingerprint(changed_used, keys) != base
    assert store.subset(facts, ["nope.x"]) == {"nope.x": {"missing": True}}
    assert store.fingerprint({"a": None}, ["a"]) != store.fingerprint({}, ["a"])


def test_redacted_view() -> None:
    view = store.redacted({"password": "x", "custom_data": None, "nested": [{"secret": 1}],
                           "ok": "plain"})
    assert view == {"password": "<redacted>", "custom_data": None,
                    "nested": [{"secret": "<redacted>"}], "ok": "plain"}


def test_describe_all_in_a_sandbox_root(tmp_path: Path, conf: Config) -> None:
    root = Root(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (tmp_path / "sys/class/dmi/id").mkdir(parents=True)
    (tmp_path / "sys/class/dmi/id/product_uuid").write_text(
        "78563412-BC9A-F0DE-1234-56789ABCDEF0\n")
    (tmp_path / "dev").mkdir()
    described = store.describe_all(root, conf)
    assert set(described) == set(store.SECTIONS)
    assert described["vm"] == {"vm_id": "12345678-9abc-def0-1234-56789abcdef0"}
    assert described["distro"]["family"] == "debian"
    assert described["ovf"]["media"] is None and described["ovf"]["looked_at"] == []
    assert "no provisioning media" in described["ovf"]["note"]
    assert "does not exist" in described["mounts"]["error"]  # no /proc: unknown, said so
    assert "sysfs is not readable" in described["resource_disk"]["error"]
    json.dumps(described)
    fs = FileSystem(Runner(root=root))
    changed = store.save_all(fs, conf, store.gather(root, conf))
    assert sorted(changed) == ["distro", "ovf", "vm"]
    assert store.save_all(fs, conf, store.gather(root, conf)) == []


@pytest.mark.parametrize("name", ["Ovf", "1ovf", "_ovf", "-ovf", "ovf.json", "ov f", "ovf\n",
                                  "\u00e9t\u00e9", ""])
def test_store_names_are_lower_case_letters_digits_dash_underscore(name: str,
                                                                   conf: Config) -> None:
    with pytest.raises(ValueError, match="facts name"):
        store.facts_path(Root(Path("/nonexistent")), conf, name)
    assert store.facts_path(Root(Path("/x")), conf, "goal_state-2").name == "goal_state-2.json"


def test_parse_os_release_keys_are_ascii_identifiers() -> None:
    text = "\u00c9TAT=1\n_OK=2\n9BAD=3\nOK_9=4\nA B=5\n"
    assert distro.parse_os_release(text) == {"_OK": "2", "OK_9": "4"}
