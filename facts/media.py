"""The provisioning media: find the DVD, read ovf-env.xml from it, keep the password-free copy.

Where the OVF comes from, in order:
1. an image file named explicitly (the fabric emulator writes an .iso; tests and the demo);
2. a DVD device under the Root (PLATFORM.md section 1 names) with an ISO 9660/UDF signature;
3. the copy `<Lib.Dir>/ovf-env.xml` kept by an earlier boot (it holds no password).

A device is mounted read-only at DVD.MountPoint only when the kernel has a
udf or iso9660 driver (the mount goes through the Runner and is always
undone); otherwise, and for image files, the medium is read directly in
Python: pycdlib for ISO 9660 and ISO/UDF bridge media, facts.udf for pure UDF.
"""

from __future__ import annotations

import errno
import io
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from facts.ovf import MAX_OVF_BYTES, OvfEnv, OvfError, parse_ovf_env, without_password
from system.errors import CommandFailed, ProbeFailed
from system.root import Root

if TYPE_CHECKING:
    from conf.config import Config
    from system.fs import FileSystem
    from system.runner import Runner

log = logging.getLogger("waagent.facts.media")

OVF_FILE = "ovf-env.xml"
# PLATFORM.md section 1: sr0, hd[c-z], cdrom*, cd[0-9], vd[b-z].
DVD_NAMES = "sr0, hd[c-z], cdrom*, cd[0-9], vd[b-z]"
_DVD_NAME = re.compile(r"^(sr0|hd[c-z]|cdrom.*|cd[0-9]|vd[b-z])$")
_VRS_OFFSET = 16 * 2048
# Errors that mean "no disc in the drive", not "cannot tell".
_NO_MEDIUM = {errno.ENOMEDIUM, errno.ENXIO, errno.ENODEV, errno.EIO, errno.ENOENT}


class ProvisioningData(NamedTuple):
    """The parsed OVF and where it came from ("/dev/sr0", "image:...", "cache:...")."""

    env: OvfEnv
    source: str

    @property
    def from_cache(self) -> bool:
        """True when read from the kept copy: the password is gone, the VM is provisioned."""
        return self.source.startswith("cache:")


def media_signature(head: bytes) -> str | None:
    """"udf", "iso9660" or None, from the first 64 KiB of a medium (the volume recognition area)."""
    kinds: set[str] = set()
    for index in range(16):
        start = _VRS_OFFSET + index * 2048
        ident = head[start + 1:start + 6]
        if len(ident) < 5 or ident == b"\0\0\0\0\0":
            break
        if ident == b"CD001":
            kinds.add("iso9660")
        elif ident in (b"NSR02", b"NSR03"):
            kinds.add("udf")
        elif ident not in (b"BEA01", b"TEA01", b"BOOT2", b"CDW02"):
            break
    if "udf" in kinds:
        return "udf"
    return "iso9660" if kinds else None


def dvd_candidates(root: Root) -> tuple[str, ...]:
    """System paths of devices whose name may be the provisioning DVD, sorted."""
    dev = root / "dev"
    try:
        names = sorted(entry.name for entry in dev.iterdir())
    except FileNotFoundError:
        raise ProbeFailed(f"{root.system_path(dev)} does not exist: cannot look for the "
                          "provisioning DVD") from None
    except OSError as err:
        raise ProbeFailed(f"cannot list {root.system_path(dev)}: {err.strerror}") from None
    return tuple(f"/dev/{name}" for name in names if _DVD_NAME.match(name))


def dvd_devices(root: Root) -> tuple[str, ...]:
    """System paths of candidate devices that hold an ISO 9660 or UDF medium."""
    found = []
    for device in dvd_candidates(root):
        head = _read_head(root / device, device)
        if head is not None and media_signature(head) is not None:
            found.append(device)
    return tuple(found)


def read_media_file(image: Path, name: str = OVF_FILE, *, limit: int = MAX_OVF_BYTES,
                    shown: str | None = None) -> bytes | None:
    """A file from the root directory of an ISO 9660 / UDF medium, without mounting it.

    `image` is a real path (an image file or a device node). Returns None when the
    medium has no such file; raises ProbeFailed when the medium cannot be read and
    OvfError when the file is larger than `limit`.
    """
    shown = shown or str(image)
    try:
        with open(image, "rb") as handle:
            head = handle.read(_VRS_OFFSET + 16 * 2048)
            kind = media_signature(head)
            if kind is None:
                raise ProbeFailed(f"{shown}: no ISO 9660 or UDF signature")
            handle.seek(0)
            return _read_from_medium(handle, name, limit, shown)
    except OSError as err:
        raise ProbeFailed(f"cannot read {shown}: {err.strerror}") from None


