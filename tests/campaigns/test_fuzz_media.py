"""The provisioning DVD on corrupt images: facts/iso9660.py, facts/udf.py and
facts/media.py (which falls back to pycdlib)."""

from __future__ import annotations

import io
import struct
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facts.iso9660 import Iso9660Error, read_iso_root_file
from facts.media import media_signature, read_media_file
from facts.ovf import OvfError
from facts.udf import UdfError, read_udf_root_file
from system.errors import ProbeFailed
from tests.campaigns.harness import campaign, holds

pytestmark = pytest.mark.campaign

SECTOR = 2048
LIMIT = 1 << 20


@cache
def images() -> dict[str, bytes]:
    """The fabric's ISO 9660 (Joliet, Rock Ridge) and ISO/UDF bridge DVDs, and a pure UDF
    one (the ISO 9660 descriptors replaced by the UDF recognition sequence)."""
    import tempfile

    from fabric import build_media, default_scenario

    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("iso", "udf"):
            found[kind] = build_media(default_scenario(), Path(tmp) / f"ovf.{kind}",
                                      kind).read_bytes()  # type: ignore[arg-type]
    image = bytearray(found["udf"])
    start = 16 * SECTOR
    sectors = [bytes(image[start + i * SECTOR:start + (i + 1) * SECTOR]) for i in range(8)]
    vrs = [s for s in sectors if s[1:6] in (b"BEA01", b"NSR02", b"NSR03", b"TEA01")]
    for index in range(8):
        image[start + index * SECTOR:start + (index + 1) * SECTOR] = (
            vrs[index] if index < len(vrs) else bytes(SECTOR))
    found["pureudf"] = bytes(image)
    found["metaudf"] = with_metadata_partition(found["pureudf"])
    return found


def _fix_tag(image: bytearray, start: int) -> None:
    tag = image[start:start + 16]
    image[start + 4] = (sum(tag[0:4]) + sum(tag[5:16])) & 0xFF


