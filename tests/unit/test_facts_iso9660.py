"""The ISO 9660 reader: Joliet and level-1 names, damage, and no pycdlib on the way."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from fabric import build_media, default_scenario
from facts.iso9660 import Iso9660Error, comparable, read_iso_root_file


@pytest.fixture
def fabric_iso(tmp_path: Path) -> Path:
    return build_media(default_scenario(), tmp_path / "ovf.iso")


def test_reads_the_fabric_image(fabric_iso: Path) -> None:
    with open(fabric_iso, "rb") as handle:
        data = read_iso_root_file(handle, "ovf-env.xml", limit=1 << 20)
    assert data is not None and b"LinuxProvisioningConfigurationSet" in data
    with open(fabric_iso, "rb") as handle:
        assert read_iso_root_file(handle, "missing.xml", limit=1 << 20) is None


def test_level_one_names_compare_equal() -> None:
    assert comparable("OVF_ENV.XML;1") == comparable("ovf-env.xml")


def test_damaged_media_are_refused(fabric_iso: Path) -> None:
    image = fabric_iso.read_bytes()
    with pytest.raises(Iso9660Error):
        read_iso_root_file(io.BytesIO(bytes(40 * 2048)), "ovf-env.xml", limit=1 << 20)
    with pytest.raises(Iso9660Error):
        read_iso_root_file(io.BytesIO(image[:17 * 2048]), "ovf-env.xml", limit=1 << 20)


def test_reading_an_iso_does_not_import_pycdlib(fabric_iso: Path) -> None:
    code = ("import sys; from pathlib import Path; from facts.media import read_media_file; "
            f"assert read_media_file(Path({str(fabric_iso)!r})); "
            "print('pycdlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