def kernel_mounts_media(root: Root) -> bool:
    """True when the kernel has (or can load) a udf or iso9660 driver."""
    try:
        filesystems = (root / "proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if any(line.split()[-1:] in (["udf"], ["iso9660"]) for line in filesystems.splitlines()):
        return True
    try:
        release = (root / "proc/sys/kernel/osrelease").read_text().strip()
    except OSError:
        return False
    modules = root / "lib/modules" / release / "kernel/fs"
    return (modules / "udf").is_dir() or (modules / "isofs").is_dir()


def media_ovf_env(root: Root, image: Path | None = None,
                  ) -> tuple[OvfEnv | None, str | None, tuple[str, ...]]:
    """The OVF on the provisioning media, read without mounting or writing anything:
    (the OVF or None, where it was read, the devices or image looked at)."""
    if image is not None:
        looked: tuple[str, ...] = (f"image:{image}",)
        data = read_media_file(image)
        if data is None:
            raise OvfError(f"{image}: the image holds no {OVF_FILE}")
        return parse_ovf_env(data, source=f"{image}:{OVF_FILE}"), looked[0], looked
    looked = dvd_candidates(root)
    for device in dvd_devices(root):
        data = read_media_file(root / device, shown=device)
        if data is not None:
            return parse_ovf_env(data, source=f"{device}:{OVF_FILE}"), device, looked
    return None, None, looked


def read_ovf_from_device(device: str, fs: FileSystem, conf: Config) -> bytes | None:
    """ovf-env.xml from a DVD device (system path): mounted when possible, else read directly."""
    runner = fs.runner
    root = runner.root
    if not runner.plan and kernel_mounts_media(root):
        try:
            return _read_mounted(device, fs, conf)
        except CommandFailed as err:
            log.debug("mounting %s failed (%s); reading it directly", device, err)
    return read_media_file(root / device, shown=device)


def cached_ovf_path(root: Root, conf: Config) -> Path:
    """The real path of the kept copy, `<Lib.Dir>/ovf-env.xml`."""
    return root / conf.required_path("Lib.Dir") / OVF_FILE


def keep_ovf_copy(data: bytes, fs: FileSystem, conf: Config) -> bool:
    """Write the password-free copy (0600) when it differs; True when written."""
    copy = without_password(data)
    return fs.write(cached_ovf_path(fs.runner.root, conf), copy, mode=0o600,
                    why="keep the provisioning environment without the password")


def cached_ovf_env(root: Root, conf: Config) -> OvfEnv | None:
    """The OVF kept by an earlier boot, or None when there is no copy."""
    path = cached_ovf_path(root, conf)
    data = _read_capped(path, root.system_path(path))
    if data is None:
        return None
    return parse_ovf_env(data, source=root.system_path(path))


def provisioning_data(fs: FileSystem, conf: Config, *,
                      image: Path | None = None) -> ProvisioningData | None:
    """The OVF for this boot: from `image`, the DVD, or the kept copy; None when none exists.

    A medium read successfully refreshes the copy (through FileSystem, only when
    changed). A medium without ovf-env.xml is skipped (e.g. an unrelated ISO).
    """
    root = fs.runner.root
    sources: list[tuple[str, bytes | None]] = []
    if image is not None:
        sources.append((f"image:{image}", read_media_file(image)))
    else:
        for device in dvd_devices(root):
            sources.append((device, read_ovf_from_device(device, fs, conf)))
            if sources[-1][1] is not None:
                break
    for source, data in sources:
        if data is None:
            log.debug("%s holds no %s", source, OVF_FILE)
            continue
        env = parse_ovf_env(data, source=f"{source}:{OVF_FILE}")
        keep_ovf_copy(data, fs, conf)
        log.debug("provisioning environment read from %s", source)
        return ProvisioningData(env, source)
    if image is not None:
        raise OvfError(f"{image}: the image holds no {OVF_FILE}")
    cached = cached_ovf_env(root, conf)
    if cached is None:
        return None
    return ProvisioningData(cached, "cache:" + root.system_path(cached_ovf_path(root, conf)))


def _read_head(real: Path, shown: str) -> bytes | None:
    try:
        with open(real, "rb") as handle:
            return handle.read(_VRS_OFFSET + 16 * 2048)
    except OSError as err:
        if err.errno in _NO_MEDIUM:
            return None
        raise ProbeFailed(f"cannot read {shown}: {err.strerror}") from None


def _read_from_medium(handle: BinaryIO, name: str, limit: int, shown: str) -> bytes | None:
    from facts.iso9660 import Iso9660Error, read_iso_root_file
    from facts.udf import UdfError, read_udf_root_file

    # Our own readers first: pycdlib is slow to import, on the way to Ready. It
    # stays the last resort (Rock Ridge-only names, media our readers refuse).
    udf_error: UdfError | None = None
    for reader, error in ((read_iso_root_file, Iso9660Error), (read_udf_root_file, UdfError)):
        handle.seek(0)
        try:
            found = reader(handle, name, limit=limit)
        except error as err:
            if "more than" in str(err):
                raise OvfError(f"{shown}: {err}") from None
            log.debug("%s: %s", shown, err)
            udf_error = err if isinstance(err, UdfError) else udf_error
            continue
        if found is not None:
            return found
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    # pycdlib is a last resort on media our readers refused, hence often damaged ones:
    # besides PyCdlibException it then raises struct.error, IndexError and the like.
    handle.seek(0)
    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(handle)
    except PyCdlibException:
        if udf_error is not None:  # no ISO 9660 at all: the UDF reader's word stands
            raise ProbeFailed(f"{shown}: cannot read the UDF file system: {udf_error}") \
                from None
        return None
    except Exception as err:  # noqa: BLE001 - pycdlib's own errors on damaged structures
        raise ProbeFailed(f"{shown}: cannot read the ISO 9660/UDF file system: "
                          f"{type(err).__name__}: {err}") from None
    try:
        return _read_with_pycdlib(iso, name, limit, shown)
    except OvfError:
        raise
    except PyCdlibException as err:
        raise ProbeFailed(f"{shown}: cannot read the ISO 9660/UDF file system: {err}") from None
    except Exception as err:  # noqa: BLE001 - as above: struct.error, IndexError, ...
        raise ProbeFailed(f"{shown}: cannot read the ISO 9660/UDF file system: "
                          f"{type(err).__name__}: {err}") from None
    finally:
        iso.close()


def _read_with_pycdlib(iso: object, name: str, limit: int, shown: str) -> bytes | None:
    import pycdlib

    assert isinstance(iso, pycdlib.PyCdlib)
    wanted = _comparable(name)
    # Name spaces from the richest to plain ISO 9660 (OVF_ENV.XML;1 at level 1).
    facets = [facet for facet, present in (("udf_path", iso.has_udf()),
                                           ("joliet_path", iso.has_joliet()),
                                           ("rr_path", iso.has_rock_ridge()),
                                           ("iso_path", True)) if present]
    for facet in facets:
        for child in iso.list_children(**{facet: "/"}):
            if child is None or child.is_dir():
                continue
            identifier: bytes = child.file_identifier()
            if facet == "joliet_path":
                entry = identifier.decode("utf-16-be", errors="replace")
            elif facet == "rr_path" and child.rock_ridge is not None:
                entry = child.rock_ridge.name().decode("utf-8", errors="replace")
            else:
                entry = identifier.decode("utf-8", errors="replace")
            if _comparable(entry) != wanted:
                continue
            size = child.get_data_length()
            if size > limit:
                raise OvfError(f"{shown}: {name} is {size} bytes, more than the {limit} allowed")
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, **{facet: "/" + entry})
            return out.getvalue()
    return None


