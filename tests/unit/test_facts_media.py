"""Provisioning media: ISO 9660, Joliet, Rock Ridge, ISO/UDF bridge and pure UDF images
built here with pycdlib; DVD discovery in a temporary root; the kept copy."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import pycdlib
import pytest

from conf.config import Config, parse_config
from facts import media
from facts.ovf import OvfError
from facts.udf import UdfError, read_udf_root_file
from system.errors import ProbeFailed
from system.fs import FileSystem
from system.root import Root
from system.runner import Result, Runner
from tests.support.fixtures import FIXTURES

OVF = (FIXTURES / "cloudinit/ovf/ovf-env_password_customdata.xml")

pytestmark = pytest.mark.skipif(not OVF.exists(), reason="shared fixtures not found")


def build_image(files: Mapping[str, bytes], kind: str) -> bytes:
    """An image holding files in its root: iso (level 1 names), joliet, rr, udf (bridge),
    pureudf (UDF without an ISO 9660 primary descriptor, like the platform's media)."""
    iso = pycdlib.PyCdlib()
    options: dict[str, object] = {}
    if kind == "joliet":
        options["joliet"] = 3
    elif kind == "rr":
        options["rock_ridge"] = "1.09"
    elif kind in ("udf", "pureudf"):
        options["udf"] = "2.60"
    iso.new(interchange_level=1, **options)  # type: ignore[arg-type]
    for name, data in files.items():
        level1 = name.upper().replace("-", "_") + ";1"
        paths: dict[str, str] = {"iso_path": "/" + level1}
        if kind == "joliet":
            paths["joliet_path"] = "/" + name
        elif kind == "rr":
            paths["rr_name"] = name
        elif kind in ("udf", "pureudf"):
            paths["udf_path"] = "/" + name
        iso.add_fp(io.BytesIO(data), len(data), **paths)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    image = bytearray(out.getvalue())
    if kind == "pureudf":
        # Replace the ISO 9660 descriptors by the UDF volume recognition sequence.
        start = 16 * 2048
        sectors = [bytes(image[start + i * 2048:start + (i + 1) * 2048]) for i in range(8)]
        vrs = [s for s in sectors if s[1:6] in (b"BEA01", b"NSR02", b"NSR03", b"TEA01")]
        assert len(vrs) == 3
        for index in range(8):
            image[start + index * 2048:start + (index + 1) * 2048] = (
                vrs[index] if index < len(vrs) else bytes(2048))
    return bytes(image)


KINDS = ["iso", "joliet", "rr", "udf", "pureudf"]


@pytest.fixture
def conf() -> Config:
    return parse_config("Lib.Dir=/var/lib/waagent\nDVD.MountPoint=/mnt/cdrom/secure\n")


@pytest.fixture
def root(tmp_path: Path) -> Root:
    base = tmp_path / "root"
    (base / "dev").mkdir(parents=True)
    (base / "proc/sys/kernel").mkdir(parents=True)
    (base / "proc/filesystems").write_text("nodev\tsysfs\n\text4\n")
    (base / "proc/sys/kernel/osrelease").write_text("6.1.0-test\n")
    return Root(base)


@pytest.mark.parametrize("kind", KINDS)
def test_signature_of_each_kind(kind: str) -> None:
    image = build_image({"ovf-env.xml": b"<x/>"}, kind)
    expected = "iso9660" if kind in ("iso", "joliet", "rr") else "udf"
    assert media.media_signature(image[:65536]) == expected


def test_no_signature() -> None:
    assert media.media_signature(bytes(65536)) is None
    assert media.media_signature(b"short") is None


@pytest.mark.parametrize("kind", KINDS)
def test_read_ovf_from_each_kind(kind: str, tmp_path: Path) -> None:
    data = OVF.read_bytes()
    image = tmp_path / f"{kind}.iso"
    image.write_bytes(build_image({"ovf-env.xml": data, "other.txt": b"x"}, kind))
    assert media.read_media_file(image) == data
    assert media.read_media_file(image, "missing.xml") is None


@pytest.mark.parametrize("kind", ["udf", "pureudf"])
def test_udf_file_spanning_many_blocks(kind: str, tmp_path: Path) -> None:
    data = OVF.read_bytes().replace(b"<ns1:Version>1.0",
                                    b"<!--" + b"p" * 200_000 + b"--><ns1:Version>1.0", 1)
    image = build_image({"ovf-env.xml": data}, kind)
    assert read_udf_root_file(io.BytesIO(image), "OVF-ENV.XML", limit=1 << 20) == data


def test_udf_reader_limits_and_damage() -> None:
    image = build_image({"ovf-env.xml": b"y" * 5000}, "pureudf")
    with pytest.raises(UdfError, match="more than the 100 allowed"):
        read_udf_root_file(io.BytesIO(image), "ovf-env.xml", limit=100)
    with pytest.raises(UdfError):
        read_udf_root_file(io.BytesIO(image[:258 * 2048]), "ovf-env.xml", limit=1 << 20)
    damaged = bytearray(image)
    damaged[256 * 2048 + 4] ^= 0xFF  # anchor checksum
    with pytest.raises(UdfError, match="checksum"):
        read_udf_root_file(io.BytesIO(bytes(damaged)), "ovf-env.xml", limit=1 << 20)
    with pytest.raises(UdfError):
        read_udf_root_file(io.BytesIO(bytes(600 * 2048)), "ovf-env.xml", limit=1 << 20)


@pytest.mark.parametrize("kind", ["iso", "pureudf"])
def test_oversized_ovf_on_media_is_refused(kind: str, tmp_path: Path) -> None:
    image = tmp_path / "big.iso"
    image.write_bytes(build_image({"ovf-env.xml": b" " * (media.MAX_OVF_BYTES + 1)}, kind))
    with pytest.raises(OvfError, match="more than the"):
        media.read_media_file(image)


def test_unreadable_media(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(70000))
    with pytest.raises(ProbeFailed, match="no ISO 9660 or UDF signature"):
        media.read_media_file(blank)
    with pytest.raises(ProbeFailed, match="cannot read"):
        media.read_media_file(tmp_path / "absent.iso")
    broken = bytearray(build_image({"ovf-env.xml": b"<x/>"}, "pureudf"))
    broken[256 * 2048:257 * 2048] = bytes(2048)
    (tmp_path / "broken.iso").write_bytes(bytes(broken))
    with pytest.raises(ProbeFailed, match="cannot read the UDF"):
        media.read_media_file(tmp_path / "broken.iso")


def test_dvd_discovery_by_name_and_signature(root: Root) -> None:
    dev = root / "dev"
    image = build_image({"ovf-env.xml": OVF.read_bytes()}, "pureudf")
    (dev / "sr0").write_bytes(image)
    (dev / "vdb").write_bytes(bytes(70000))  # a data disk, no signature
    (dev / "vdc").write_bytes(image)
    (dev / "sda").write_bytes(image)  # not a DVD name
    (dev / "vda").write_bytes(image)  # vda is the OS disk, never the DVD
    (dev / "cdrom").symlink_to("sr0")
    (dev / "cd1").symlink_to("absent")  # dangling: no medium, skipped
    assert media.dvd_candidates(root) == ("/dev/cd1", "/dev/cdrom", "/dev/sr0", "/dev/vdb",
                                          "/dev/vdc")
    assert media.dvd_devices(root) == ("/dev/cdrom", "/dev/sr0", "/dev/vdc")


def test_dvd_discovery_without_dev_fails(tmp_path: Path) -> None:
    with pytest.raises(ProbeFailed, match="/dev does not exist"):
        media.dvd_candidates(Root(tmp_path))


def test_provisioning_from_device_keeps_password_free_copy(root: Root, conf: Config) -> None:
    (root / "dev/sr0").write_bytes(build_image({"ovf-env.xml": OVF.read_bytes()}, "pureudf"))
    fs = FileSystem(Runner(root=root))
    found = media.provisioning_data(fs, conf)
    assert found is not None and found.source == "/dev/sr0" and not found.from_cache
    assert found.env.password == "Passw0rd!"
    copy = root / "var/lib/waagent/ovf-env.xml"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert b"Passw0rd!" not in copy.read_bytes() and b"UserPassword" not in copy.read_bytes()
    assert b"I2Nsb3VkLWNvbmZpZwpydW5jbWQ6IFtlY2hvIGhpXQo=" in copy.read_bytes()
    # Only when changed: a second read writes nothing.
    mtime = copy.stat().st_mtime_ns
    fs.runner.planned.clear()
    media.provisioning_data(fs, conf)
    assert fs.runner.planned == [] and copy.stat().st_mtime_ns == mtime


def test_later_boot_reads_the_copy(root: Root, conf: Config) -> None:
    fs = FileSystem(Runner(root=root))
    assert media.provisioning_data(fs, conf) is None  # no DVD, no copy: nothing to provision
    (root / "dev/sr0").write_bytes(build_image({"ovf-env.xml": OVF.read_bytes()}, "iso"))
    media.provisioning_data(fs, conf)
    (root / "dev/sr0").unlink()
    later = media.provisioning_data(fs, conf)
    assert later is not None and later.from_cache
    assert later.source == "cache:/var/lib/waagent/ovf-env.xml"
    assert later.env.password is None and later.env.username == "test-user"


def test_image_option(tmp_path: Path, root: Root, conf: Config) -> None:
    image = tmp_path / "fabric.iso"
    image.write_bytes(build_image({"ovf-env.xml": OVF.read_bytes()}, "udf"))
    fs = FileSystem(Runner(root=root))
    found = media.provisioning_data(fs, conf, image=image)
    assert found is not None and found.source == f"image:{image}"
    empty = tmp_path / "empty.iso"
    empty.write_bytes(build_image({"readme.txt": b"x"}, "iso"))
    with pytest.raises(OvfError, match="holds no ovf-env.xml"):
        media.provisioning_data(fs, conf, image=empty)


def test_bad_ovf_on_media_is_an_error_and_leaves_no_copy(tmp_path: Path, root: Root,
                                                          conf: Config) -> None:
    image = tmp_path / "bad.iso"
    image.write_bytes(build_image({"ovf-env.xml": b"<Environment/>"}, "iso"))
    with pytest.raises(OvfError, match="bad.iso:ovf-env.xml"):
        media.provisioning_data(FileSystem(Runner(root=root)), conf, image=image)
    assert not (root / "var/lib/waagent/ovf-env.xml").exists()


def test_plan_mode_reads_but_writes_nothing(root: Root, conf: Config) -> None:
    (root / "dev/sr0").write_bytes(build_image({"ovf-env.xml": OVF.read_bytes()}, "pureudf"))
    runner = Runner(root=root, plan=True)
    found = media.provisioning_data(FileSystem(runner), conf)
    assert found is not None and found.env.username == "test-user"
    assert not (root / "var/lib/waagent/ovf-env.xml").exists()
    assert [c.kind for c in runner.planned] == ["write"]


def test_corrupt_copy_is_an_error(root: Root, conf: Config) -> None:
    copy = root / "var/lib/waagent/ovf-env.xml"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"garbage")
    with pytest.raises(OvfError, match="/var/lib/waagent/ovf-env.xml: not well-formed"):
        media.provisioning_data(FileSystem(Runner(root=root)), conf)


