"""system/unpack.py: hostile zips are refused before anything is written; a good one
unpacks atomically with its scripts executable."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from system.errors import PathEscapesRoot
from system.fs import FileSystem
from system.root import Root
from system.runner import Runner
from system.unpack import UnsafeArchive, check_zip, unpack_zip

TARGET = "var/lib/waagent/Hostile.Handler-1.0"


def make_zip(*members: tuple[str, bytes | str, int]) -> bytes:
    """A zip of (name, content, unix mode with file type) members, written as given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content, mode in members:
            info = zipfile.ZipInfo(name)
            # Mode 0: a zip made on Windows (MS-DOS attributes only, here "archive").
            info.create_system = 3 if mode else 0
            info.external_attr = mode << 16 if mode else 0x20
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, content)
    return buffer.getvalue()


FILE = stat.S_IFREG | 0o644
SCRIPT = stat.S_IFREG | 0o755
LINK = stat.S_IFLNK | 0o777
DIR = stat.S_IFDIR | 0o755


@pytest.fixture
def world(tmp_path: Path) -> tuple[FileSystem, Path, Path]:
    """A FileSystem on a sandbox root, the handler directory in it, and the test's whole
    directory (the sandbox and what stands for the host beside it)."""
    root = tmp_path / "vm"
    (root / "var/lib/waagent").mkdir(parents=True)
    (tmp_path / "host-etc").mkdir()
    (tmp_path / "host-etc" / "passwd").write_text("root:x:0:0\n")
    fs = FileSystem(Runner(Root(root)))
    return fs, root / TARGET, tmp_path


def snapshot(top: Path) -> dict[str, bytes | str]:
    tree: dict[str, bytes | str] = {}
    for path in sorted(top.rglob("*")):
        key = str(path.relative_to(top))
        if path.is_symlink():
            tree[key] = "-> " + os.readlink(path)
        elif path.is_file():
            tree[key] = path.read_bytes()
        else:
            tree[key] = "dir"
    return tree


def refused(world: tuple[FileSystem, Path, Path], data: bytes, *needles: str) -> UnsafeArchive:
    """Unpacking `data` is refused with a message holding `needles`, and nothing changed."""
    fs, target, top = world
    before = snapshot(top)
    with pytest.raises(UnsafeArchive) as err:
        unpack_zip(fs, data, target, name="hostile.zip")
    message = str(err.value)
    assert "hostile.zip" in message
    for needle in needles:
        assert needle in message, message
    assert snapshot(top) == before, "something was written"
    return err.value


@pytest.mark.parametrize(("member", "needle"), [
    ("../x", "'..'"),
    ("a/../../x", "'..'"),
    ("/etc/x", "absolute"),
    ("..\\..\\x", "backslash"),
    ("a\x00.sh", "NUL"),
])
def test_zip_slip_is_refused(world: tuple[FileSystem, Path, Path], member: str,
                             needle: str) -> None:
    # zipfile cuts a name at NUL when writing: write another byte and patch it in.
    data = make_zip(("ok.sh", "echo ok\n", SCRIPT),
                    (member.replace("\x00", "Z"), "pwned\n", FILE))
    if "\x00" in member:
        data = data.replace(member.replace("\x00", "Z").encode(), member.encode())
    err = refused(world, data, needle)
    assert err.member is not None


@pytest.mark.parametrize("link", ["/etc/passwd", "../../../host-etc/passwd", "../../x",
                                  "a/../../../x", ""])
def test_symlink_pointing_out_is_refused(world: tuple[FileSystem, Path, Path],
                                         link: str) -> None:
    data = make_zip(("bin/tool", "#!/bin/sh\n", SCRIPT), ("bin/out", link, LINK))
    refused(world, data, "'bin/out'", "symbolic link")


def test_a_write_through_a_link_is_refused(world: tuple[FileSystem, Path, Path]) -> None:
    data = make_zip(("sub/x", "x", FILE), ("d", "sub", LINK), ("d/passwd", "pwned", FILE))
    refused(world, data, "'d/passwd'", "stored below 'd', which is a link")


def test_dotdot_after_a_link_is_refused(world: tuple[FileSystem, Path, Path]) -> None:
    # `a` is the directory itself, so `a/..` is its parent: lexically `x`, really `../x`.
    data = make_zip(("a", ".", LINK), ("p", "a/../x", LINK))
    refused(world, data, "'p'", "climbs out of the link 'a'")


