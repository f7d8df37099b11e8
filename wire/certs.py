"""The goal state's Certificates document: decrypted and stored as `<THUMB>.crt/.prv`.

The platform encrypts the VM's certificates (a PKCS#12 with an empty password) in a
CMS EnvelopedData to the agent's transport certificate (PLATFORM.md section 2).

The way to Ready uses the openssl binary (`OS.OpensslPath`) through the Runner, as the
platform's agent does (wire/openssl.py): `cms -decrypt` and `pkcs12 -nodes` turn the
envelope into PEM, and `wire.der` pairs keys with certificates. That keeps cryptography
and asn1crypto out of the agent's process. Where the openssl binary is missing or fails,
the same work is done in-process (wire/cms.py).

The other homes: the transport pair in wire/transport.py, certificates and keys as data
(thumbprints, SSH public keys, bundles) in wire/x509.py.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from pathlib import Path

from system.fs import FileSystem
from wire.cms import decrypt_cms, read_pkcs12
from wire.errors import CertificateError
from wire.openssl import decrypt_with_openssl
from wire.subdocuments import CertificateFile
from wire.transport import TransportPair
from wire.x509 import CertificateBundle

log = logging.getLogger("waagent.wire.certs")


def decode_certificate_data(data: str) -> bytes:
    """The DER bytes of `<Data>` (base64, wrapped at 64 columns)."""
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise CertificateError(f"Certificates <Data> is not valid base64: {err}") from None


def decrypt_certificate_file(document: CertificateFile, pair: TransportPair) -> CertificateBundle:
    """Decrypt a Certificates document in-process (no files written)."""
    if document.data is None:
        return CertificateBundle((), ())
    pfx = decrypt_cms(decode_certificate_data(document.data), pair.key_pem, pair.cert_pem)
    return read_pkcs12(pfx)


def install_certificates(fs: FileSystem, lib_dir: Path, document: CertificateFile,
                         pair: TransportPair, *, openssl: str = "openssl") -> CertificateBundle:
    """Decrypt the Certificates document and store `<THUMB>.crt` / `<THUMB>.prv` (0600).

    No `<Data>`: nothing to do. A format other than PFX is skipped with a warning.
    The openssl binary decrypts (module docstring); when it cannot, the envelope is
    decrypted in-process, and when neither can, both reasons are shown. Everything is
    decrypted before anything is stored; if storing fails part-way, the files this call
    created are removed, so no partial set of keys is left behind.
    """
    if document.data is None:
        log.debug("Certificates document has no <Data>: no certificates")
        return CertificateBundle((), ())
    if not document.is_pfx:
        log.warning("Certificates document format %r is not %s: skipped",
                    document.format, "Pkcs7BlobWithPfxContents")
        return CertificateBundle((), ())
    envelope = decode_certificate_data(document.data)
    try:
        bundle = decrypt_with_openssl(fs, envelope, pair, openssl)
    except CertificateError as err:
        log.info("%s: decrypting the certificates in-process", err)
        try:
            bundle = read_pkcs12(decrypt_cms(envelope, pair.key_pem, pair.cert_pem))
        except CertificateError as in_process:
            raise CertificateError(f"{in_process} (and with {openssl}: {err})") from None
    store_bundle(fs, lib_dir, bundle)
    return bundle


def store_bundle(fs: FileSystem, lib_dir: Path, bundle: CertificateBundle) -> None:
    """Write the bundle's `.crt` and `.prv` files atomically, 0600, in a 0700 Lib.Dir."""
    fs.mkdir(lib_dir, mode=0o700, why="agent state directory (holds private keys)")
    created: list[Path] = []
    try:
        for cert in bundle.certificates:
            path = lib_dir / f"{cert.thumbprint}.crt"
            existed = path.exists()
            fs.write(path, cert.pem, mode=0o600, why=f"platform certificate {cert.thumbprint}")
            if not existed:
                created.append(path)
        for key in bundle.keys:
            path = lib_dir / f"{key.thumbprint}.prv"
            existed = path.exists()
            fs.write(path, key.pem, mode=0o600, why=f"private key of {key.thumbprint}",
                     secret=True)
            if not existed:
                created.append(path)
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                fs.remove(path, why="undo partial certificate install")
        raise
