"""The platform protocols: endpoint discovery, WireServer, HostGAPlugin and IMDS clients,
their documents, and the transport certificate and certificate decryption.

Nothing here changes the machine except through `system.FileSystem` (certificates,
the transport pair, the cached endpoint). Heavy libraries (cryptography, asn1crypto,
requests) are imported inside the functions that need them: the no-op boot path
imports this package and must stay fast.
"""

from wire.errors import DocumentError, HttpStatusError, WireError

# The transport pair's files in Lib.Dir (named here so that checking for them does not
# import wire.certs on every boot).
TRANSPORT_CERT = "TransportCert.pem"
TRANSPORT_KEY = "TransportPrivate.pem"

_BOM = b"\xef\xbb\xbf"


def decode_text(data: bytes) -> str:
    """A platform document's bytes as text: UTF-8, a BOM dropped, undecodable bytes replaced.

    (The "utf-8-sig" codec does the same, but loading it is ~0.3 ms of every boot.)
    """
    return data.removeprefix(_BOM).decode("utf-8", errors="replace")


__all__ = ["TRANSPORT_CERT", "TRANSPORT_KEY", "DocumentError", "HttpStatusError", "WireError",
           "decode_text"]
