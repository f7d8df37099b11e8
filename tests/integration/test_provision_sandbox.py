"""Provisioning a sandbox root from the fabric: user, password, keys, sshd, hostname,
custom data, and the health reports; reruns do exactly what changed."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric import Fabric, default_scenario
from fabric.scenario import Scenario
from tests.conftest import need_root, need_tools
from tests.integration.provisioning import BASE_CONF, Harness
from tests.support.noop_boot import WATCHED_BOOT, check_watched_boot

pytestmark = pytest.mark.root


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    need_root()
    need_tools("useradd", "chpasswd", "ssh-keygen", "visudo", "sshd", "unshare")
    with Fabric(default_scenario()) as fabric:
        yield Harness(tmp_path, fabric)


def read(path: Path) -> str:
    return path.read_text()


def owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_first_boot_provisions_everything(harness: Harness) -> None:
    from passlib.hash import sha512_crypt

    result = harness.run(check=True)
    root, scenario = harness.root, harness.scenario
    # The agent's log, in the file and on stderr.
    log = read(root / "var/log/waagent.log")
    assert " INFO reported health Ready" in log and "INFO reported health Ready" in result.stderr
    user = scenario.username
    passwd = {line.split(":")[0]: line.split(":") for line in read(root / "etc/passwd").splitlines()}
    assert user in passwd, "useradd --prefix created the user"
    uid, gid = int(passwd[user][2]), int(passwd[user][3])
    home = root / "home" / user
    assert home.is_dir()
    shadow = {line.split(":")[0]: line.split(":") for line in read(root / "etc/shadow").splitlines()}
    hashed = shadow[user][1]
    assert hashed.startswith("$6$") and sha512_crypt.verify(scenario.password, hashed)
    salt = hashed.split("$")[2]
    assert len(salt) == 10, "Provisioning.PasswordCryptSaltLength"

    keys = read(home / ".ssh/authorized_keys")
    assert scenario.ssh_public_key(0).split()[1] in keys, "key given by value"
    assert scenario.ssh_public_key(1).split()[1] in keys, "key given as a certificate"
    assert owner(home / ".ssh") == (uid, gid, 0o700)
    assert owner(home / ".ssh/authorized_keys") == (uid, gid, 0o600)
    private = home / ".ssh/id_rsa"
    assert owner(private) == (uid, gid, 0o600)
    assert read(private).startswith("-----BEGIN")
    assert read(private.with_name("id_rsa.pub")).startswith("ssh-rsa ")

    sudoers = root / "etc/sudoers.d/waagent"
    assert read(sudoers) .endswith(f"{user} ALL=(ALL) ALL\n")
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440

    dropin = read(root / "etc/ssh/sshd_config.d/00-waagent.conf")
    assert "PasswordAuthentication yes" in dropin  # the scenario allows passwords
    assert "ClientAliveInterval 180" in dropin
    check = subprocess.run(
        ["unshare", "--mount", "sh", "-c",
         'mount --bind "$1/etc/ssh" /etc/ssh && mount -t tmpfs t /run && mkdir /run/sshd '
         '&& sshd -t -f /etc/ssh/sshd_config', "sh", str(root)],
        capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert (root / "etc/ssh/ssh_host_rsa_key.pub").exists()

    assert read(root / "etc/hostname") == f"{scenario.hostname}\n"
    assert scenario.hostname in read(root / "etc/hosts")
    lib = root / "var/lib/waagent"
    assert read(lib / "published_hostname").strip() == scenario.hostname
    assert stat.S_IMODE((lib / "CustomData").stat().st_mode) == 0o600
    assert read(lib / "provisioned").strip() == scenario.vm_id
    ovf_copy = read(lib / "ovf-env.xml")
    assert scenario.password not in ovf_copy
    assert stat.S_IMODE((lib / "ovf-env.xml").stat().st_mode) == 0o600

    assert harness.health() == [("NotReady", "Provisioning", "Provisioning"),
                                ("Ready", None, None)]
    properties = harness.fabric.record.role_properties()
    assert any("CertificateThumbprint" in str(p) for p in properties)

    # The password is in no file but the shadow hash, and in no log or output.
    leaks = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
             and scenario.password.encode() in p.read_bytes()]
    assert leaks == []
    assert scenario.password not in result.stdout + result.stderr


def test_boot_order_overlaps_the_key_generation_and_reports_ready_before_the_disk(
        harness: Harness) -> None:
    """The certificates wait for the transport key pair: everything that does not need
    them runs first; Ready goes out before the host key report, the hostname publish and
    the resource disk."""
    harness.run(check=True)
    tasks = harness.last_report()["tasks"]
    order = sorted((entry["start"], name) for name, entry in tasks.items() if "start" in entry)
    position = {name: index for index, (_start, name) in enumerate(order)}
    before_certificates = ["gather:goalstate", "hostname:set", "user:account", "user:password",
                           "ssh:hostkeys", "ssh:config", "ssh:reload"]
    for name in before_certificates:
        assert position[name] < position["ssh:certificates"], order
    # The OVF names a key and a key pair by thumbprint: their certificates come first.
    for name in ("ssh:authorized_keys", "ssh:keypairs"):
        assert position["ssh:certificates"] < position[name] < position["report:ready"]
    fetched = harness.fabric.record.requests(route="certificates")
    ready = harness.fabric.record.health_reports()[-1]
    assert ready["state"] == "Ready" and len(fetched) == 1 and fetched[0]["time"] < ready["time"]
    for name in ("report:hostkey", "certificates:install", "gather:extensions",
                 "publish:hostname", "disk:partition", "disk:swapfile"):
        assert position["report:ready"] < position[name], order


def test_second_boot_runs_only_the_goal_state_check(harness: Harness) -> None:
    harness.run(check=True)
    reports = len(harness.health())
    fetched = len(harness.fabric.record.requests(route="goalstate"))
    harness.run(check=True)
    assert harness.ran() == {"gather:goalstate"}
    assert len(harness.health()) == reports, "nothing new reported"
    # One GET, and no version check: that is for first contact.
    assert len(harness.fabric.record.requests(route="goalstate")) == fetched + 1
    assert len(harness.fabric.record.requests(route="versions")) == 1


def test_work_that_needs_an_unchanged_goal_state_does_not_fetch_it_again(
        harness: Harness) -> None:
    harness.run(check=True)
    lib = harness.root / "var/lib/waagent"
    # Delivered in order: the SSH key's and the key pair's (the OVF names them), then the
    # extension's.
    unnamed = harness.scenario.thumbprints()[2]
    (lib / f"{unnamed}.crt").unlink()  # the certificates check finds work to do
    fetched = len(harness.fabric.record.requests(route="goalstate"))
    harness.run(check=True)
    assert "certificates:install" in harness.ran()
    assert len(harness.fabric.record.requests(route="goalstate")) == fetched + 1


def test_a_missing_certificate_the_ovf_names_is_fetched_again_before_ready(
        harness: Harness) -> None:
    harness.run(check=True)
    key_pair = harness.root / f"var/lib/waagent/{harness.scenario.thumbprints()[1]}.prv"
    key_pair.unlink()
    fetched = len(harness.fabric.record.requests(route="certificates"))
    harness.run(check=True)
    # Fetched once, by ssh:certificates; the key tasks' inputs did not change.
    assert harness.ran() == {"gather:goalstate", "ssh:certificates"}
    assert len(harness.fabric.record.requests(route="certificates")) == fetched + 1
    assert key_pair.exists()


def keys_by_value_scenario() -> Scenario:
    """The default scenario with every SSH key by value and no key pair: nothing on the
    way to Ready needs a certificate."""
    scenario = default_scenario()
    scenario.ssh_keys = [k for k in scenario.ssh_keys if not k.as_certificate]
    scenario.key_pairs = []
    return scenario


def test_keys_by_value_only_need_no_certificate_before_ready(tmp_path: Path) -> None:
    """Neither a key nor a key pair by thumbprint: ssh:certificates has nothing to fetch,
    the certificates are still installed (the extensions need them)."""
    need_root()
    need_tools("useradd", "chpasswd", "ssh-keygen", "visudo", "sshd", "unshare")
    with Fabric(keys_by_value_scenario()) as fabric:
        harness = Harness(tmp_path, fabric)
        harness.run(check=True)
        tasks = harness.last_report()["tasks"]
        assert tasks["ssh:certificates"]["result"] == "up-to-date"
        assert tasks["certificates:install"]["result"] == "changed"
        # Fetched after Ready: nothing on the way to Ready waited for the transport key.
        ready = next(h for h in fabric.record.health_reports() if h["state"] == "Ready")
        assert fabric.record.requests(route="certificates")[0]["time"] > ready["time"]
        assert list((harness.root / "var/lib/waagent").glob("*.crt"))
        assert harness.health()[-1] == ("Ready", None, None)
        harness.run(check=True)
        assert harness.ran() == {"gather:goalstate"}


def test_certificates_failing_after_ready_are_no_provisioning_failure(tmp_path: Path) -> None:
    """With every key by value the certificates come after Ready: their failure is the
    run's (the next run fetches them again), not a ProvisioningFailed after Ready."""
    need_root()
    need_tools("useradd", "chpasswd", "ssh-keygen", "visudo", "sshd", "unshare")
    with Fabric(keys_by_value_scenario()) as fabric:
        harness = Harness(tmp_path, fabric)
        fabric.inject("certificates", status=404, count=2)  # both ciphers refused
        result = harness.run()
        assert result.returncode != 0
        assert harness.last_report()["tasks"]["certificates:install"]["result"] == "failed"
        assert harness.health() == [("NotReady", "Provisioning", "Provisioning"),
                                    ("Ready", None, None)]
        harness.run(check=True)
        assert harness.ran() == {"gather:goalstate", "certificates:install"}
        assert list((harness.root / "var/lib/waagent").glob("*.crt"))