def test_links_that_stay_inside_are_kept(world: tuple[FileSystem, Path, Path]) -> None:
    fs, target, _ = world
    data = make_zip(("bin/tool", "#!/bin/sh\necho hi\n", SCRIPT),
                    ("lib/tool", "../bin/tool", LINK), ("here", ".", LINK))
    unpack_zip(fs, data, target, name="links.zip")
    assert os.readlink(target / "lib/tool") == "../bin/tool"
    assert (target / "lib/tool").read_text() == "#!/bin/sh\necho hi\n"
    assert os.readlink(target / "here") == "."


def test_bomb_by_declared_total_is_refused(world: tuple[FileSystem, Path, Path]) -> None:
    data = make_zip(("a", b"x" * 5000, FILE), ("b", b"y" * 5000, FILE))
    with pytest.raises(UnsafeArchive, match="10000 bytes, over the limit of 8000"):
        check_zip(data, name="big.zip", max_bytes=8000)


def test_bomb_by_ratio_is_refused(world: tuple[FileSystem, Path, Path]) -> None:
    data = make_zip(("zeros", b"\0" * (4 * 1024 * 1024), FILE))
    assert len(data) < 20_000
    refused(world, data, "zip bomb", "200 times")


def test_member_larger_than_declared_is_refused(world: tuple[FileSystem, Path, Path]) -> None:
    data = bytearray(make_zip(("a.sh", b"A" * 1000, SCRIPT)))
    # Declare 10 bytes in the local header and in the central directory.
    local = data.index(b"PK\x03\x04")
    data[local + 22:local + 26] = (10).to_bytes(4, "little")
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    refused(world, bytes(data), "'a.sh'")


def test_too_many_files_are_refused(world: tuple[FileSystem, Path, Path]) -> None:
    data = make_zip(*[(f"f{i}", "", FILE) for i in range(12)])
    with pytest.raises(UnsafeArchive, match="12 entries, over the limit of 10"):
        check_zip(data, name="many.zip", max_files=10)
    assert len(check_zip(data, name="many.zip", max_files=12)) == 12


def test_bad_crc_is_refused(world: tuple[FileSystem, Path, Path]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("run.sh", b"#!/bin/sh\necho fine\n")
    data = bytearray(buffer.getvalue())
    spot = data.index(b"echo fine")
    data[spot:spot + 4] = b"rm -"
    refused(world, bytes(data), "'run.sh'", "CRC")


@pytest.mark.parametrize("names", [("a.sh", "a.sh"), ("a.sh", "./a.sh"), ("d/", "d"),
                                   ("x/y", "x//y")])
def test_duplicate_names_are_refused(world: tuple[FileSystem, Path, Path],
                                     names: tuple[str, str]) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it writes
        data = make_zip((names[0], "1", FILE), (names[1], "2", FILE))
    refused(world, data, "twice")


@pytest.mark.parametrize(("mode", "kind"), [(stat.S_IFCHR | 0o600, "character device"),
                                            (stat.S_IFBLK | 0o600, "block device"),
                                            (stat.S_IFIFO | 0o600, "fifo"),
                                            (stat.S_IFSOCK | 0o600, "socket")])
def test_devices_and_fifos_are_refused(world: tuple[FileSystem, Path, Path], mode: int,
                                       kind: str) -> None:
    refused(world, make_zip(("dev/sda", "", mode)), kind)


def test_not_a_zip_and_encrypted(world: tuple[FileSystem, Path, Path]) -> None:
    refused(world, b"<html>Service Unavailable</html>", "not a readable zip")
    data = bytearray(make_zip(("a", "x", FILE)))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        spot = data.index(signature) + offset
        data[spot] |= 0x1  # the "encrypted" flag bit
    refused(world, bytes(data), "encrypted")


def test_file_below_a_file_is_refused(world: tuple[FileSystem, Path, Path]) -> None:
    refused(world, make_zip(("a", "x", FILE), ("a/b", "y", FILE)), "which is a file")


def test_sample_ext_unpacks_with_executable_scripts(
        world: tuple[FileSystem, Path, Path], fixtures: Path) -> None:
    fs, target, _ = world
    package = fixtures / "walinuxagent" / "ext" / "sample_ext-1.3.0.zip"
    unpack_zip(fs, package.read_bytes(), target, name=package.name)
    expected = fixtures / "walinuxagent" / "ext" / "sample_ext-1.3.0"
    assert sorted(p.name for p in target.iterdir()) == sorted(
        p.name for p in expected.iterdir())
    for path in expected.iterdir():
        assert (target / path.name).read_bytes() == path.read_bytes()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()}
    assert modes["sample.py"] == 0o755 and modes["exit.sh"] == 0o755
    # 0664 in the zip: others' write dropped, the owner's execute added (as waagent).
    assert modes["HandlerManifest.json"] == 0o744
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert fs.runner.planned[-1].kind == "unpack"


