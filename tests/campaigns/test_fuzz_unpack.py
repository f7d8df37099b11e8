"""Extension packages: system/unpack.py check_zip on built and mutated zips."""

from __future__ import annotations

import io
import stat
import warnings
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from system.unpack import UnsafeArchive, check_zip
from tests.campaigns.harness import campaign, holds
from tests.campaigns.strategies import fixture_files, mutated, mutations_of

pytestmark = pytest.mark.campaign

NAMES = st.one_of(st.sampled_from(["HandlerManifest.json", "bin/enable.sh", "bin/", "a/../b",
                                   "/abs", "a\\b", "./a", "a", "a/b", "link", "bin/x\0y",
                                   "é.txt"]), st.text(min_size=1, max_size=8))
KINDS = st.sampled_from(["file", "file", "dir", "link", "fifo"])
METHODS = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                           zipfile.ZIP_LZMA])


@st.composite
def built_zip(draw: st.DrawFn) -> bytes:
    """A package of files, directories and links (targets inside and out), compressed
    by each method, then damaged: the compressed streams and headers included."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for _ in range(draw(st.integers(0, 5))):
            name, kind = draw(NAMES), draw(KINDS)
            info = zipfile.ZipInfo(name)
            info.compress_type = draw(METHODS)
            mode = {"file": stat.S_IFREG | 0o644, "dir": stat.S_IFDIR | 0o755,
                    "link": stat.S_IFLNK | 0o777, "fifo": stat.S_IFIFO | 0o644}[kind]
            info.external_attr = mode << 16
            data = draw(st.sampled_from([b"", b"x", b"#!/bin/sh\nexit 0\n" * 20, b"../../etc",
                                         b"bin", b"\0" * 3000])) if kind != "dir" else b""
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Duplicate name": wanted here
                try:
                    zf.writestr(info, data)
                except (ValueError, UnicodeEncodeError):
                    continue
    return draw(mutated(out.getvalue(), (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06",
                                         b"\xff\xff\xff\xff"), 3))


def _check(data: bytes) -> None:
    check_zip(data, name="Ext.A-1.0.zip", max_bytes=1 << 20, max_files=50)


@campaign(2)
@given(st.one_of(built_zip(), mutations_of(fixture_files("walinuxagent/ext/sample_ext-1.3.0.zip"))))
def test_check_zip(data: bytes) -> None:
    holds("extension packages (zip)", lambda: _check(data), (UnsafeArchive,), size=len(data))
