"""The distribution's ways of changing the system, in one place per concern.

Each function returns argument lists (or runs them through the Runner) for the
root at hand: the running system, a sandbox root (`--prefix`/`-R` options of
the shadow tools), or an image root entered with chroot (the Runner adds
`chroot ROOT` itself). Which family a system belongs to is a fact (facts.distro);
how each family does a thing is here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from system.errors import CommandFailed
from system.runner import Result, Runner

# Groups a new administrator joins where they exist (checked against /etc/group).
ADMIN_GROUPS: dict[str, tuple[str, ...]] = {
    "debian": (),
    "rhel": (),
    "suse": (),
    # Flatcar/CoreOS: sudo rights come from these groups, not from sudoers alone.
    "coreos": ("sudo", "docker", "portage"),
    "unknown": (),
}


def _root_option(runner: Runner, flag: str) -> list[str]:
    """`--prefix ROOT` / `-R ROOT` for the shadow tools when working on a sandbox root."""
    if runner.root.is_host or runner.chroot:
        return []
    return [flag, str(runner.root.base)]


def useradd_argv(runner: Runner, family: str, name: str, home: str,
                 existing_groups: Sequence[str]) -> list[str]:
    """Create `name` with a home directory and bash, in the family's admin groups."""
    groups = [g for g in ADMIN_GROUPS.get(family, ()) if g in existing_groups]
    argv = ["useradd", *_root_option(runner, "--prefix"), "-m", "-d", home,
            "-s", "/bin/bash"]
    if groups:
        argv += ["-G", ",".join(groups)]
    return [*argv, name]


def set_password_hash(runner: Runner, name: str, password_hash: str, why: str) -> None:
    """Set a crypt(3) hash with `chpasswd -e` (the hash on stdin, never argv). On an image
    root without chroot=y the shadow file is edited instead: `chpasswd -R` would chroot
    into the image and could load the image's own libraries (DESIGN rule 8)."""
    if runner.root.is_host or runner.chroot:
        runner.change(["chpasswd", "-e"], why=why, secret_input=f"{name}:{password_hash}\n")
        return
    set_shadow_hash(runner, name, password_hash, why)