def test_modes_from_the_zip_and_windows_zips(world: tuple[FileSystem, Path, Path]) -> None:
    fs, target, _ = world
    data = make_zip(("bin/", "", DIR), ("bin/run", "x", stat.S_IFREG | 0o4777),
                    ("etc/conf", "c", 0), ("private", "p", stat.S_IFREG | 0o600))
    unpack_zip(fs, data, target, name="modes.zip")

    def mode(name: str) -> int:
        return stat.S_IMODE((target / name).stat().st_mode)

    assert mode("bin/run") == 0o755  # no setuid, no write for others
    assert mode("etc/conf") == 0o744  # no mode in the zip: 0644, plus u+x
    assert mode("private") == 0o700
    assert mode("bin") == 0o755 and mode("etc") == 0o755


def test_existing_target_is_kept_unless_replaced(world: tuple[FileSystem, Path, Path]) -> None:
    fs, target, _ = world
    unpack_zip(fs, make_zip(("v1", "1", FILE)), target, name="v1.zip")
    with pytest.raises(FileExistsError, match="already exists"):
        unpack_zip(fs, make_zip(("v2", "2", FILE)), target, name="v2.zip")
    unpack_zip(fs, make_zip(("v2", "2", FILE)), target, name="v2.zip", replace=True)
    assert [p.name for p in target.iterdir()] == ["v2"]
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_plan_mode_only_records(tmp_path: Path) -> None:
    runner = Runner(Root(tmp_path), plan=True)
    unpack_zip(FileSystem(runner), make_zip(("a", "x", FILE)), tmp_path / TARGET,
               name="a.zip")
    assert list(tmp_path.iterdir()) == []
    assert [str(c) for c in runner.planned] == [
        f"unpack /{TARGET}  (unpack a.zip (1 files))"]


def test_a_target_through_a_link_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "vm"
    (root / "var/lib").mkdir(parents=True)
    (tmp_path / "host").mkdir()
    (root / "var/lib/waagent").symlink_to("../../../host")
    fs = FileSystem(Runner(Root(root)))
    with pytest.raises(PathEscapesRoot):
        unpack_zip(fs, make_zip(("a", "x", FILE)), root / TARGET, name="a.zip")
    assert list((tmp_path / "host").iterdir()) == []


def test_a_failure_while_unpacking_leaves_nothing(world: tuple[FileSystem, Path, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fs, target, top = world
    import system.unpack as unpack

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(unpack, "_fsync", boom)
    before = snapshot(top)
    with pytest.raises(OSError, match="No space"):
        unpack_zip(fs, make_zip(("a", "x", FILE)), target, name="a.zip")
    assert snapshot(top) == before


def test_every_directory_of_the_tree_is_fsynced(world: tuple[FileSystem, Path, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Directories the archive names and those made only as parents of its members alike:
    their entries must survive a power cut once the tree is renamed into place."""
    fs, target, _ = world
    import system.unpack as unpack

    synced: list[Path] = []
    real = unpack._fsync

    def recording(directory: Path) -> None:
        synced.append(directory)
        real(directory)

    monkeypatch.setattr(unpack, "_fsync", recording)
    unpack_zip(fs, make_zip(("named/", "", DIR), ("bin/lib/run.sh", "x", SCRIPT),
                            ("top.txt", "y", FILE)), target, name="tree.zip")
    staging = synced[0]
    below = {str(p.relative_to(staging)) for p in synced[1:] if p.is_relative_to(staging)}
    assert below == {"named", "bin", "bin/lib"}
    assert synced[-1] == target.parent  # the rename into place
    assert stat.S_IMODE((target / "bin/lib").stat().st_mode) == 0o755
