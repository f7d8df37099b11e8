"""system/: Root, Runner (plan, chroot, redaction, timeouts) and atomic file writes."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

import pytest

from system import CommandFailed, FileSystem, Root, Runner
from system.redact import RedactingFilter, redact, register_secret


def test_root_maps_system_paths(tmp_path: Path) -> None:
    root = Root(tmp_path)
    assert root / "/etc/hostname" == tmp_path / "etc/hostname"
    assert root / "etc/hostname" == tmp_path / "etc/hostname"
    assert root.system_path(tmp_path / "etc/hostname") == "/etc/hostname"
    assert root.system_path(tmp_path) == "/"
    assert not root.is_host
    assert Root("/").is_host
    assert Root("/") / "/proc/net/route" == Path("/proc/net/route")


def test_runner_runs_argv_with_lc_all(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path))
    result = runner.probe(["sh", "-c", "echo $LC_ALL; echo $0", "arg0"])
    assert result.stdout.split() == ["C", "arg0"]
    assert result.ok


def test_runner_change_raises_with_command_and_stderr(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path))
    with pytest.raises(CommandFailed) as err:
        runner.change(["sh", "-c", "echo boom >&2; exit 3"], why="test")
    assert "exit status 3" in str(err.value)
    assert "boom" in str(err.value)
    assert err.value.returncode == 3


def test_runner_timeout_and_missing_tool(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path))
    with pytest.raises(CommandFailed, match="timed out"):
        runner.probe(["sleep", "5"], timeout=0.2)
    with pytest.raises(CommandFailed, match="command not found"):
        runner.probe(["no-such-tool-xyz"])


def test_pipe_passes_binary_output_straight_to_the_second_command(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path))
    # More than a pipe's buffer each way, every byte value: the feeding thread and the
    # binary pass-through are what is tested.
    data = tmp_path / "data"
    data.write_bytes(bytes(range(256)) * 1024)
    result = runner.probe_pipe(["cat", str(data)], ["sha256sum"])
    assert result.ok and result.stdout.split()[0] == hashlib.sha256(data.read_bytes()).hexdigest()
    text = "line\n" * 50000
    assert runner.probe_pipe(["cat"], ["wc", "-l"], input=text).stdout.strip() == "50000"
    assert runner.planned == []  # read-only: nothing recorded


def test_pipe_reports_the_failing_command(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path))
    first_fails = runner.probe_pipe(["sh", "-c", "echo no key >&2; exit 3"], ["cat"])
    assert first_fails.returncode == 3 and "no key" in first_fails.stderr
    second_fails = runner.probe_pipe(["echo", "x"], ["sh", "-c", "cat >/dev/null; echo bad >&2; exit 5"])
    assert second_fails.returncode == 5 and "bad" in second_fails.stderr
    with pytest.raises(CommandFailed, match="timed out"):
        runner.probe_pipe(["sleep", "5"], ["cat"], timeout=0.2)
    with pytest.raises(CommandFailed, match="command not found"):
        runner.probe_pipe(["echo"], ["no-such-tool-xyz"])


def test_started_command_runs_beside_the_caller(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path))
    marker = tmp_path / "done"
    started = runner.start(["sh", "-c", f"sleep 0.2; echo made > {marker}; echo out"],
                           why="background work")
    assert not marker.exists(), "start() must return before the command finishes"
    result = started.wait()
    assert result.ok and result.stdout == "out\n" and marker.read_text() == "made\n"
    assert started.wait() is result  # waiting again gives the same result
    assert [c.why for c in runner.planned] == ["background work"]


def test_started_command_failures(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path))
    with pytest.raises(CommandFailed, match="exit status 4: bad"):
        runner.start(["sh", "-c", "echo bad >&2; exit 4"], why="t").wait()
    assert runner.start(["false"], why="t").wait(check=False).returncode == 1
    with pytest.raises(CommandFailed, match="command not found"):
        runner.start(["no-such-tool-xyz"], why="t")
    with pytest.raises(CommandFailed, match="timed out after"):
        runner.start(["sleep", "5"], why="t", timeout=0.2).wait()


def test_started_command_can_be_polled_and_stopped(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path))
    slow = runner.start(["sleep", "30"], why="t")
    quick = runner.start(["true"], why="t")
    quick.wait()
    assert quick.done() and not slow.done()
    slow.stop()
    assert slow.done() and slow.wait(check=False).returncode == -9


def test_started_command_in_plan_mode_is_only_recorded(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path), plan=True)
    marker = tmp_path / "ran"
    result = runner.start(["touch", str(marker)], why="would touch").wait()
    assert result.planned and not marker.exists()


def test_plan_mode_records_and_does_not_run(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path), plan=True)
    marker = tmp_path / "ran"
    result = runner.change(["touch", str(marker)], why="would touch")
    assert result.planned and result.ok
    assert not marker.exists()
    assert [str(c) for c in runner.planned] == [f"run touch {marker}  (would touch)"]
    # probes still run in plan mode: they are read-only
    assert runner.probe(["true"]).ok


def test_secret_input_goes_to_stdin_and_never_to_logs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    runner = Runner(Root(tmp_path))
    out = tmp_path / "out"
    runner.change(["sh", "-c", f"cat > {out}"], why="store", secret_input="user:S3cret-pw\n")
    assert out.read_text() == "user:S3cret-pw\n"
    assert "S3cret-pw" not in caplog.text
    assert all("S3cret-pw" not in str(c) for c in runner.planned)


def test_registered_secrets_are_redacted_everywhere(tmp_path: Path) -> None:
    register_secret("hunter2-secret")
    assert redact("password is hunter2-secret!") == "password is <redacted>!"
    record = logging.LogRecord("x", logging.INFO, "f", 1, "pw=%s", ("hunter2-secret",), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "pw=<redacted>"
    runner = Runner(Root(tmp_path), plan=True)
    runner.change(["echo", "hunter2-secret"], why="x")
    assert "hunter2-secret" not in str(runner.planned[0])
    with pytest.raises(CommandFailed) as err:
        Runner(Root(tmp_path)).change(["sh", "-c", "echo hunter2-secret >&2; false"], why="x")
    assert "hunter2-secret" not in str(err.value)


def test_chroot_mode_prefixes_commands(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path), plan=True, chroot=True)
    runner.change(["useradd", "bob"], why="user")
    assert runner.planned[0].target == f"chroot {tmp_path} useradd bob"
    assert Runner(Root("/"), plan=True, chroot=True).show(["id"]) == "id"


def test_atomic_write_mode_owner_and_only_when_changed(tmp_path: Path) -> None:
    fs = FileSystem(Runner(Root(tmp_path)))
    target = tmp_path / "etc/sudoers.d/waagent"
    assert fs.write(target, "bob ALL=(ALL) ALL\n", why="sudo", mode=0o440)
    assert target.read_text() == "bob ALL=(ALL) ALL\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o440
    assert not fs.write(target, "bob ALL=(ALL) ALL\n", why="sudo", mode=0o440)
    # an existing file keeps its mode and owner when none is given
    os.chmod(target, 0o600)
    assert fs.write(target, "new\n", why="edit")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not list(target.parent.glob(".waagent.*")), "no temporary file left behind"


def test_write_failure_leaves_old_file_and_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = FileSystem(Runner(Root(tmp_path)))
    target = tmp_path / "f"
    target.write_text("old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        fs.write(target, "new", why="x")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_secret_write_removes_the_copies_of_killed_writes(tmp_path: Path) -> None:
    # A SIGKILL between mkstemp and the rename left the key in a temporary file.
    fs = FileSystem(Runner(Root(tmp_path)))
    killed = tmp_path / ".ABC.prv.88pj0216"
    killed.write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
    killed.chmod(0o600)
    kept = [tmp_path / ".ABC.prv.new-123", tmp_path / ".ABC.crt.88pj0216",
            tmp_path / ".ABC.prv.TOOLONG123", tmp_path / ".ABC.prv.abcd1234"]
    for path in kept:
        path.write_text("not a killed write of ABC.prv")
        path.chmod(0o600)
    kept[-1].chmod(0o644)  # the right name, not the secret's mode: not the agent's copy
    assert fs.write(tmp_path / ".ABC.prv", "x", why="not a secret")
    assert killed.exists(), "only a secret's own write looks for its killed copies"
    assert fs.write(tmp_path / "ABC.prv", "key", why="key", mode=0o600, secret=True)
    assert not killed.exists()
    assert all(path.exists() for path in kept)


def test_plan_mode_files_unchanged(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path), plan=True)
    fs = FileSystem(runner)
    assert fs.write(tmp_path / "etc/hostname", "vm\n", why="hostname")
    assert fs.mkdir(tmp_path / "var/lib/waagent", why="state", mode=0o700)
    (tmp_path / "x").write_text("x")
    assert fs.remove(tmp_path / "x", why="cleanup")
    assert fs.truncate(tmp_path / "x", why="empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    assert [c.kind for c in runner.planned] == ["write", "mkdir", "remove", "truncate"]
    assert runner.planned[0].target == "/etc/hostname"


def test_fs_remove_move_truncate(tmp_path: Path) -> None:
    fs = FileSystem(Runner(Root(tmp_path)))
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_text("x")
    (tmp_path / "machine-id").write_text("abc\n")
    assert fs.move(tmp_path / "d/f", tmp_path / "e/f", why="aside")
    assert (tmp_path / "e/f").exists()
    assert fs.remove(tmp_path / "d", why="tree")
    assert not fs.remove(tmp_path / "d", why="tree")
    assert fs.truncate(tmp_path / "machine-id", why="new id on boot")
    assert (tmp_path / "machine-id").read_text() == ""


# -- root= is a jail (DESIGN rule 8) ----------------------------------------------------------

def _image(tmp_path: Path) -> tuple[Root, Path, Path]:
    """An image root at tmp/img and a directory beside it, outside the root."""
    base, outside = tmp_path / "img", tmp_path / "outside"
    for directory in ("etc", "var", "run/systemd/resolve", "srv"):
        (base / directory).mkdir(parents=True, exist_ok=True)
    outside.mkdir()
    (outside / "hosts").write_text("outside\n")
    return Root(base), base, outside


def test_root_reroots_absolute_links_as_a_chroot_would(tmp_path: Path) -> None:
    from system.errors import PathEscapesRoot

    root, base, outside = _image(tmp_path)
    (base / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    # An absolute link naming a host directory that exists means that path in the image.
    (base / "var/log").symlink_to(str(outside))
    assert root / "var/log/waagent.log" == base / str(outside).lstrip("/") / "waagent.log"
    # The final component is the entry itself (lstat, readlink, unlink act on the link)...
    assert root / "etc/resolv.conf" == base / "etc/resolv.conf"
    assert (root / "etc/resolv.conf").is_symlink()
    # ...and follow() is what open() in a chroot reads.
    assert root.follow("/etc/resolv.conf") == base / "run/systemd/resolve/stub-resolv.conf"
    assert root.follow("/etc") == base / "etc"
    assert root.contain(base / "var/log/x") == base / str(outside).lstrip("/") / "x"
    with pytest.raises(PathEscapesRoot):
        root.contain(outside / "hosts")


def test_root_resolves_relative_links_from_their_directory(tmp_path: Path) -> None:
    root, base, _ = _image(tmp_path)
    (base / "srv/alt").mkdir()
    (base / "etc/alt").symlink_to("../srv/alt")
    (base / "srv/alt/inner").symlink_to("./../alt/.")
    assert root / "etc/alt/x" == base / "srv/alt/x"
    assert root / "/etc/alt/inner/y" == base / "srv/alt/y"
    # `..` after a link goes up from where the link led, as in a chroot.
    assert root / "etc/./alt/../hostname" == base / "srv/hostname"
    assert root / "etc/./missing/../hostname" == base / "etc/hostname"
    assert root.follow("etc/alt") == base / "srv/alt"


def test_root_refuses_dotdot_and_links_above_it(tmp_path: Path) -> None:
    from system.errors import AgentError, PathEscapesRoot

    root, base, outside = _image(tmp_path)
    with pytest.raises(PathEscapesRoot, match=r"/\.\./etc/passwd"):
        root / "../etc/passwd"
    with pytest.raises(PathEscapesRoot):
        root / "etc/../../etc"
    (base / "etc/sudoers.d").symlink_to("../../outside")
    with pytest.raises(PathEscapesRoot) as err:
        root / "/etc/sudoers.d/waagent"
    assert isinstance(err.value, AgentError)
    assert err.value.system_path == "/etc/sudoers.d/waagent"
    assert err.value.link == "/etc/sudoers.d"
    assert str(base) in str(err.value) and "/etc/sudoers.d" in str(err.value)
    # An absolute target climbing above / is refused too (a chroot would clamp it).
    (base / "etc/up").symlink_to("/../..")
    with pytest.raises(PathEscapesRoot, match="/etc/up"):
        root.follow("etc/up")
    # A final link out of the root: the entry is fine, following it is not.
    (base / "etc/hosts").symlink_to("../../outside/hosts")
    assert root / "etc/hosts" == base / "etc/hosts"
    with pytest.raises(PathEscapesRoot, match="/etc/hosts"):
        root.follow("etc/hosts")


def test_root_refuses_link_loops(tmp_path: Path) -> None:
    from system.errors import SymlinkLoop

    root, base, _ = _image(tmp_path)
    (base / "etc/a").symlink_to("b")
    (base / "etc/b").symlink_to("/etc/a")
    with pytest.raises(SymlinkLoop, match="/etc/a"):
        root / "etc/a/x"
    with pytest.raises(SymlinkLoop):
        root.follow("etc/b")
    (base / "etc/self").symlink_to("self")
    with pytest.raises(SymlinkLoop):
        root.follow("etc/self")


def test_root_resolves_dangling_links_inside_it(tmp_path: Path) -> None:
    root, base, _ = _image(tmp_path)
    (base / "var/log").symlink_to("/nowhere/log")
    (base / "etc/hostname").symlink_to("/nonexistent/hostname")
    assert root / "var/log/waagent.log" == base / "nowhere/log/waagent.log"
    assert root.follow("etc/hostname") == base / "nonexistent/hostname"
    assert root / "missing/dir/../file" == base / "missing/file"


def test_host_root_stays_a_plain_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    host = Root("/")

    def no_lstat(*args: object, **kwargs: object) -> None:
        raise AssertionError("the host root must not look at the file system")

    monkeypatch.setattr(os, "lstat", no_lstat)
    monkeypatch.setattr(os, "readlink", no_lstat)
    assert host / "/proc/self/mounts" == Path("/proc/self/mounts")
    assert host.follow("etc/hostname") == Path("/etc/hostname")
    assert host.contain(Path("/var/log/x")) == Path("/var/log/x")


def test_fs_never_acts_outside_the_root(tmp_path: Path) -> None:
    from system.errors import PathEscapesRoot

    root, base, outside = _image(tmp_path)
    fs = FileSystem(Runner(root))
    (base / "etc/sudoers.d").symlink_to("../../outside")
    before = sorted(p.name for p in outside.iterdir())
    # A path joined below a linked directory (pathlib does not ask the Root) is caught too.
    joined = (root / "etc") / "sudoers.d" / "waagent"
    for act in (lambda: fs.write(joined, "x\n", why="t", mode=0o440, owner=(0, 0)),
                lambda: fs.mkdir(joined.parent, why="t", mode=0o700),
                lambda: fs.chmod(joined.parent, 0o777, why="t"),
                lambda: fs.chown(joined.parent / "hosts", (1, 1), why="t"),
                lambda: fs.remove(joined.parent / "hosts", why="t"),
                lambda: fs.truncate(joined.parent / "hosts", why="t")):
        with pytest.raises(PathEscapesRoot):
            act()
    assert sorted(p.name for p in outside.iterdir()) == before
    assert (outside / "hosts").read_text() == "outside\n"
    assert stat.S_IMODE(outside.stat().st_mode) != 0o777


def test_fs_follows_absolute_links_inside_the_root(tmp_path: Path) -> None:
    root, base, outside = _image(tmp_path)
    fs = FileSystem(Runner(root))
    (base / "home/u").mkdir(parents=True)
    (base / "home/u/.ssh").symlink_to(str(outside))
    inside = base / str(outside).lstrip("/")
    assert fs.mkdir(root / "home/u/.ssh", why="t", mode=0o700, owner=(0, 0))
    assert inside.is_dir() and stat.S_IMODE(inside.stat().st_mode) == 0o700
    assert (base / "home/u/.ssh").is_symlink(), "mkdir follows the link inside the root"
    fs.write(root / "home/u/.ssh" / "authorized_keys", "key\n", why="t", mode=0o600)
    assert (inside / "authorized_keys").read_text() == "key\n"
    (base / "etc/keys").symlink_to(str(outside / "hosts"))
    (inside / "hosts").write_text("in the image\n")
    (outside / "hosts").chmod(0o644)
    assert fs.chmod(root / "etc/keys", 0o600, why="t")
    assert stat.S_IMODE((inside / "hosts").stat().st_mode) == 0o600
    assert fs.truncate(root / "etc/keys", why="t")
    assert (inside / "hosts").read_text() == ""
    assert (outside / "hosts").read_text() == "outside\n"
    assert stat.S_IMODE((outside / "hosts").stat().st_mode) == 0o644


def test_fs_write_replaces_a_final_link_and_remove_removes_the_link(tmp_path: Path) -> None:
    from system.errors import PathEscapesRoot

    root, base, outside = _image(tmp_path)
    fs = FileSystem(Runner(root))
    (base / "etc/machine-id").write_text("abc\n")
    (base / "var/lib/dbus").mkdir(parents=True)
    (base / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    assert fs.remove(root / "var/lib/dbus/machine-id", why="t")
    assert not (base / "var/lib/dbus/machine-id").is_symlink()
    assert (base / "etc/machine-id").read_text() == "abc\n", "the link went, not its target"
    # A write never goes through a final link: the file replaces the link (as rename does).
    (base / "etc/hostname").symlink_to("/srv/hostname")
    assert fs.write(root / "etc/hostname", "vm\n", why="t")
    assert not (base / "etc/hostname").is_symlink()
    assert (base / "etc/hostname").read_text() == "vm\n"
    # ...but a final link out of the root is refused: its content decided nothing.
    (base / "etc/hosts").symlink_to("../../outside/hosts")
    with pytest.raises(PathEscapesRoot):
        fs.write(root / "etc/hosts", "x\n", why="t")
    assert (base / "etc/hosts").is_symlink() and (outside / "hosts").read_text() == "outside\n"
    # A rename moves the link itself.
    (base / "etc/link").symlink_to(str(outside / "hosts"))
    assert fs.move(root / "etc/link", root / "etc/link.aside", why="t")
    assert (base / "etc/link.aside").is_symlink() and not (base / "etc/link").is_symlink()


def test_no_image_binary_runs_without_chroot(tmp_path: Path) -> None:
    from system import osutil
    from system.errors import PathEscapesRoot, UnsafeOperation

    root, base, _ = _image(tmp_path)
    (base / "usr/sbin").mkdir(parents=True)
    (base / "usr/sbin/sshd").write_text("#!/bin/sh\nexit 0\n")
    (base / "usr/sbin/sshd").chmod(0o755)
    runner = Runner(root)
    with pytest.raises(UnsafeOperation, match="chroot=y"):
        runner.probe([str(base / "usr/sbin/sshd"), "-t"])
    with pytest.raises(UnsafeOperation, match="chroot=y"):
        runner.probe(["chroot", str(base), "/usr/sbin/sshd", "-t"])
    # A host tool's arguments naming paths in the image are resolved inside it first.
    (base / "etc/passwd-link").symlink_to("/etc/passwd")
    shown = runner.probe(["echo", str(base / "etc/passwd-link"), "plain"]).stdout.split()
    assert shown == [str(base / "etc/passwd"), "plain"]
    (base / "etc/out").symlink_to("../../outside")
    with pytest.raises(PathEscapesRoot):
        runner.change(["touch", str(base / "etc/out/x")], why="t")
    assert not (tmp_path / "outside/x").exists()
    argv = osutil.sshd_test_argv(runner, "/etc/ssh")
    assert argv is None or ("chroot" not in argv and not any(str(base) + "/usr" in a for a in argv))
    # With chroot=y the image's own sshd runs, inside the image.
    chrooted = Runner(root, chroot=True)
    argv = osutil.sshd_test_argv(chrooted, "/etc/ssh")
    assert argv is not None and argv[0] == "sshd"
    assert chrooted.show(argv).startswith(f"chroot {base} sshd -t")


def test_password_hash_on_an_image_root_edits_shadow_without_running_its_tools(
        tmp_path: Path) -> None:
    """`chpasswd -R` would chroot into the image: on an image root without chroot=y the
    agent edits /etc/shadow itself, through an absolute link as a chroot reads it."""
    from system import osutil

    (tmp_path / "etc/real").mkdir(parents=True)
    shadow = tmp_path / "etc/real/shadow"
    shadow.write_text("root:*:19000:0:99999:7:::\nbob:!:19000:0:99999:7:::\n")
    shadow.chmod(0o640)
    (tmp_path / "etc/shadow").symlink_to("/etc/real/shadow")
    runner = Runner(root=Root(tmp_path))
    ran: list[list[str]] = []
    runner.change = lambda argv, **kw: ran.append(argv)  # type: ignore[method-assign]
    osutil.set_password_hash(runner, "bob", "$6$salt$hash", why="test")
    assert ran == []
    lines = shadow.read_text().splitlines()
    assert lines[0] == "root:*:19000:0:99999:7:::"
    assert lines[1].startswith("bob:$6$salt$hash:") and lines[1].endswith(":0:99999:7:::")
    assert (shadow.stat().st_mode & 0o777) == 0o640
    with pytest.raises(CommandFailed, match="no line"):
        osutil.set_password_hash(runner, "carol", "$6$x$y", why="test")