class MountingRunner(Runner):
    """Stands in for mount/umount: 'mounts' by unpacking the image into the mount point."""

    def __init__(self, root: Root, fail_mount: bool = False) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, ...]] = []
        self.fail_mount = fail_mount

    def change(self, argv: Sequence[str], *, why: str, **_: object) -> Result:  # type: ignore[override]
        self.calls.append(tuple(argv))
        if argv[0] == "mount":
            if self.fail_mount:
                from system.errors import CommandFailed
                raise CommandFailed("mount: unknown filesystem type 'udf'", 32)
            device, target = Path(argv[-2]), Path(argv[-1])
            data = media.read_media_file(device)
            assert data is not None
            (target / "ovf-env.xml").write_bytes(data)
        elif argv[0] == "umount":
            for entry in Path(argv[-1]).iterdir():
                entry.unlink()
        return Result(tuple(argv), 0, "", "")


def test_mounts_when_the_kernel_can_and_always_unmounts(root: Root, conf: Config) -> None:
    (root / "proc/filesystems").write_text("nodev\tsysfs\n\tudf\n")
    (root / "dev/sr0").write_bytes(build_image({"ovf-env.xml": OVF.read_bytes()}, "iso"))
    runner = MountingRunner(root=root)
    found = media.provisioning_data(FileSystem(runner), conf)
    assert found is not None and found.env.password == "Passw0rd!"
    mount_point = str(root / "mnt/cdrom/secure")
    assert runner.calls == [
        ("mount", "-o", "ro", "-t", "udf,iso9660", str(root / "dev/sr0"), mount_point),
        ("umount", mount_point),
    ]
    assert stat.S_IMODE(os.stat(mount_point).st_mode) == 0o700


