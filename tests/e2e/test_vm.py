"""End to end: a real Debian VM root in namespaces, the fabric next door, a real ssh in.

The life of one VM, in order (the tests of this module share it and run in file order):
boot-time provisioning, a login with the scenario's key, a second boot that changes
nothing, a waagent.conf edit that reruns only its task, and deprovision+user that leaves
no secret. It is lived once per Debian release in SUITES: Debian 12 (Python 3.11) and
Debian 13 (Python 3.13, no `crypt` module), so the agent is known to run on both.

Then, on Debian 12 only, a VM whose scenario has no password (sudo without one) and a lab
that fails half-way and still leaves nothing behind: the first tests the agent's logic,
which the Python version does not change, and the second the harness; each costs a VM.
See tests/e2e/harness.py for the lab.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric.scenario import default_scenario_path
from tests.e2e import harness
from tests.e2e.conftest import checked_lab, leftovers, need_lab
from tests.support.debian_root import SUITES as RELEASES
from tests.support.noop_boot import WATCHED_BOOT, check_watched_boot

pytestmark = [pytest.mark.e2e, pytest.mark.root]

# The Debian releases the VM's life is lived on (tests/support/debian_root.SUITES).
SUITES = ("bookworm", "trixie")

SWAP_MB = 64
EDITED_SWAP_MB = 96
CONF = """\
Provisioning.Agent=waagent
Provisioning.SshHostKeyPairType=ed25519
Provisioning.RegenerateSshHostKeyPair=y
Provisioning.MonitorHostName=y
ResourceDisk.Format=y
ResourceDisk.Filesystem=ext4
ResourceDisk.MountPoint=/mnt/resource
ResourceDisk.EnableSwap=y
ResourceDisk.SwapSizeMB={swap_mb}
Provisioning.DecodeCustomData=y
Provisioning.ExecuteCustomData=y
"""
# What the agent logs each time it runs the custom data script.
CUSTOM_DATA_RAN = "custom data script exited with status 0"
NO_PASSWORD_SCENARIO = """\
hostname: e2e-nopass
username: operator1
seed: e2e-nopass
disable_ssh_password_authentication: true
ssh_keys:
  - name: operator-key
resource_disk_size_mb: 1024
"""


# What the agent does in-process on the VM's python3, with its dependencies as installed
# there: cryptography's compiled bindings (the transport pair without openssl) and the
# crypt(3) hashes passlib makes without the `crypt` module (gone in Python 3.13), bcrypt's
# included. argv: the top-level modules of the agent's dependencies, each imported.
IN_PROCESS = """\
import datetime, importlib, importlib.util, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from passlib.hash import bcrypt, sha512_crypt
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LinuxTransport")])
(x509.CertificateBuilder().subject_name(name).issuer_name(name)
 .public_key(key.public_key()).serial_number(1)
 .not_valid_before(datetime.datetime(2020, 1, 1))
 .not_valid_after(datetime.datetime(2040, 1, 1))
 .sign(key, hashes.SHA256()))
assert sha512_crypt.using(salt="salt", rounds=5000).hash("x").startswith("$6$salt$")
assert bcrypt.using(ident="2a", rounds=4).hash("x").startswith("$2a$04$")
print("%d.%d" % sys.version_info[:2], importlib.util.find_spec("crypt") is not None)
"""


def dependency_modules() -> list[str]:
    """Top-level modules of the agent's dependencies, as this environment has them."""
    dists = {dist.metadata["Name"] for dist in harness.dependency_closure("waagent-graph")}
    return sorted(module for module, owners in importlib.metadata.packages_distributions().items()
                  if dists & set(owners))


def boot_and_provision(vm_lab: harness.Lab) -> harness.Captured:
    """What a boot does: DHCP on eth0, the agent, then sshd."""
    vm_lab.vm.dhcp()
    provisioned = vm_lab.vm.run(["waagent", "provision"], check=False)
    vm_lab.vm.start_sshd()
    return provisioned