def shadow_with_hash(text: str, name: str, password_hash: str, today: int) -> str:
    """The shadow file's text with `name`'s hash replaced and the change dated `today`
    (days since 1970, as chpasswd does)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == name and len(fields) >= 3:
            fields[1], fields[2] = password_hash, str(today)
            lines[index] = ":".join(fields)
            return "\n".join(lines) + "\n"
    raise CommandFailed(f"user {name} has no line in the shadow file: cannot set its password")


def set_shadow_hash(runner: Runner, name: str, password_hash: str, why: str) -> None:
    """Replace the hash in the root's /etc/shadow, atomically, keeping its mode and owner."""
    import time

    from system.fs import FileSystem

    shadow = runner.root.follow("etc/shadow")
    text = shadow.read_text()
    FileSystem(runner).write(shadow, shadow_with_hash(text, name, password_hash,
                                                      int(time.time() // 86400)),
                             why=why, secret=True)


def lock_password(runner: Runner, name: str, why: str) -> Result:
    """Lock a password (`usermod -L`): the shadow hash gets a leading '!'."""
    return runner.change(["usermod", *_root_option(runner, "--prefix"), "-L", name], why=why)


def userdel_argv(runner: Runner, name: str, *, force: bool = False) -> list[str]:
    """Remove a user and its home directory (`force`: even while they are logged in)."""
    return ["userdel", *_root_option(runner, "--prefix"), *(["-f"] if force else []), "-r",
            name]


def usermod_argv(runner: Runner, *args: str) -> list[str]:
    """usermod on the root's account files."""
    return ["usermod", *_root_option(runner, "--prefix"), *args]


def systemd_running(runner: Runner) -> bool:
    """True when systemd manages the running system (installed is not enough: a chroot
    or an early boot may have the files without the manager)."""
    return (runner.root / "run/systemd/system").is_dir()


def set_running_hostname(runner: Runner, hostname: str) -> Result | None:
    """The kernel's hostname now (the static one is /etc/hostname, written as a file)."""
    if systemd_running(runner):
        return runner.live(["hostnamectl", "set-hostname", hostname], why="running hostname")
    return runner.live(["hostname", hostname], why="running hostname")


def reload_sshd(runner: Runner, service: str) -> Result | None:
    """Make a running sshd read its configuration and host keys again; an sshd that is
    not running reads them when it starts."""
    if systemd_running(runner):
        return runner.live(["systemctl", "try-reload-or-restart", service],
                           why="sshd reads changes")
    if not (runner.root / "run/sshd.pid").exists():
        runner.record("skip", f"reload {service}", "sshd is not running")
        return None
    return runner.live(["service", service, "reload"], why="sshd reads changes")


# Where ifupdown, NetworkManager's dhclient and RHEL's scripts keep dhclient's files.
_DHCLIENT_PIDS = ("/run/dhclient.{nic}.pid", "/var/run/dhclient.{nic}.pid",
                  "/run/dhclient-{nic}.pid", "/run/dhclient.pid")
_DHCLIENT_LEASES = ("/var/lib/dhcp/dhclient.{nic}.leases", "/var/lib/dhclient/dhclient-{nic}.leases",
                    "/var/lib/dhclient/dhclient.leases", "/var/lib/dhcp/dhclient.leases")


def _first_existing(runner: Runner, patterns: Sequence[str], nic: str) -> str:
    paths = [p.format(nic=nic) for p in patterns]
    return next((p for p in paths if (runner.root / p).exists()), paths[0])


def renew_dhcp(runner: Runner, dhcp_client: str | None, interface: str, why: str) -> bool:
    """A DHCP renew that keeps the address and sends the new hostname (never ifdown/ifup,
    which breaks networking on NetworkManager systems). False when no client is known."""
    if dhcp_client == "dhclient":
        # The boot's client is replaced, not joined by a second one: stop it without
        # releasing the lease (-x keeps the address), then start one with its own pid and
        # lease files, which asks for the same address again with the new host-name.
        pid = _first_existing(runner, _DHCLIENT_PIDS, interface)
        leases = _first_existing(runner, _DHCLIENT_LEASES, interface)
        if (runner.root / pid).exists():
            runner.live(["dhclient", "-x", "-pf", pid, interface], why=why, check=False)
        runner.live(["dhclient", "-1", "-nw", "-pf", pid, "-lf", leases, interface], why=why,
                    check=False)
        return True
    argv = {
        "networkd": ["networkctl", "renew", interface],
        "NetworkManager": ["nmcli", "device", "reapply", interface],
        "dhcpcd": ["dhcpcd", "--rebind", interface],
        "wicked": ["wicked", "ifreload", interface],
    }.get(dhcp_client or "")
    if argv is None:
        return False
    runner.live(argv, why=why, check=False)
    return True


def sshd_test_argv(runner: Runner, ssh_dir: str) -> list[str] | None:
    """`sshd -t` over the root's `SSH_DIR/sshd_config` as its sshd would read it, or None
    when it cannot be checked here.

    On the running system, and with chroot=y (the Runner enters the image), that
    system's own sshd. Otherwise no program of the image may run (rule 8): the host's
    sshd runs in a private mount namespace where the root's ssh directory is bound over
    SSH_DIR (its Include lines then read the image's drop-ins, not the host's) and /run
    is a private tmpfs holding the privilege separation directory and a throwaway host
    key (sshd -t wants one; the image's own keys may not exist yet). Nothing of the host
    or of the image changes. Needs root, unshare and sshd on the host.
    """
    config = ssh_dir.rstrip("/") + "/sshd_config"
    if runner.root.is_host or runner.chroot:
        return ["sshd", "-t", "-f", config]
    if (os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("sshd")
            or not shutil.which("ssh-keygen") or not os.path.isdir(ssh_dir)):
        return None
    key = "/run/sshd/check_host_key"
    script = ('mount --bind "$1" "$2" && mount -t tmpfs tmpfs /run && mkdir /run/sshd '
              f'&& ssh-keygen -q -t ed25519 -N "" -f {key} '
              f'&& exec sshd -t -f "$3" -h {key}')
    # The main file by its real path: an absolute link in the image names a path that
    # only exists inside the image.
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(runner.root.follow(ssh_dir)), ssh_dir, str(runner.root.follow(config))]


def start_detached(argv: Sequence[str], output: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a long-lived process in its own session, detached from this terminal
    (`waagent -start` runs the daemon so); its output to `output`, or nowhere."""
    with open(output or os.devnull, "wb") as out:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)