def test_a_no_op_boot_imports_none_of_the_heavy_modules_and_syncs_nothing(
        harness: Harness) -> None:
    harness.run(check=True)
    state_db = harness.root / "var/lib/waagent/graph-state.sqlite3"
    before = state_db.stat().st_mtime_ns, state_db.read_bytes()
    argv = [sys.executable, "-c", WATCHED_BOOT, "provision", f"root={harness.root}",
            f"conf={harness.conf}", f"wireserver={harness.fabric.wire_url}",
            f"media={harness.media}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert harness.ran() == {"gather:goalstate"}
    check_watched_boot(result.stdout)
    # Nothing changed: the state database is not rewritten (graph/doit_private.py's AgentStateDB).
    assert (state_db.stat().st_mtime_ns, state_db.read_bytes()) == before


def test_host_key_type_change_reruns_exactly_the_host_key_tasks(harness: Harness) -> None:
    harness.run(check=True)
    harness.set_conf(BASE_CONF + "Provisioning.SshHostKeyPairType=ed25519\n")
    harness.run(check=True)
    assert harness.ran() == {"gather:goalstate", "ssh:hostkeys", "ssh:reload", "report:hostkey"}
    keys = sorted(p.name for p in (harness.root / "etc/ssh").glob("ssh_host_*"))
    assert keys == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    reasons = harness.last_report()["tasks"]["ssh:hostkeys"]["reason"]
    assert any("Provisioning.SshHostKeyPairType: rsa -> ed25519" in r for r in reasons)


def test_new_certificates_in_a_new_incarnation_are_installed_without_the_key_tasks(
        harness: Harness) -> None:
    """A certificate the OVF does not name is no input of the SSH key tasks."""
    harness.run(check=True)
    incarnation = harness.fabric.bump_incarnation(add_certificates=["rotated"])
    fetched = len(harness.fabric.record.requests(route="goalstate"))
    harness.run(check=True)
    assert harness.ran() == {"gather:goalstate", "gather:extensions", "certificates:install",
                             "report:ready"}
    stored = json.loads((harness.root / "var/lib/waagent/facts/certificates.json").read_text())
    assert len(stored["thumbprints"]) == 4
    assert harness.health()[-1] == ("Ready", None, None)
    # The changed document is fetched once: the check keeps it for the parser.
    assert len(harness.fabric.record.requests(route="goalstate")) == fetched + 1
    stored = json.loads((harness.root / "var/lib/waagent/facts/goalstate.json").read_text())
    assert stored["incarnation"] == str(incarnation)


def assert_failed(reports: list[tuple[str, str | None, str | None]], text: str) -> None:
    """The last health report is ProvisioningFailed and its description says `text`."""
    state, substatus, description = reports[-1]
    assert (state, substatus) == ("NotReady", "ProvisioningFailed")
    assert description is not None and text in description, description


def failing_run(harness: Harness, text: str) -> None:
    result = harness.run()
    assert result.returncode != 0
    assert_failed(harness.health(), text)


def provision_user(tmp_path: Path, username: str, conf: str = BASE_CONF) -> Harness:
    """A first boot of the default scenario with another UserName (the fabric stopped)."""
    need_root()
    scenario = default_scenario()
    scenario.username = username
    with Fabric(scenario) as fabric:
        harness = Harness(tmp_path, fabric, conf=conf)
        harness.run()
        harness.reports = harness.health()
    return harness


def test_invalid_user_name_fails_provisioning_with_the_reason(tmp_path: Path) -> None:
    harness = provision_user(tmp_path, "Bad User")
    assert_failed(harness.reports, "UserName 'Bad User' in ovf-env.xml is not a valid user name")
    assert "Bad User" not in read(harness.root / "etc/passwd")


def test_malformed_key_fails_provisioning_and_keeps_files(tmp_path: Path) -> None:
    need_root()
    scenario = default_scenario()
    scenario.ssh_keys[0].value = "ssh-ed25519 !!!not-base64!!!"
    with Fabric(scenario) as fabric:
        harness = Harness(tmp_path, fabric)
        failing_run(harness, "is not an OpenSSH public key")
        assert not (harness.root / "home/azureuser/.ssh/authorized_keys").exists()


def test_sshd_rejecting_the_config_fails_provisioning_and_restores(harness: Harness) -> None:
    main = harness.root / "etc/ssh/sshd_config"
    main.write_text(main.read_text() + "NoSuchSshdOption yes\n")
    before = main.read_bytes()
    failing_run(harness, "sshd -t rejects")
    assert main.read_bytes() == before
    assert not (harness.root / "etc/ssh/sshd_config.d/00-waagent.conf").exists()


def test_no_sshd_include_edits_main_file_before_match(tmp_path: Path) -> None:
    need_root()
    with Fabric(default_scenario()) as fabric:
        harness = Harness(tmp_path, fabric)
        main = harness.root / "etc/ssh/sshd_config"
        main.write_text("PasswordAuthentication no\nUsePAM yes\nMatch User backup\n"
                        "  PasswordAuthentication no\n")
        harness.run(check=True)
        text = main.read_text()
        head, match = text.split("Match User backup")
        assert "PasswordAuthentication yes" in head and "PasswordAuthentication no" not in head
        assert "PasswordAuthentication no" in match, "Match blocks are left alone"


def test_system_user_is_refused_unless_allowed(tmp_path: Path) -> None:
    refused = provision_user(tmp_path / "refused", "daemon")
    assert_failed(refused.reports, "is a system account")
    allowed = provision_user(tmp_path / "allowed", "daemon",
                             conf=BASE_CONF + "Provisioning.AllowResetSysUser=y\n")
    assert allowed.reports[-1] == ("Ready", None, None)
    assert (allowed.root / "etc/sudoers.d/waagent").read_text().endswith("daemon ALL=(ALL) ALL\n")


def test_facts_command_shows_no_secret(harness: Harness) -> None:
    harness.run(check=True)
    out = harness.run(command="facts")
    assert out.returncode == 0, out.stderr
    assert '"distro"' in out.stdout and "debian" in out.stdout
    assert harness.scenario.password not in out.stdout
    custom = harness.scenario.custom_data or ""
    assert custom.strip().splitlines()[-1] not in out.stdout


def test_provisioning_disabled_reports_ready_and_creates_nothing(tmp_path: Path) -> None:
    need_root()
    with Fabric(default_scenario()) as fabric:
        harness = Harness(tmp_path, fabric, conf=BASE_CONF + "Provisioning.Enabled=n\n")
        harness.run(check=True)
        assert "azureuser" not in read(harness.root / "etc/passwd")
        assert harness.health()[-1] == ("Ready", None, None)
        assert harness.ran() >= {"gather:vm", "gather:goalstate", "report:provisioned",
                                 "report:ready"}
        assert not any(t.startswith(("user:", "ssh:")) for t in harness.ran())


def test_cloud_init_provisions_we_wait_for_it_then_report_ready(tmp_path: Path) -> None:
    need_root()
    with Fabric(default_scenario()) as fabric:
        harness = Harness(tmp_path, fabric,
                          conf="ResourceDisk.Format=n\nProvisioning.Agent=cloud-init\n")
        # What cloud-init leaves when it has provisioned the VM.
        lib = harness.root / "var/lib/waagent"
        lib.mkdir(parents=True)
        (lib / "ovf-env.xml").write_text("<Environment/>")
        (harness.root / "etc/ssh/ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAA x\n")
        harness.run(check=True)
        assert "report:cloudinit" in harness.ran()
        assert harness.health()[-1] == ("Ready", None, None)
        assert "azureuser" not in read(harness.root / "etc/passwd")


def test_new_vm_id_from_a_captured_image_provisions_again(harness: Harness) -> None:
    harness.run(check=True)
    old_key = read(harness.root / "etc/ssh/ssh_host_rsa_key.pub")
    # The image is captured and booted as a new VM: DMI shows another id.
    from tests.sandbox import product_uuid_for

    new_id = "11111111-2222-3333-4444-555555555555"
    (harness.root / "sys/class/dmi/id/product_uuid").write_text(product_uuid_for(new_id))
    harness.run(check=True)
    ran = harness.ran()
    assert {"user:account", "ssh:hostkeys", "report:provisioned", "report:ready"} <= ran
    assert read(harness.root / "etc/ssh/ssh_host_rsa_key.pub") != old_key
    assert read(harness.root / "var/lib/waagent/provisioned").strip() == new_id
    assert [h[:2] for h in harness.health()[-2:]] == [("NotReady", "Provisioning"),
                                                     ("Ready", None)]


def test_provision_guest_agent_false_stands_the_agent_down(tmp_path: Path) -> None:
    need_root()
    scenario = default_scenario()
    scenario.provision_guest_agent = False
    with Fabric(scenario) as fabric:
        harness = Harness(tmp_path, fabric)
        harness.run(check=True)
        assert (harness.root / "var/lib/waagent/disable_agent").exists()
        assert harness.health()[-1] == ("Ready", None, None)


def test_a_goal_state_gone_stale_while_read_is_fetched_again(harness: Harness) -> None:
    """HTTP 410 on the certificates: the platform moved on; take the new goal state."""
    harness.fabric.inject("certificates", status=410, count=1)
    harness.run(check=True)
    assert harness.health()[-1] == ("Ready", None, None)
    goal_states = harness.fabric.record.requests(route="goalstate")
    assert len(goal_states) >= 2, "the goal state was fetched again after the 410"


def test_platform_errors_are_retried(harness: Harness) -> None:
    harness.fabric.inject("goalstate", status=503, count=2)
    harness.fabric.inject("health", status=500, count=1)
    harness.run(check=True)
    assert harness.health()[-1] == ("Ready", None, None)