def active_swaps(vm_lab: harness.Lab) -> dict[str, int]:
    """Swap areas as the VM sees them: path -> size in KiB."""
    lines = vm_lab.vm.run(["cat", "/proc/swaps"]).stdout.splitlines()[1:]
    return {line.split()[0]: int(line.split()[2]) for line in lines}


def mounted_at(vm_lab: harness.Lab, target: str) -> list[str]:
    """Sources mounted at `target` in the VM."""
    mounts = vm_lab.vm.run(["cat", "/proc/self/mounts"]).stdout.splitlines()
    return [line.split()[0] for line in mounts if line.split()[1] == target]


def files_holding(top: Path, secrets: list[str], skip: tuple[str, ...]) -> dict[str, str]:
    """Regular files below `top` containing any secret: path -> which one (no symlinks,
    no special files; `skip` are paths relative to top, e.g. the kernel's file systems)."""
    needles = [(secret, secret.encode()) for secret in secrets]
    found = {}
    for directory, dirs, files in os.walk(top):
        relative = os.path.relpath(directory, top)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(relative, d)) not in skip]
        for name in files:
            path = os.path.join(directory, name)
            if os.path.normpath(os.path.join(relative, name)) in skip or \
                    not os.path.isfile(path) or os.path.islink(path):
                continue
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            for secret, needle in needles:
                if needle in data:
                    found["/" + os.path.relpath(path, top)] = secret
    return found


@pytest.fixture(scope="module", params=SUITES)
def suite(request: pytest.FixtureRequest) -> str:
    """The Debian release of the VM (pytest runs the whole life on one, then the next)."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def booted(suite: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Lab]:
    """The default scenario's VM on `suite`, booted once for the tests of this module."""
    need_lab(suite=suite)
    work = tmp_path_factory.mktemp(f"e2e-vm-{suite}")
    with checked_lab(work, default_scenario_path(), conf=CONF.format(swap_mb=SWAP_MB),
                     suite=suite) as lab:
        yield lab


@pytest.fixture(scope="module")
def first_boot(booted: harness.Lab) -> harness.Captured:
    """The agent's run at the VM's first boot."""
    return boot_and_provision(booted)


@pytest.fixture
def vm_lab(booted: harness.Lab, first_boot: harness.Captured) -> harness.Lab:
    """The VM after its first boot."""
    return booted


def test_first_boot_provisions_and_reports_ready(vm_lab: harness.Lab,
                                                first_boot: harness.Captured) -> None:
    assert first_boot.returncode == 0, first_boot.output[-4000:]
    assert vm_lab.fabric.wait_for_health("Ready")
    states = [(h["state"], h["substatus"]) for h in vm_lab.fabric.health_reports()]
    assert states == [("NotReady", "Provisioning"), ("Ready", None)]
    assert not any(entry.get("result") == "failed"
                   for entry in vm_lab.run_reports()[-1]["tasks"].values())
    # The endpoint came from the DHCP lease, as on Azure; nothing could leave the VM.
    assert (vm_lab.root / "var/lib/waagent/WireServerEndpoint").read_text().strip() == \
        harness.FABRIC_ADDRESS
    assert "default" not in vm_lab.vm.run(["ip", "route"]).stdout