def with_metadata_partition(base: bytes) -> bytes:
    """A pure UDF image whose file set is reached through a UDF 2.50 metadata partition
    (pycdlib writes none): a type 2 partition map, and a metadata file whose one extent
    covers the physical partition, so metadata block n is physical block n."""
    image = bytearray(base)
    vds_length, vds_location = struct.unpack_from("<II", image, 256 * SECTOR + 16)
    tags = {struct.unpack_from("<H", image, (vds_location + i) * SECTOR)[0]:
            (vds_location + i) * SECTOR for i in reversed(range(vds_length // SECTOR))}
    lvd, pd = tags[6], tags[5]
    part_start, part_length = struct.unpack_from("<II", image, pd + 188)
    number = struct.unpack_from("<H", image, pd + 22)[0]
    table_length, count = struct.unpack_from("<II", image, lvd + 264)
    free = next(n for n in range(part_start + part_length - 1, part_start, -1)
                if not any(image[n * SECTOR:(n + 1) * SECTOR]))
    metadata_map = bytearray(64)
    metadata_map[0:2] = bytes([2, 64])
    metadata_map[5:28] = b"*UDF Metadata Partition"
    struct.pack_into("<HHI", metadata_map, 36, 1, number, free - part_start)
    image[lvd + 440 + table_length:lvd + 504 + table_length] = metadata_map
    struct.pack_into("<II", image, lvd + 264, table_length + 64, count + 1)
    struct.pack_into("<H", image, lvd + 256, 1)  # the file set, through map 1
    _fix_tag(image, lvd)
    entry = free * SECTOR  # the metadata file's entry: short allocation descriptors
    struct.pack_into("<HHI", image, entry, 261, 3, free - part_start)
    struct.pack_into("<Q", image, entry + 56, part_length * SECTOR)
    struct.pack_into("<IIII", image, entry + 168, 0, 8, part_length * SECTOR, 0)
    _fix_tag(image, entry)
    return bytes(image)


@pytest.fixture(autouse=True, scope="module")
def _built_images() -> None:
    """Built before the first example: pycdlib's use of `random` inside a strategy would
    make hypothesis warn (and a derandomized run depend on it)."""
    images()


def _structure_sectors(image: bytes) -> list[int]:
    """Sectors that hold something: descriptors, directories, file entries, the file."""
    return [n for n in range(len(image) // SECTOR)
            if any(image[n * SECTOR:(n + 1) * SECTOR])]


FIELD_VALUES = st.sampled_from([0, 1, 2, 16, 255, 256, 257, 2047, 2048, 0x7FFF, 0xFFFF,
                                0x3FFFFFFF, 0x40000000, 0xC0000000, 0x7FFFFFFF, 0xFFFFFFFF])


@st.composite
def corrupt_image(draw: st.DrawFn) -> bytes:
    """A real image with fields of its structures overwritten by edge values (little- or
    big-endian, 1 to 4 bytes), bytes flipped, or cut short; after a change in a UDF
    descriptor its tag checksum is often fixed, so the damage reaches past the tag."""
    kind = draw(st.sampled_from(("iso", "udf", "pureudf", "metaudf")))
    image = bytearray(images()[kind])
    sectors = _structure_sectors(bytes(image))
    for _ in range(draw(st.integers(1, 6))):
        sector = draw(st.sampled_from(sectors))
        offset = sector * SECTOR + draw(st.integers(0, 255)) * draw(st.sampled_from((1, 2, 4, 8)))
        offset = min(offset, (sector + 1) * SECTOR - 4)
        op = draw(st.sampled_from(("field", "field", "flip", "zero")))
        if op == "field":
            width = draw(st.sampled_from((1, 2, 4)))
            value = draw(FIELD_VALUES) & ((1 << (8 * width)) - 1)
            image[offset:offset + width] = value.to_bytes(width, draw(st.sampled_from(
                ("little", "big"))))
        elif op == "flip":
            image[offset] ^= 1 << draw(st.integers(0, 7))
        else:
            size = draw(st.integers(1, 64))
            image[offset:offset + size] = bytes(len(image[offset:offset + size]))
        if kind != "iso" and draw(st.integers(0, 3)):
            _fix_tag(image, sector * SECTOR)
    if draw(st.integers(0, 9)) == 0:
        del image[draw(st.integers(0, len(image))):]
    return Image(image)


class Image(bytes):
    """An image that a failing example shows by its size and digest, not its bytes."""

    def __repr__(self) -> str:
        import hashlib

        return f"<image of {len(self)} bytes, sha256 {hashlib.sha256(self).hexdigest()[:16]}>"

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:
        printer.text(repr(self))  # type: ignore[attr-defined]


@campaign(1.5)
@given(corrupt_image())
def test_iso9660_reader(image: bytes) -> None:
    holds("ISO 9660/UDF", lambda: read_iso_root_file(io.BytesIO(image), "ovf-env.xml",
                                                     limit=LIMIT), (Iso9660Error,), size=len(image))


@campaign(1.5)
@given(corrupt_image())
def test_udf_reader(image: bytes) -> None:
    holds("ISO 9660/UDF", lambda: read_udf_root_file(io.BytesIO(image), "ovf-env.xml",
                                                     limit=LIMIT), (UdfError,), size=len(image))


@campaign(0.5)
@given(corrupt_image())
def test_media_file(tmp_path_factory: pytest.TempPathFactory, image: bytes) -> None:
    """The whole read, pycdlib's fallback included: ProbeFailed or OvfError only."""
    path = tmp_path_factory.mktemp("media", numbered=True) / "dvd.iso"
    path.write_bytes(image)
    holds("ISO 9660/UDF", lambda: (media_signature(image[:65536]), read_media_file(path)),
          (ProbeFailed, OvfError), size=len(image), seconds=10)


def test_images_are_read_before_damage() -> None:
    for image in images().values():
        data = read_udf_root_file(io.BytesIO(image), "ovf-env.xml", limit=LIMIT) \
            if image[16 * SECTOR + 1:16 * SECTOR + 6] != b"CD001" \
            else read_iso_root_file(io.BytesIO(image), "ovf-env.xml", limit=LIMIT)
        assert data is not None and b"Environment" in data
    assert struct.calcsize("<I") == 4
