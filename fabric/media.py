"""The provisioning DVD: ovf-env.xml on an ISO 9660 or UDF image, built with pycdlib.

The agent finds the platform's DVD as /dev/sr0 and mounts it (UDF or ISO 9660);
the image built here can back a loop device or be read back by tests directly.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import pycdlib

from fabric.documents import render_ovf
from fabric.scenario import Scenario

MediaFormat = Literal["iso", "udf"]
OVF_NAME = "ovf-env.xml"


def build_media(scenario: Scenario, out_path: str | Path, fmt: MediaFormat = "iso") -> Path:
    """Write the provisioning media carrying ovf-env.xml; return its path.

    "iso": ISO 9660 level 3 with Joliet and Rock Ridge (the long lower-case name
    survives on every reader); "udf": a UDF 2.60 bridge image (UDF plus ISO 9660),
    the format the platform's DVD uses today.
    """
    if fmt not in ("iso", "udf"):
        raise ValueError(f"media format must be iso or udf, not {fmt!r}")
    data = render_ovf(scenario).encode("utf-8")
    out = Path(out_path)
    iso = pycdlib.PyCdlib()
    if fmt == "iso":
        iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="rd_rdfe_stable")
        iso.add_fp(
            io.BytesIO(data), len(data), "/OVF_ENV.XML;1",
            rr_name=OVF_NAME, joliet_path=f"/{OVF_NAME}",
        )
    else:
        iso.new(interchange_level=3, udf="2.60", vol_ident="rd_rdfe_stable")
        iso.add_fp(io.BytesIO(data), len(data), "/OVF_ENV.XML;1", udf_path=f"/{OVF_NAME}")
    for name, text in sorted(scenario.dvd_files.items()):
        content = text.encode("utf-8")
        if fmt == "iso":
            iso.add_fp(io.BytesIO(content), len(content), _iso_name(name), rr_name=name,
                       joliet_path=f"/{name}")
        else:
            iso.add_fp(io.BytesIO(content), len(content), _iso_name(name), udf_path=f"/{name}")
    try:
        iso.write(str(out))
    finally:
        iso.close()
    return out


def _iso_name(name: str) -> str:
    """A file name as ISO 9660 level 3 stores it: upper case, d-characters, one dot."""
    stem, _, ext = name.upper().partition(".")
    clean = "".join(c if c.isalnum() else "_" for c in stem)
    return f"/{clean}.{''.join(c if c.isalnum() else '_' for c in ext)};1"


def read_ovf_from_media(path: str | Path) -> str:
    """ovf-env.xml read back from an image this module built (UDF path first, then Joliet, ISO)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = io.BytesIO()
        if iso.has_udf():
            iso.get_file_from_iso_fp(out, udf_path=f"/{OVF_NAME}")
        elif iso.has_joliet():
            iso.get_file_from_iso_fp(out, joliet_path=f"/{OVF_NAME}")
        else:
            iso.get_file_from_iso_fp(out, iso_path="/OVF_ENV.XML;1")
        return out.getvalue().decode("utf-8")
    finally:
        iso.close()