def test_publishing_the_hostname_leaves_one_dhcp_client(vm_lab: harness.Lab) -> None:
    clients = []
    for process in (vm_lab.vm.view / "proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if (process / "comm").read_text().strip() == "dhclient":
                clients.append((process / "cmdline").read_bytes().replace(b"\0", b" "))
    assert len(clients) == 1, clients


def test_ssh_logs_in_as_the_scenario_user(vm_lab: harness.Lab) -> None:
    scenario = vm_lab.scenario
    login = vm_lab.ssh("hostname; id -un", check=True)
    assert login.stdout.split() == [scenario.hostname, scenario.username]
    # The scenario has a password: sudo asks for it.
    sudo = vm_lab.ssh("sudo -n true")
    assert sudo.returncode != 0
    assert "a password is required" in sudo.stderr
    # The host key is the one asked for in waagent.conf, freshly made.
    host_keys = sorted(p.name for p in (vm_lab.root / "etc/ssh").glob("ssh_host_*_key"))
    assert host_keys == ["ssh_host_ed25519_key"]


def test_the_agent_runs_on_the_release_python(vm_lab: harness.Lab, suite: str) -> None:
    """The VM's python3 is its release's, and every dependency works there."""
    done = vm_lab.vm.run(["env", f"PYTHONPATH=/{harness.AGENT_DIR}", "python3", "-c",
                          IN_PROCESS, *dependency_modules()], check=False)
    assert done.returncode == 0, done.output[-4000:]
    python = RELEASES[suite].python
    has_crypt = tuple(map(int, python.split("."))) < (3, 13)
    assert done.stdout.split() == [python, str(has_crypt)]


def test_resource_disk_is_mounted_with_swap(vm_lab: harness.Lab) -> None:
    partition = f"/dev/{vm_lab.vm.disk_name}p1"
    assert mounted_at(vm_lab, "/mnt/resource") == [partition]
    assert active_swaps(vm_lab) == {"/mnt/resource/swapfile": SWAP_MB * 1024 - 4}
    readme = vm_lab.ssh("cat /mnt/resource/DATALOSS_WARNING_README.txt", check=True)
    assert "THIS IS A TEMPORARY DISK" in readme.stdout


def test_second_boot_changes_nothing(vm_lab: harness.Lab) -> None:
    before = len(vm_lab.fabric.health_reports())
    state_db = vm_lab.root / "var/lib/waagent/graph-state.sqlite3"
    stored = state_db.stat().st_mtime_ns, state_db.read_bytes()
    # `waagent provision`, as the launcher runs it, watched (tests/support/noop_boot.py).
    boot = vm_lab.vm.run(["env", f"PYTHONPATH=/{harness.AGENT_DIR}", "python3", "-c",
                          WATCHED_BOOT, "provision"])
    assert vm_lab.ran() == {"gather:goalstate"}
    check_watched_boot(boot.stdout)
    assert (state_db.stat().st_mtime_ns, state_db.read_bytes()) == stored
    assert len(vm_lab.fabric.health_reports()) == before  # Ready was already said
    assert vm_lab.ssh("hostname", check=True).stdout.strip() == vm_lab.scenario.hostname


def test_config_edit_reruns_only_its_task(vm_lab: harness.Lab) -> None:
    (vm_lab.root / "etc/waagent.conf").write_text(CONF.format(swap_mb=EDITED_SWAP_MB))
    vm_lab.vm.run(["waagent", "provision"])
    assert vm_lab.ran() == {"gather:goalstate", "disk:swapfile"}
    assert active_swaps(vm_lab) == {"/mnt/resource/swapfile": EDITED_SWAP_MB * 1024 - 4}
    vm_lab.vm.run(["waagent", "provision"])
    assert vm_lab.ran() == {"gather:goalstate"}


def shadow_hash(root: Path, user: str) -> str:
    lines = (root / "etc/shadow").read_text().splitlines()
    return next(line.split(":")[1] for line in lines if line.split(":")[0] == user)


def test_admin_changes_and_a_lost_state_db_repeat_nothing(vm_lab: harness.Lab) -> None:
    """Provision once (DESIGN rule 5): after the first boot the admin owns the VM, and
    doit's state DB is a cache whose loss repeats no one-shot work."""
    root, user = vm_lab.root, vm_lab.scenario.username
    log = root / "var/log/waagent.log"
    assert log.read_text().count(CUSTOM_DATA_RAN) == 1
    host_key = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text()
    password = shadow_hash(root, user)
    narrowed = f"{user} ALL=(ALL) /usr/bin/true\n"
    (root / "etc/sudoers.d/waagent").write_text(narrowed)
    vm_lab.vm.run(["hostnamectl", "hostname", "admin-renamed"], check=False)
    (root / "etc/hostname").write_text("admin-renamed\n")
    vm_lab.vm.run(["hostname", "admin-renamed"])

    (root / "var/lib/waagent/graph-state.sqlite3").unlink()
    boot = vm_lab.vm.run(["waagent", "provision"], check=False)
    assert boot.returncode == 0, boot.output[-4000:]
    assert not vm_lab.ran() & {"hostname:set", "user:account", "user:password", "user:sudoers",
                               "ssh:hostkeys", "ssh:config", "ssh:authorized_keys",
                               "customdata:save", "customdata:run"}
    assert (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text() == host_key
    assert shadow_hash(root, user) == password
    assert (root / "etc/sudoers.d/waagent").read_text() == narrowed
    assert vm_lab.vm.run(["hostname"]).stdout.strip() == "admin-renamed"
    assert (root / "var/lib/waagent/published_hostname").read_text().strip() == "admin-renamed"
    assert log.read_text().count(CUSTOM_DATA_RAN) == 1


def test_deprovision_user_leaves_no_secret(vm_lab: harness.Lab) -> None:
    scenario = vm_lab.scenario
    assert scenario.password and scenario.custom_data
    secrets = [scenario.password, scenario.custom_data.strip(),
               base64.b64encode(scenario.custom_data.encode()).decode()]
    # What the search skips: the kernel's file systems and the swap file (memory pages).
    skip = ("proc", "sys", "dev", "mnt/resource/swapfile")
    # The search finds what provisioning left (the custom data is kept in Lib.Dir) ...
    assert files_holding(vm_lab.vm.view, secrets, skip)
    done = vm_lab.vm.run(["waagent", "-deprovision+user", "-force"], check=False)
    assert done.returncode == 0, done.output[-4000:]
    # ... and nothing after deprovision, anywhere the VM can see.
    assert files_holding(vm_lab.vm.view, secrets, skip) == {}
    passwd = (vm_lab.root / "etc/passwd").read_text()
    assert f"\n{scenario.username}:" not in passwd
    assert not (vm_lab.root / "etc/sudoers.d/waagent").exists()
    assert not (vm_lab.root / "home" / scenario.username).exists()
    assert vm_lab.ssh("true").returncode != 0  # the user cannot log in any more


def test_scenario_without_password_gets_sudo_without_one(tmp_path: Path) -> None:
    need_lab()
    scenario_file = tmp_path / "nopass.yaml"
    scenario_file.write_text(NO_PASSWORD_SCENARIO)
    with checked_lab(tmp_path / "lab", scenario_file, conf=CONF.format(swap_mb=SWAP_MB)) as lab:
        provisioned = boot_and_provision(lab)
        assert provisioned.returncode == 0, provisioned.output[-4000:]
        lab.fabric.wait_for_health("Ready")
        login = lab.ssh("hostname; id -un; sudo -n true && echo sudo-ok", check=True)
        assert login.stdout.split() == ["e2e-nopass", "operator1", "sudo-ok"]
        config = lab.vm.run(["sshd", "-T"]).stdout
        assert "passwordauthentication no" in config


def test_a_failing_lab_leaves_nothing_behind(tmp_path: Path) -> None:
    need_lab()
    work = tmp_path / "lab"
    tag = harness.unique_tag()
    with pytest.raises(RuntimeError, match="half-way"), \
            harness.lab(work, default_scenario_path(), conf=CONF.format(swap_mb=SWAP_MB),
                        tag=tag) as lab:
        lab.vm.dhcp()
        lab.vm.run(["waagent", "provision"])
        assert active_swaps(lab)  # a swap area, a mount, daemons: all must go
        raise RuntimeError("the test failed half-way")
    assert leftovers(work, tag) == []
    assert not (work / "vm").exists()
