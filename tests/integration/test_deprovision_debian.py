"""deprovision+user on a real Debian root after a (simulated) provisioning run, in chroot mode.

The provisioned state is laid down here (useradd and chpasswd in the chroot, the agent's
files by tests.support.provisioned), so these tests do not depend on the provisioning
tasks. The host's accounts and hostname are compared before and after every run.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.debian_root import debian_root  # noqa: F401 - the fixture
from tests.support.provisioned import CUSTOM_DATA, PASSWORD, USERNAME, lay_down_provisioned_state

BIN = Path(sys.executable).parent
HOST_FILES = ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/hostname",
              "/etc/machine-id", "/etc/resolv.conf", "/etc/default/grub")
pytestmark = pytest.mark.root


def crypt_sha512(password: str, salt: str) -> str:
    from passlib.hash import sha512_crypt

    return str(sha512_crypt.using(salt=salt, rounds=5000).hash(password))


USER_HASH = crypt_sha512(PASSWORD, "usersalt1")
ROOT_HASH = crypt_sha512(PASSWORD, "rootsalt2")


def in_chroot(root: Path, *argv: str, stdin: str | None = None) -> None:
    subprocess.run(["chroot", str(root), *argv], input=stdin, text=True, check=True,
                   capture_output=True, timeout=60)


def provision(root: Path) -> None:
    """What a provisioning run leaves: the user with a password and sudo, the agent's files."""
    in_chroot(root, "useradd", "-m", "-s", "/bin/bash", USERNAME)
    in_chroot(root, "chpasswd", "-e", stdin=f"{USERNAME}:{USER_HASH}\nroot:{ROOT_HASH}\n")
    lay_down_provisioned_state(root)
    # Typed on the VM: the password in a shell history.
    (root / "root/.bash_history").write_text(f"echo '{USERNAME}:{PASSWORD}' | chpasswd\n")
    # cloud-init's log of the custom data it ran, and the seed an image builder put there.
    (root / "var/log/cloud-init-output.log").write_text(f"ran {CUSTOM_DATA}\n")
    (root / "var/lib/cloud/seed/nocloud").mkdir(parents=True)
    (root / "var/lib/cloud/seed/nocloud/meta-data").write_text("instance-id: image\n")
    (root / "etc/waagent.conf").write_text("Provisioning.DeleteRootPassword=y\n"
                                           "Provisioning.RegenerateSshHostKeyPair=y\n")
    assert list((root / "etc/ssh").glob("ssh_host_*_key")), "openssh-server made host keys"


def host_state() -> dict[str, str]:
    """Digests of the host's account and identity files, and its running hostname."""
    state = {"hostname": socket.gethostname()}
    for name in HOST_FILES:
        try:
            state[name] = hashlib.sha256(Path(name).read_bytes()).hexdigest()
        except FileNotFoundError:
            state[name] = "absent"
    return state


@pytest.fixture
def provisioned(debian_root: Path) -> Iterator[Path]:  # noqa: F811
    provision(debian_root)
    host_before = host_state()
    yield debian_root
    assert host_state() == host_before, "the run changed the host"