def test_failed_mount_falls_back_to_reading_directly(root: Root, conf: Config) -> None:
    (root / "lib/modules/6.1.0-test/kernel/fs/udf").mkdir(parents=True)
    assert media.kernel_mounts_media(root)
    (root / "dev/sr0").write_bytes(build_image({"ovf-env.xml": OVF.read_bytes()}, "pureudf"))
    runner = MountingRunner(root=root, fail_mount=True)
    found = media.provisioning_data(FileSystem(runner), conf)
    assert found is not None and found.env.username == "test-user"
    assert [c[0] for c in runner.calls] == ["mount"]


def test_kernel_without_drivers_is_not_asked_to_mount(root: Root) -> None:
    assert not media.kernel_mounts_media(root)


@pytest.mark.parametrize("fmt", ["iso", "udf"])
def test_reads_a_fabric_built_image(fmt: str, tmp_path: Path, root: Root, conf: Config) -> None:
    fabric_media = pytest.importorskip("fabric.media")
    fabric_scenario = pytest.importorskip("fabric.scenario")
    scenario = fabric_scenario.default_scenario()
    image = fabric_media.build_media(scenario, tmp_path / f"ovf.{fmt}", fmt)
    found = media.provisioning_data(FileSystem(Runner(root=root)), conf, image=image)
    assert found is not None
    env = found.env
    assert (env.username, env.hostname, env.password) == ("azureuser", "demo-vm",
                                                          "Demo-Passw0rd!")
    assert env.disable_ssh_password_authentication is False
    assert env.provision_guest_agent is True
    assert env.custom_data is not None
    assert len(env.public_keys) == 2 and len(env.key_pairs) == 1
    assert any(k.value and k.value.startswith("ssh-ed25519 ") for k in env.public_keys)
    assert any(k.value is None and k.fingerprint for k in env.public_keys)
    # The same image as the DVD in the root, read without mounting.
    (root / "dev/sr0").write_bytes(image.read_bytes())
    assert media.dvd_devices(root) == ("/dev/sr0",)
    from_dvd = media.provisioning_data(FileSystem(Runner(root=root)), conf)
    assert from_dvd is not None and from_dvd.env == env


def test_utf16_ovf_provisions_and_the_copy_is_utf8(root: Root, conf: Config) -> None:
    text = OVF.read_text(encoding="utf-8").replace('encoding="utf-8"', 'encoding="utf-16"')
    (root / "dev/sr0").write_bytes(build_image({"ovf-env.xml": text.encode("utf-16")}, "udf"))
    fs = FileSystem(Runner(root=root))
    found = media.provisioning_data(fs, conf)
    assert found is not None and found.env.password == "Passw0rd!"
    copy = (root / "var/lib/waagent/ovf-env.xml").read_bytes()
    assert copy.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    assert b"Passw0rd!" not in copy and b"UserPassword" not in copy
    (root / "dev/sr0").unlink()
    later = media.provisioning_data(fs, conf)
    assert later is not None and later.from_cache
    assert later.env == found.env._replace(password=None)
