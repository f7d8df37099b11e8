"""A minimal, read-only ISO 9660 reader: one file from the root directory.

Why it exists: reading ovf-env.xml from the DVD is on the way to Ready at first boot,
and importing pycdlib costs more than this walk of one directory. Names are
matched as Joliet (UCS-2) or as ISO 9660 (`comparable`); Rock Ridge names are not
read: the platform's file name survives ISO 9660 level 1 folding. Every offset
read is bounds-checked; malformed media raise Iso9660Error, and the caller may fall
back to pycdlib.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

SECTOR = 2048
_FIRST_DESCRIPTOR = 16
_MAX_DESCRIPTORS = 32
_MAX_DIRECTORY_BYTES = 4 * 1024 * 1024
_JOLIET_ESCAPES = (b"%/@", b"%/C", b"%/E")


class Iso9660Error(ValueError):
    """The medium is not ISO 9660, or its structures are damaged."""


def _read(fp: BinaryIO, size: int, offset: int, length: int) -> bytes:
    if offset < 0 or length < 0 or offset + length > size:
        raise Iso9660Error(f"structure at byte {offset} (+{length}) lies outside the medium")
    fp.seek(offset)
    data = fp.read(length)
    if len(data) != length:
        raise Iso9660Error(f"short read at byte {offset}")
    return data


def _root_records(fp: BinaryIO, size: int) -> list[tuple[bytes, bool]]:
    """Root directory records of the Joliet (first, if any) and primary descriptors."""
    roots: list[tuple[bytes, bool]] = []
    for index in range(_FIRST_DESCRIPTOR, _FIRST_DESCRIPTOR + _MAX_DESCRIPTORS):
        descriptor = _read(fp, size, index * SECTOR, SECTOR)
        kind, ident = descriptor[0], descriptor[1:6]
        if ident != b"CD001":
            raise Iso9660Error("no ISO 9660 volume descriptor set")
        if kind == 255:
            break
        if kind == 1:
            roots.append((descriptor[156:190], False))
        elif kind == 2 and descriptor[88:91] in _JOLIET_ESCAPES:
            roots.insert(0, (descriptor[156:190], True))
    if not roots:
        raise Iso9660Error("no primary volume descriptor")
    return roots


def _name(record: bytes, joliet: bool) -> str:
    raw = record[33:33 + record[32]]
    text = raw.decode("utf-16-be", "replace") if joliet else raw.decode("ascii", "replace")
    return comparable(text)


def comparable(name: str) -> str:
    """A file name as compared across name spaces: no ";1" version, case folded, and '-'
    as '_' (ISO 9660 level 1 has no '-': ovf-env.xml is stored as OVF_ENV.XML;1)."""
    return name.split(";", 1)[0].rstrip(".").lower().replace("-", "_")


def read_iso_root_file(fp: BinaryIO, name: str, *, limit: int) -> bytes | None:
    """The content of `name` (case-insensitive) in the root directory, or None when absent.

    Raises Iso9660Error when the medium is not readable ISO 9660 or the file exceeds
    `limit` bytes.
    """
    fp.seek(0, 2)
    size = fp.tell()
    wanted = comparable(name)
    for root, joliet in _root_records(fp, size):
        extent, length = struct.unpack_from("<I", root, 2)[0], struct.unpack_from("<I", root, 10)[0]
        if length > _MAX_DIRECTORY_BYTES:
            raise Iso9660Error(f"root directory of {length} bytes")
        directory = _read(fp, size, extent * SECTOR, length)
        offset = 0
        while offset < len(directory):
            record_length = directory[offset]
            if record_length == 0:  # records do not cross sectors: skip to the next one
                offset = (offset // SECTOR + 1) * SECTOR
                continue
            record = directory[offset:offset + record_length]
            if len(record) < 34 or 33 + record[32] > len(record):
                raise Iso9660Error(f"damaged directory record at byte {offset} of the root")
            offset += record_length
            if record[25] & 0x02 or _name(record, joliet) != wanted:  # a directory
                continue
            start, data_length = struct.unpack_from("<I", record, 2)[0], \
                struct.unpack_from("<I", record, 10)[0]
            if data_length > limit:
                raise Iso9660Error(f"{name} is {data_length} bytes, more than the {limit} "
                                   "allowed")
            return _read(fp, size, start * SECTOR, data_length)
    return None
