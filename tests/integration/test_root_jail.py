"""root= is a jail (DESIGN rule 8): an image whose directories link out of it never makes
the agent write, chown or chmod the build host's files.

Each directory the issue names is a symlink in a sandbox root, once relative and leaving
the root (the run is refused with an error naming the path), once absolute (followed
inside the root, as a chroot would). A directory beside the root stands for the host."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric import Fabric, default_scenario
from tests.conftest import need_root, need_tools
from tests.integration.provisioning import BASE_CONF, Harness

pytestmark = pytest.mark.root

# The system path made a link, and where inside it the agent writes.
LINKED = {
    "/etc/sudoers.d": "waagent",
    "/etc/hosts": None,
    "/home/{user}/.ssh": "authorized_keys",
    "/var/log": "waagent.log",
}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    need_root()
    need_tools("useradd", "chpasswd", "ssh-keygen", "visudo", "sshd", "unshare")
    with Fabric(default_scenario()) as fabric:
        # Host keys made here: the check of sshd_config and the report need one.
        yield Harness(tmp_path, fabric, BASE_CONF + "Provisioning.RegenerateSshHostKeyPair=y\n")


def snapshot(directory: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """Everything about a tree the agent could change: names, modes, owners, contents."""
    found = {}
    for path in [directory, *sorted(directory.rglob("*"))]:
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        found[str(path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, digest)
    return found


def outside_tree(harness: Harness) -> Path:
    """A directory of the 'host', beside the root, owned by nobody the agent creates."""
    outside = harness.tmp / "outside"
    outside.mkdir()
    (outside / "hosts").write_text("127.0.0.1 the-build-host\n")
    os.chown(outside, 4242, 4242)
    os.chown(outside / "hosts", 4242, 4242)
    return outside


def make_link(harness: Harness, system_path: str, target: str) -> Path:
    link = harness.root / system_path.format(user=harness.scenario.username).lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_dir() and not link.is_symlink():
        link.rmdir()
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("system_path", list(LINKED))
def test_relative_link_out_of_the_root_is_refused(harness: Harness, system_path: str) -> None:
    outside = outside_tree(harness)
    link = make_link(harness, system_path, "placeholder")
    wanted = outside / "hosts" if LINKED[system_path] is None else outside
    link.unlink()
    link.symlink_to(os.path.relpath(wanted, link.parent))  # ../../outside and the like
    before = snapshot(outside)

    result = harness.run()

    output = result.stdout + result.stderr
    if system_path == "/var/log":
        # Only the agent's log lives there: it is refused, and the agent logs to stderr.
        assert "WARNING no log file" in output, output
    else:
        assert result.returncode != 0, output
    assert "outside the root" in output, output
    assert system_path.format(user=harness.scenario.username) in output, output
    assert snapshot(outside) == before, "nothing outside the root written, chowned or chmodded"


@pytest.mark.parametrize("system_path", list(LINKED))
def test_absolute_link_is_followed_inside_the_root(harness: Harness, system_path: str) -> None:
    outside = outside_tree(harness)
    wanted = outside / "hosts" if LINKED[system_path] is None else outside
    make_link(harness, system_path, str(wanted))  # means <root>/<wanted> to a chroot
    in_image = harness.root / str(outside).lstrip("/")
    if system_path == "/var/log":
        in_image.mkdir(parents=True)  # the agent logs only into an existing directory
    before = snapshot(outside)

    result = harness.run()

    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(outside) == before, "nothing outside the root written, chowned or chmodded"
    name = LINKED[system_path]
    if name is None:
        # A write replaces a final link (temp file + rename), as it would in a chroot.
        hosts = harness.root / "etc/hosts"
        assert not hosts.is_symlink() and harness.scenario.hostname in hosts.read_text()
    else:
        assert (in_image / name).is_file(), sorted(map(str, harness.root.rglob("*")))
    if system_path.endswith(".ssh"):
        st = in_image.stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o700, (in_image / name).stat().st_uid)
        assert st.st_uid != 0


def test_a_final_absolute_link_is_read_inside_the_root(harness: Harness) -> None:
    """What a task reads to decide comes from the image, not from the host's file that an
    absolute link would name outside a chroot."""
    outside = outside_tree(harness)
    make_link(harness, "/etc/hosts", str(outside / "hosts"))

    harness.run()

    assert "the-build-host" not in (harness.root / "etc/hosts").read_text()


# Files the agent reads to decide, made absolute links into a directory that exists only
# inside the image: read as the host sees them they would be missing (or be the host's).
READ_THROUGH_LINKS = ("/etc/os-release", "/etc/login.defs", "/etc/hostname", "/etc/hosts",
                      "/etc/ssh/sshd_config")


def test_files_read_to_decide_are_read_inside_the_root(harness: Harness) -> None:
    real = "/image-only-" + hashlib.sha256(str(harness.root).encode()).hexdigest()[:12]
    assert not os.path.lexists(real), "the directory must exist only inside the image"
    (harness.root / "etc/hostname").write_text("image-hostname\n")
    (harness.root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tip6-localhost\n")
    for system_path in READ_THROUGH_LINKS:
        inside = harness.root / real.lstrip("/") / system_path.lstrip("/")
        inside.parent.mkdir(parents=True, exist_ok=True)
        os.rename(harness.root / system_path.lstrip("/"), inside)
        make_link(harness, system_path, f"{real}{system_path}")

    result = harness.run("verbose=y")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    image = harness.root / real.lstrip("/")
    hosts = (harness.root / "etc/hosts").read_text()
    assert "ip6-localhost" in hosts, "the image's /etc/hosts was read through its link"
    assert harness.scenario.hostname in hosts
    assert "Include /etc/ssh/sshd_config.d/*.conf" in (image / "etc/ssh/sshd_config").read_text()
    assert (harness.root / "etc/ssh/sshd_config.d/00-waagent.conf").exists(), \
        "the image's sshd_config (read through its link) includes the drop-in directory"


def test_an_agent_log_that_links_out_is_never_written(harness: Harness) -> None:
    """waagent.log itself as a link: absolute, it is followed inside the root; climbing out
    with `..`, the agent logs to stderr only. The host's file is never appended to."""
    outside = outside_tree(harness)
    log_dir = harness.root / "var/log"
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "waagent.log").symlink_to(str(outside / "hosts"))  # absolute
    (harness.root / str(outside).lstrip("/")).mkdir(parents=True)  # where it leads, inside
    before = snapshot(outside)
    assert harness.run().returncode == 0
    assert snapshot(outside) == before
    assert "reported health Ready" in (harness.root / str(outside).lstrip("/") / "hosts"
                                       ).read_text()
    (log_dir / "waagent.log").unlink()
    (log_dir / "waagent.log").symlink_to(os.path.relpath(outside / "hosts", log_dir))
    result = harness.run()
    assert snapshot(outside) == before
    assert "no log file" in result.stderr
