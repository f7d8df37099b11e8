"""Provisioning media: ISO 9660 and UDF images carrying ovf-env.xml, read back with pycdlib."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pycdlib
import pytest

from fabric import build_media, default_scenario, read_ovf_from_media, render_ovf


def read(path: Path, **where: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, **where)
        return out.getvalue()
    finally:
        iso.close()


def test_iso_image_carries_ovf_env(tmp_path: Path) -> None:
    s = default_scenario()
    path = build_media(s, tmp_path / "ovf.iso", "iso")
    expected = render_ovf(s).encode()
    assert read(path, iso_path="/OVF_ENV.XML;1") == expected
    assert read(path, joliet_path="/ovf-env.xml") == expected
    assert read(path, rr_path="/ovf-env.xml") == expected
    assert read_ovf_from_media(path) == expected.decode()


def test_udf_image_carries_ovf_env(tmp_path: Path) -> None:
    s = default_scenario()
    path = build_media(s, tmp_path / "ovf.udf", "udf")
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    assert iso.has_udf()
    iso.close()
    assert read(path, udf_path="/ovf-env.xml") == render_ovf(s).encode()
    assert read_ovf_from_media(path) == render_ovf(s)


def test_bad_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_media(default_scenario(), tmp_path / "x", "vfat")  # type: ignore[arg-type]


def test_cli_media_and_ovf(tmp_path: Path) -> None:
    out = tmp_path / "dvd.iso"
    done = subprocess.run([sys.executable, "-m", "fabric.cli", "media", "default", str(out), "--format", "udf"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert read_ovf_from_media(out) == render_ovf(default_scenario())
    ovf = subprocess.run([sys.executable, "-m", "fabric.cli", "ovf", "default"], capture_output=True, text=True, timeout=60)
    assert ovf.returncode == 0 and ovf.stdout == render_ovf(default_scenario())


def test_cli_bad_scenario_exits_2_naming_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("username: a\nextensions:\n  - name: X\n    stat: enabled\n")
    done = subprocess.run([sys.executable, "-m", "fabric.cli", "media", str(bad), str(tmp_path / "x.iso")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{bad}:4:" in done.stderr and "extensions[0].stat" in done.stderr
