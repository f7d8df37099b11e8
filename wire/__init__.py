"""The platform protocols: endpoint discovery, WireServer, HostGAPlugin and IMDS clients,
their documents, and the transport certificate and certificate decryption.

Nothing here changes the machine except through `system.FileSystem` (certificates,
the transport pair, the cached endpoint). Heavy libraries (cryptography, asn1crypto,
requests) are imported inside the functions that need them: the no-op boot path
imports this package and must stay fast.
"""

from typing import Any

from wire.errors import DocumentError, HttpStatusError, WireError

# The transport pair's files in Lib.Dir (named here so that checking for them does not
# import wire.transport on every boot).
TRANSPORT_CERT = "TransportCert.pem"
TRANSPORT_KEY = "TransportPrivate.pem"

_BOM = b"\xef\xbb\xbf"

# JSON platform documents (vmSettings, IMDS, artifacts profiles, extension settings) are
# small and shallow; the bounds are far above any real one and far below what would
# exhaust the stack of whatever walks the value later (the recursion limit is 1000).
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 100


def decode_text(data: bytes) -> str:
    """A platform document's bytes as text: UTF-8, a BOM dropped, undecodable bytes replaced.

    (The "utf-8-sig" codec does the same, but it is one more module to load on every boot.)
    """
    return data.removeprefix(_BOM).decode("utf-8", errors="replace")


def parse_json(data: str | bytes, document: str, *, max_depth: int = MAX_JSON_DEPTH,
               max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON platform document, decoded; DocumentError naming `document` when it is not
    JSON, larger than `max_bytes` or nested deeper than `max_depth` arrays and objects."""
    import json  # only the boots that read a JSON document pay for it

    size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if size > max_bytes:
        raise DocumentError(document, f"{size} bytes is larger than the {max_bytes} bytes "
                                      "a platform JSON document may have; refused")
    too_deep = f"nested deeper than {max_depth} levels of arrays and objects; refused"
    try:
        value = json.loads(data)
    except RecursionError:
        raise DocumentError(document, too_deep) from None
    except ValueError as err:  # UnicodeDecodeError too; neither message quotes the text
        raise DocumentError(document, f"not JSON: {err}") from None
    if _depth_exceeds(value, max_depth):
        raise DocumentError(document, too_deep)
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when arrays and objects nest deeper than `limit` (with a stack, not recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth == limit:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False


__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "TRANSPORT_CERT", "TRANSPORT_KEY",
           "DocumentError", "HttpStatusError", "WireError", "decode_text", "parse_json"]
