"""A minimal, read-only UDF (ECMA-167 / OSTA UDF) reader: one file from the root directory.

Why it exists: pycdlib reads ISO 9660 and ISO/UDF bridge media, but refuses
media without an ISO 9660 primary volume descriptor, and the platform's
provisioning DVD is UDF. The kernel here may have no udf module, so the agent
must read ovf-env.xml without mounting. Only what that takes is implemented:
anchor -> volume descriptors -> file set -> root directory -> one file, with
type 1 partition maps and the UDF 2.50+ metadata partition. Every offset read
is bounds-checked against the medium; malformed media raise UdfError.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, NamedTuple

SECTOR = 2048
_ANCHOR_SECTOR = 256

# Descriptor tag identifiers (ECMA-167 3/7.2.1 and 4/7.2.1)
_TAG_PARTITION = 5
_TAG_LOGICAL_VOLUME = 6
_TAG_TERMINATING = 8
_TAG_ANCHOR = 2
_TAG_FILE_SET = 256
_TAG_FILE_ID = 257
_TAG_FILE_ENTRY = 261
_TAG_EXTENDED_FILE_ENTRY = 266

_MAX_DIRECTORY_BYTES = 4 * 1024 * 1024
_MAX_EXTENTS = 4096


class UdfError(ValueError):
    """The medium is not UDF, or its structures are damaged."""


class _Extent(NamedTuple):
    length: int
    block: int
    partition_ref: int


class _Volume:
    def __init__(self, fp: BinaryIO, size: int) -> None:
        self.fp = fp
        self.size = size
        self.block_size = SECTOR
        self.partition_starts: dict[int, int] = {}  # partition number -> first sector
        # partition reference -> ("physical", partition number) or ("metadata", extents)
        self.maps: list[tuple[str, int]] = []
        self.metadata_extents: list[_Extent] = []
        self.metadata_map: int | None = None
        self.metadata_physical: tuple[int, int] = (0, 0)  # metadata file block, partition

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise UdfError(f"structure at byte {offset} (+{length}) lies outside the medium")
        self.fp.seek(offset)
        data = self.fp.read(length)
        if len(data) != length:
            raise UdfError(f"short read at byte {offset}")
        return data

    def sector(self, number: int, count: int = 1) -> bytes:
        return self.read(number * self.block_size, count * self.block_size)

    def physical_block(self, block: int, partition_ref: int) -> int:
        """Absolute sector of a logical block in a partition reference."""
        if not 0 <= partition_ref < len(self.maps):
            raise UdfError(f"partition reference {partition_ref} is not in the partition maps")
        kind, number = self.maps[partition_ref]
        if kind == "metadata":
            # Logical blocks of the metadata partition are blocks of the metadata file.
            offset = block * self.block_size
            for extent in self.metadata_extents:
                if offset < extent.length:
                    return self.physical_block(extent.block + offset // self.block_size,
                                               extent.partition_ref)
                offset -= extent.length
            raise UdfError(f"block {block} lies outside the metadata partition")
        if number not in self.partition_starts:
            raise UdfError(f"partition {number} has no partition descriptor")
        return self.partition_starts[number] + block


def _tag(data: bytes, expected: int | None = None) -> int:
    if len(data) < 16:
        raise UdfError("descriptor tag truncated")
    identifier = struct.unpack_from("<H", data, 0)[0]
    checksum = sum(data[0:4]) + sum(data[5:16])
    if checksum & 0xFF != data[4]:
        raise UdfError(f"descriptor tag {identifier}: bad checksum")
    if expected is not None and identifier != expected:
        raise UdfError(f"expected descriptor tag {expected}, found {identifier}")
    return int(identifier)


def _long_ad(data: bytes, offset: int) -> _Extent:
    length, block, ref = struct.unpack_from("<IIH", data, offset)
    return _Extent(length & 0x3FFFFFFF, block, ref)


def _decode_dstring(raw: bytes) -> str:
    if not raw:
        return ""
    if raw[0] == 8:
        return raw[1:].decode("latin-1")
    if raw[0] == 16:
        return raw[1:].decode("utf-16-be", errors="replace")
    raise UdfError(f"unknown file identifier compression {raw[0]}")


def _open_volume(fp: BinaryIO) -> tuple[_Volume, _Extent]:
    fp.seek(0, 2)
    size = fp.tell()
    volume = _Volume(fp, size)
    anchor = volume.sector(_ANCHOR_SECTOR)
    _tag(anchor, _TAG_ANCHOR)
    vds_length, vds_location = struct.unpack_from("<II", anchor, 16)
    logical_volume: bytes | None = None
    for index in range(min(vds_length // SECTOR, 64)):
        desc = volume.sector(vds_location + index)
        tag = _tag(desc)
        if tag == _TAG_PARTITION:
            number = struct.unpack_from("<H", desc, 22)[0]
            start = struct.unpack_from("<I", desc, 188)[0]
            volume.partition_starts[number] = start
        elif tag == _TAG_LOGICAL_VOLUME and logical_volume is None:
            logical_volume = desc
        elif tag == _TAG_TERMINATING:
            break
    if logical_volume is None:
        raise UdfError("no logical volume descriptor")
    block_size = struct.unpack_from("<I", logical_volume, 212)[0]
    if block_size != SECTOR:
        raise UdfError(f"logical block size {block_size} is not supported (only {SECTOR})")
    file_set = _long_ad(logical_volume, 248)
    map_table_length, map_count = struct.unpack_from("<II", logical_volume, 264)
    maps = logical_volume[440:440 + map_table_length]
    offset = 0
    for _ in range(map_count):
        if offset + 2 > len(maps):
            raise UdfError("partition map table truncated")
        map_type, map_length = maps[offset], maps[offset + 1]
        if map_length < 2:
            raise UdfError("partition map of length < 2")
        if map_type == 1:
            number = struct.unpack_from("<H", maps, offset + 4)[0]
            volume.maps.append(("physical", number))
        elif map_type == 2 and b"*UDF Metadata Partition" in maps[offset + 4:offset + 36]:
            number = struct.unpack_from("<H", maps, offset + 38)[0]
            metadata_file_block = struct.unpack_from("<I", maps, offset + 40)[0]
            volume.maps.append(("metadata", number))
            volume.metadata_map = len(volume.maps) - 1
            volume.metadata_physical = (metadata_file_block, number)
        else:
            raise UdfError(f"partition map type {map_type} is not supported")
        offset += map_length
    if volume.metadata_map is not None:
        block, number = volume.metadata_physical
        physical_ref = next((i for i, m in enumerate(volume.maps) if m == ("physical", number)),
                            None)
        if physical_ref is None:
            raise UdfError("metadata partition without its physical partition map")
        _, extents = _file_entry(volume, _Extent(SECTOR, block, physical_ref))
        if isinstance(extents, bytes):
            raise UdfError("metadata file with embedded data")
        # In the physical partition: one in the metadata partition itself would have
        # physical_block resolve it through itself, without end.
        if any(e.partition_ref >= len(volume.maps) or volume.maps[e.partition_ref][0] != "physical"
               for e in extents):
            raise UdfError("metadata file with extents outside a physical partition")
        volume.metadata_extents = extents
    return volume, file_set


def _file_entry(volume: _Volume, icb: _Extent) -> tuple[int, list[_Extent] | bytes]:
    """A file's length and its extents (or its embedded data)."""
    data = volume.sector(volume.physical_block(icb.block, icb.partition_ref))
    tag = _tag(data)
    if tag == _TAG_FILE_ENTRY:
        length = struct.unpack_from("<Q", data, 56)[0]
        ea_length, ad_length = struct.unpack_from("<II", data, 168)
        ad_start = 176 + ea_length
    elif tag == _TAG_EXTENDED_FILE_ENTRY:
        length = struct.unpack_from("<Q", data, 56)[0]
        ea_length, ad_length = struct.unpack_from("<II", data, 208)
        ad_start = 216 + ea_length
    else:
        raise UdfError(f"expected a file entry, found descriptor tag {tag}")
    if ad_start + ad_length > len(data):
        raise UdfError("allocation descriptors overrun the file entry")
    descriptors = data[ad_start:ad_start + ad_length]
    flags = struct.unpack_from("<H", data, 34)[0]
    kind = flags & 7
    if kind == 3:  # data embedded in the entry
        return length, descriptors[:length]
    extents: list[_Extent] = []
    step = {0: 8, 1: 16}.get(kind)
    if step is None:
        raise UdfError(f"allocation descriptor type {kind} is not supported")
    for offset in range(0, len(descriptors) - step + 1, step):
        if step == 8:
            raw_length, block = struct.unpack_from("<II", descriptors, offset)
            extent = _Extent(raw_length & 0x3FFFFFFF, block, icb.partition_ref)
        else:
            extent = _long_ad(descriptors, offset)
            raw_length = struct.unpack_from("<I", descriptors, offset)[0]
        if extent.length == 0:
            break
        if raw_length >> 30 == 3:
            raise UdfError("continued allocation descriptors are not supported")
        extents.append(extent)
        if len(extents) > _MAX_EXTENTS:
            raise UdfError("too many extents")
    return length, extents