def _comparable(name: str) -> str:
    from facts.iso9660 import comparable

    return comparable(name)


def _read_capped(path: Path, shown: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_OVF_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ProbeFailed(f"cannot read {shown}: {err.strerror}") from None
    if len(data) > MAX_OVF_BYTES:
        raise OvfError(f"{shown}: larger than the {MAX_OVF_BYTES} bytes allowed for {OVF_FILE}")
    return data


def _mount_argument(runner: Runner, real: Path) -> str:
    # A chroot runner sees system paths; otherwise commands need the real ones.
    return runner.root.system_path(real) if runner.chroot else str(real)


def _read_mounted(device: str, fs: FileSystem, conf: Config) -> bytes | None:
    runner = fs.runner
    root = runner.root
    mount_point = root / conf.required_path("DVD.MountPoint")
    fs.mkdir(mount_point, mode=0o700, why="mount point for the provisioning DVD")
    target = _mount_argument(runner, mount_point)
    runner.change(["mount", "-o", "ro", "-t", "udf,iso9660",
                   _mount_argument(runner, root / device), target],
                  why="read ovf-env.xml from the provisioning DVD", check=True)
    try:
        for entry in mount_point.iterdir():
            if entry.name.lower() == OVF_FILE:
                return _read_capped(entry, f"{device}:{entry.name}")
        return None
    finally:
        _unmount(runner, target, device)


def _unmount(runner: Runner, target: str, device: str) -> None:
    try:
        runner.change(["umount", target], why="done reading the provisioning DVD", check=True)
    except CommandFailed:
        # Busy: detach now, the kernel frees it when the last user leaves.
        try:
            runner.change(["umount", "-l", target], why="detach the provisioning DVD",
                          check=True)
        except CommandFailed as err:
            raise ProbeFailed(f"{device} stays mounted at {target}: {err}; "
                              f"unmount it by hand (umount {target})") from None