def waagent(args: list[str]) -> subprocess.CompletedProcess[str]:
    """The agent's command line, with stdin closed (no answer to a question)."""
    from graph.loader import KNOWN_VARS

    if "user" in KNOWN_VARS:
        argv = [str(BIN / "waagent"), *args]
    else:
        # Until graph/loader.py accepts `user=` (asked of the engine's owner), add it here.
        argv = [sys.executable, "-c",
                "import sys, graph.loader as l; l.KNOWN_VARS += ('user',); "
                "from graph.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False, cwd="/")


def files_below(root: Path) -> Iterator[Path]:
    for directory, _dirs, files in os.walk(root):
        for name in files:
            yield Path(directory) / name


def holding(root: Path, *needles: str) -> list[str]:
    """Files below root holding any of the strings."""
    found = []
    for path in files_below(root):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if any(needle.encode() in data for needle in needles):
            found.append(str(path.relative_to(root)))
    return found


def passwd_names(root: Path, file: str) -> set[str]:
    return {line.split(":")[0] for line in (root / file).read_text().splitlines() if line}


def test_deprovision_user_leaves_no_secret_and_not_the_user(provisioned: Path) -> None:
    root = provisioned
    assert holding(root, USER_HASH), "the scenario set the hash"
    out = waagent(["run", "deprovision", f"root={root}", "chroot=y", "force=y", "user=y"])
    assert out.returncode == 0, out.stdout + out.stderr

    assert holding(root, PASSWORD, CUSTOM_DATA, USER_HASH, ROOT_HASH) == []
    assert [p for p in files_below(root) if p.suffix == ".prv"] == []
    assert [p for p in files_below(root) if p.suffix == ".crt"] == []
    assert not (root / "var/lib/waagent/ovf-env.xml").exists()
    assert not (root / "var/lib/waagent/CustomData").exists()
    assert not (root / f"home/{USERNAME}").exists()
    assert not (root / "etc/sudoers.d/waagent").exists()
    for file in ("etc/passwd", "etc/shadow", "etc/group"):
        assert USERNAME not in passwd_names(root, file), file
    shadow_root = [line for line in (root / "etc/shadow").read_text().splitlines()
                   if line.startswith("root:")][0]
    assert shadow_root.split(":")[1] == "*LOCK*"
    leases = [*(root / "var/lib/dhcp").iterdir(), *(root / "run/systemd/netif/leases").iterdir(),
              *(root / "var/lib/NetworkManager").glob("*.lease")]
    assert leases == []
    assert list((root / "etc/ssh").glob("ssh_host_*")) == []
    machine_id = root / "etc/machine-id"
    assert machine_id.is_file() and machine_id.read_text() == ""
    assert (root / "etc/hostname").read_text() == "localhost.localdomain\n"
    assert sorted(p.name for p in (root / "var/lib/cloud").iterdir()) == ["seed"]
    assert not list((root / "var/log").glob("cloud-init*"))
    assert not (root / "var/log/waagent.log").exists()
    assert not (root / "var/lib/waagent/graph-state.sqlite3").exists(), \
        "the next boot provisions from scratch"
    assert f"run chroot {root} userdel -f -r {USERNAME}" in out.stdout, "inside the chroot"


def test_without_force_and_no_answer_nothing_is_removed(provisioned: Path) -> None:
    root = provisioned
    secrets_before = holding(root, PASSWORD, CUSTOM_DATA, USER_HASH, ROOT_HASH)
    keys_before = sorted((root / "etc/ssh").glob("ssh_host_*"))
    out = waagent(["run", "deprovision", f"root={root}", "chroot=y", "user=y"])
    assert out.returncode != 0
    assert "Do you want to proceed (y/n)?" in out.stdout
    assert "nothing was removed" in out.stdout + out.stderr
    assert holding(root, PASSWORD, CUSTOM_DATA, USER_HASH, ROOT_HASH) == secrets_before
    assert sorted((root / "etc/ssh").glob("ssh_host_*")) == keys_before
    assert USERNAME in passwd_names(root, "etc/passwd")
    assert (root / f"home/{USERNAME}").is_dir()
    assert (root / "etc/machine-id").read_text() != ""
    assert (root / "etc/hostname").read_text() == "vm-scenario-1\n"


def test_plan_lists_without_asking_and_changes_nothing(provisioned: Path) -> None:
    root = provisioned
    secrets_before = holding(root, PASSWORD, CUSTOM_DATA, USER_HASH, ROOT_HASH)
    out = waagent(["plan", "deprovision", f"root={root}", "chroot=y", "user=y"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Do you want to proceed" not in out.stdout
    assert f"chroot {root} userdel -f -r {USERNAME}" in out.stdout
    assert "/var/lib/waagent/ovf-env.xml" in out.stdout
    assert holding(root, PASSWORD, CUSTOM_DATA, USER_HASH, ROOT_HASH) == secrets_before


def test_deprovision_user_refuses_without_the_ovf_copy(provisioned: Path) -> None:
    root = provisioned
    (root / "var/lib/waagent/ovf-env.xml").unlink()
    out = waagent(["run", "deprovision", f"root={root}", "chroot=y", "force=y", "user=y"])
    assert out.returncode != 0
    assert "cannot tell which user was provisioned" in out.stdout + out.stderr
    assert (root / "var/lib/waagent/CustomData").exists(), "refused before removing anything"
    assert USERNAME in passwd_names(root, "etc/passwd")


def test_without_chroot_the_host_tools_edit_the_roots_files(provisioned: Path) -> None:
    root = provisioned
    out = waagent(["run", "deprovision", f"root={root}", "force=y", "user=y"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"run userdel --prefix {root} -f -r {USERNAME}" in out.stdout
    assert holding(root, PASSWORD, CUSTOM_DATA, USER_HASH, ROOT_HASH) == []
    assert USERNAME not in passwd_names(root, "etc/passwd")
    assert not (root / f"home/{USERNAME}").exists()