def _file_data(volume: _Volume, icb: _Extent, limit: int, what: str) -> bytes:
    length, extents = _file_entry(volume, icb)
    if length > limit:
        raise UdfError(f"{what} is {length} bytes, more than the {limit} allowed")
    if isinstance(extents, bytes):
        return extents
    chunks: list[bytes] = []
    remaining = length
    for extent in extents:
        if remaining <= 0:
            break
        take = min(extent.length, remaining)
        start = volume.physical_block(extent.block, extent.partition_ref) * volume.block_size
        chunks.append(volume.read(start, take))
        remaining -= take
    if remaining > 0:
        raise UdfError(f"{what}: extents hold fewer bytes than its length")
    return b"".join(chunks)


def _directory(volume: _Volume, icb: _Extent) -> dict[str, _Extent]:
    data = _file_data(volume, icb, _MAX_DIRECTORY_BYTES, "the root directory")
    entries: dict[str, _Extent] = {}
    offset = 0
    while offset + 38 <= len(data):
        _tag(data[offset:offset + 16], _TAG_FILE_ID)
        characteristics, name_length = data[offset + 18], data[offset + 19]
        child = _long_ad(data, offset + 20)
        use_length = struct.unpack_from("<H", data, offset + 36)[0]
        name_start = offset + 38 + use_length
        raw_name = data[name_start:name_start + name_length]
        # Deleted (bit 2) and parent (bit 3) entries are not files of this directory.
        if not characteristics & 0x0C and not characteristics & 0x02 and raw_name:
            entries[_decode_dstring(raw_name)] = child
        offset += (38 + use_length + name_length + 3) // 4 * 4
    return entries


def read_udf_root_file(fp: BinaryIO, name: str, *, limit: int) -> bytes | None:
    """The content of `name` (case-insensitive) in the root directory, or None when absent.

    Raises UdfError when the medium is not readable UDF or the file exceeds `limit` bytes.
    """
    try:
        volume, file_set_extent = _open_volume(fp)
        file_set = volume.sector(volume.physical_block(file_set_extent.block,
                                                       file_set_extent.partition_ref))
        _tag(file_set, _TAG_FILE_SET)
        root_icb = _long_ad(file_set, 400)
        entries = _directory(volume, root_icb)
    except struct.error as err:
        raise UdfError(f"truncated UDF structure: {err}") from None
    wanted = name.lower()
    for entry_name, icb in entries.items():
        if entry_name.lower() == wanted:
            try:
                return _file_data(volume, icb, limit, name)
            except struct.error as err:
                raise UdfError(f"truncated UDF structure: {err}") from None
    return None
