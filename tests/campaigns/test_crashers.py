"""Crashers the fuzzing campaigns found, kept as plain tests with the minimal input.

Each is marked with the parser it broke (`regression`); bench/campaigns.py counts them as
the defects found and fixed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.campaigns.harness import regression
from tests.campaigns.strategies import fixture_files

pytestmark = pytest.mark.campaign


@regression("ovf")
def test_ovf_copy_with_unclosed_password_tags_in_a_comment() -> None:
    """without_password's pattern rescanned the document for each `<UserPassword>` that
    never closes: 16,000 in a comment took 35 s, the 1 MB an ovf-env.xml may have minutes."""
    from facts.ovf import parse_ovf_env, without_password

    seed = fixture_files("walinuxagent/ovf-env.xml")[0]
    data = seed.replace(b"</Environment>",
                        b"<!--" + b"<UserPassword>" * 70000 + b"--></Environment>", 1)
    start = time.monotonic()
    copy = without_password(data)
    assert time.monotonic() - start < 2
    assert parse_ovf_env(copy).password is None
    assert copy.count(b"<UserPassword>") == 70000


@pytest.mark.parametrize("entry", [
    {"dependsOn": [{"dependencyLevel": "/var/lib/waagent"}]},  # ValueError
    {"dependsOn": [{"dependencyLevel": float("inf")}]},  # OverflowError
    {"dependsOn": [{"dependencyLevel": [1]}]},  # TypeError
    {"dependsOn": 1},  # TypeError: 'int' object is not iterable
    {"dependsOn": [{"dependsOnExtension": 1}]},  # TypeError
    {"isMultiConfig": True, "dependsOn": [{"name": []}]},  # TypeError: unhashable
])
@regression("vmSettings")
def test_vm_settings_depends_on_of_another_type(entry: dict[str, object]) -> None:
    """A dependsOn block that is not the documented shape made parse_vm_settings raise
    ValueError or TypeError; it now makes that handler invalid, as in ExtensionsConfig."""
    from wire.extensions_goal_state import parse_vm_settings

    document = {"extensionGoalStates": [{"name": "Ext.A", "version": "1.0", **entry},
                                        {"name": "Ext.B", "version": "1.0"}]}
    state = parse_vm_settings(document, "etag")
    assert state is not None
    first, second = state.plugins
    assert first.invalid_reason is not None and "dependsOn" in first.invalid_reason \
        or "dependencyLevel" in (first.invalid_reason or "")
    assert second.invalid_reason is None


DEEP_JSON = "[" * 100_000 + "]" * 100_000


@regression("HandlerManifest.json")
def test_handler_manifest_nested_too_deep() -> None:
    """json.loads raised RecursionError (not a ValueError) on deep nesting."""
    from facts.extensions import ExtensionError, parse_handler_manifest

    with pytest.raises(ExtensionError, match="not valid JSON"):
        parse_handler_manifest("[" * 100_000, source="HandlerManifest.json")


@regression("extension status")
def test_status_and_heartbeat_nested_too_deep(tmp_path: Path) -> None:
    """The same RecursionError in status files (which must become an error status) and
    heartbeat files."""
    from facts.extensions import ExtensionError, heartbeat, parse_status

    status = parse_status(DEEP_JSON, handler="Ext.A-1.0")
    assert status.status == "error" and status.code == 1012
    beat = tmp_path / "heartbeat.log"
    beat.write_text(DEEP_JSON)
    with pytest.raises(ExtensionError, match="Malformed heartbeat"):
        heartbeat(beat, time.time())


GOOD_LEASE = "lease {\n  option unknown-245 a8:3f:81:10;\n  expire epoch 4102444800;\n}\n"


@pytest.mark.parametrize("block", [
    "  option unknown-245 a8:3f:81:11;\n  expire epoch 99999999999999999999;",  # OverflowError
    "  option unknown-245 a8:3f:81:11;\n  expire epoch ²;",  # ValueError: int('²')
    '  option unknown-245 "\\\u0101";',  # ValueError: byte must be in range(0, 256)
])
@regression("DHCP lease files")
def test_dhclient_lease_unreadable_values_skip_that_lease(block: str) -> None:
    """An expiry past what time_t holds, a non-ASCII digit, or an escaped character above
    255 raised from endpoint_from_dhclient_leases; that lease is now skipped, the others
    still count."""
    import datetime

    from wire.dhcp import endpoint_from_dhclient_leases

    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    text = GOOD_LEASE + "lease {\n" + block + "\n}\n"
    assert endpoint_from_dhclient_leases(text, now) == "168.63.129.16"


@regression("DHCP lease files")
def test_route_table_fields_wider_than_32_bits() -> None:
    """A destination or mask of more than 32 bits (or negative) raised OverflowError from
    parse_route_table; the line is skipped as other unreadable lines are."""
    from facts.routes import parse_route_table

    head = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
    good = "eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0"
    for bad in ("eth0\t-1\t0\t0001\t0\t0\t0\t00000000\t0\t0\t0",
                "eth0\t00000000\t0\t0001\t0\t0\t0\tFFFFFFFFFF\t0\t0\t0"):
        routes = parse_route_table(head + bad + "\n" + good)
        assert [str(network) for _, network, _ in routes] == ["0.0.0.0/0"]


@regression("ISO 9660/UDF")
def test_media_pycdlib_struct_error_is_probe_failed(tmp_path: Path) -> None:
    """On a medium our readers do not read, pycdlib, the last resort, raised struct.error
    (not a PyCdlibException) for a path table of 1 byte; read_media_file let it out."""
    import struct

    from fabric import build_media, default_scenario
    from facts.media import read_media_file
    from system.errors import ProbeFailed

    image = bytearray(build_media(default_scenario(), tmp_path / "ovf.iso").read_bytes())
    descriptor = 16 * 2048
    struct.pack_into("<I", image, descriptor + 132, 1)  # path table size, both byte orders
    struct.pack_into(">I", image, descriptor + 136, 1)
    damaged = tmp_path / "damaged.iso"
    damaged.write_bytes(bytes(image))
    with pytest.raises(ProbeFailed, match="cannot read the ISO 9660/UDF file system"):
        read_media_file(damaged, "missing.xml")


def _zip_with_damaged_stream(method: int) -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as zf:
        zf.writestr("bin/enable.sh", b"#!/bin/sh\nexit 0\n" * 20)
    data = bytearray(out.getvalue())
    start = 30 + len("bin/enable.sh")  # the member's data, after its local header
    if method == zipfile.ZIP_DEFLATED:
        data[start] = 0x07  # a deflate block of the reserved type 3
    else:
        data[start + 4:start + 16] = b"\xff" * 12  # LZMA properties and stream
    return bytes(data)


@pytest.mark.parametrize("method", [8, 14])  # ZIP_DEFLATED, ZIP_LZMA
@regression("extension packages (zip)")
def test_zip_member_with_a_damaged_compressed_stream(method: int) -> None:
    """check_zip let zlib.error ("Error -3 while decompressing data: invalid block type")
    and lzma.LZMAError out of a member whose compressed stream is damaged."""
    from system.unpack import UnsafeArchive, check_zip

    with pytest.raises(UnsafeArchive, match="bin/enable.sh.*cannot be read"):
        check_zip(_zip_with_damaged_stream(method), name="Ext.A-1.0.zip")


def _answer(data: bytes) -> object:
    import socket

    from wire.http1 import _read_answer, _Reader

    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        return _read_answer(_Reader(ours), "GET", 4096)


@regression("HTTP answers")
def test_http_status_with_a_superscript_digit() -> None:
    """'HTTP/1.1 2\\xb20 OK': the Latin-1 head holds '2²0', which isdigit() accepts and
    int() refuses: ValueError instead of BadResponse."""
    from wire.http1 import BadResponse

    with pytest.raises(BadResponse, match="not an HTTP/1.x status line"):
        _answer(b"HTTP/1.1 2\xb20 OK\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("size", [b"-5", b"0x5", b"+5", b"5_0"])
def test_http_chunk_size_is_hex_digits_only(size: bytes) -> None:
    """int(text, 16) also takes a sign, '0x' and '_': a negative chunk size desynchronised
    the framing (read while fixing the status line above)."""
    from wire.http1 import BadResponse

    with pytest.raises(BadResponse, match="bad chunk size"):
        _answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size
                + b"\r\nhello\r\n0\r\n\r\n")


@pytest.mark.parametrize("seq_no", ["--1", "²", "9" * 5000])
@regression("ExtensionsConfig")
def test_extensions_config_seq_no_that_int_refuses(seq_no: str) -> None:
    """seqNo was checked with lstrip("-").isdigit(), which "--1", a superscript "²" and 5000
    digits pass and int() refuses: ValueError out of parse_extensions_config. The handler
    is now invalid, the others still run."""
    from wire.extensions_config import parse_extensions_config

    document = ('<Extensions><Plugins><Plugin name="A" version="1.0"/><Plugin name="B" '
                'version="1.0"/></Plugins><PluginSettings><Plugin name="A" version="1.0">'
                f'<RuntimeSettings seqNo="{seq_no}"/></Plugin><Plugin name="B" version="1.0">'
                '<RuntimeSettings seqNo="0"/></Plugin></PluginSettings></Extensions>')
    first, second = parse_extensions_config(document.encode()).plugins
    assert first.invalid_reason is not None and "seqNo" in first.invalid_reason
    assert second.invalid_reason is None and second.settings[0].seq_no == 0


@regression("manifests")
def test_manifest_versions_that_int_refuses() -> None:
    """pick_version ordered numeric parts with int(part) when part.isdigit(): a manifest
    offering "²" or a part of 5000 digits raised ValueError. graph.update's choice of the
    newest agent raised it too (VERSION_PATTERN took any digits, any length)."""
    from graph.update import choose_version
    from wire.artifacts import pick_version
    from wire.extensions_config import GAFamily, ManifestVersion, PluginVersionManifest
    from wire.versions import version_key

    huge = "1." + "9" * 5000
    manifest = PluginVersionManifest((ManifestVersion("1.0.1", ()), ManifestVersion("1.²", ()),
                                      ManifestVersion(huge, ())))
    picked = pick_version(manifest, "1")
    assert picked is not None and picked.version == huge
    assert version_key("1.0.10") > version_key("1.0.9") and version_key("1.0") == version_key("1.00")
    choice = choose_version(GAFamily("Prod", ()), ["1.0.1", huge, "1.0.2\n", "1.0.٣"],
                            running="1.0.0", base="1.0.0", blacklisted=())
    assert choice.version == "1.0.1"


@regression("ISO 9660/UDF")
def test_udf_metadata_file_with_an_extent_in_the_metadata_partition() -> None:
    """A metadata file whose allocation descriptor (long_ad) points into the metadata
    partition itself made physical_block resolve block 0 through itself until
    RecursionError. Found building the metadata-partition seed of the media campaign."""
    import io
    import struct

    from facts.udf import UdfError, _open_volume, read_udf_root_file
    from tests.campaigns.test_fuzz_media import _fix_tag, images

    image = bytearray(images()["metaudf"])
    volume, _ = _open_volume(io.BytesIO(bytes(image)))
    assert volume.metadata_map == 1
    entry = volume.physical_block(volume.metadata_physical[0], 0) * 2048
    struct.pack_into("<H", image, entry + 34, 1)  # long allocation descriptors
    struct.pack_into("<II", image, entry + 168, 0, 16)
    struct.pack_into("<IIH", image, entry + 176, 8 * 2048, 0, 1)  # block 0 of map 1
    _fix_tag(image, entry)
    with pytest.raises(UdfError, match="outside a physical partition"):
        read_udf_root_file(io.BytesIO(bytes(image)), "ovf-env.xml", limit=1 << 20)


@pytest.mark.parametrize("ticks", ["²", "9" * 5000])
@regression("ExtensionsConfig")
def test_extensions_config_created_on_ticks_that_int_refuses(ticks: str) -> None:
    """createdOnTicks was converted when isdigit() held: "²" and 5000 digits raised
    ValueError out of from_extensions_config (found by the long run). No time is known
    then, as when the attribute is absent."""
    from wire.extensions_config import parse_extensions_config
    from wire.extensions_goal_state import from_extensions_config

    config = parse_extensions_config(
        f'<Extensions><InVMGoalStateMetaData createdOnTicks="{ticks}"/></Extensions>'.encode())
    assert from_extensions_config(config, "1").created_ticks is None


@regression("extension packages (zip)")
def test_zip_needing_a_newer_zip_version() -> None:
    """A central directory entry asking for zip version 12.7 to extract: zipfile.ZipFile
    raises NotImplementedError, which check_zip let out (found by the long run)."""
    import io
    import struct
    import zipfile

    from system.unpack import UnsafeArchive, check_zip

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("HandlerManifest.json", b"[]")
    data = bytearray(out.getvalue())
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 6, 127)  # version needed to extract: 12.7
    with pytest.raises(UnsafeArchive, match="not a readable zip archive"):
        check_zip(bytes(data), name="Ext.A-1.0.zip")
