"""Certificates and keys as data: PEM, thumbprints, OpenSSH public keys, decrypted bundles.

RSA keys are read with `wire.der` (no heavy import on the way to Ready); other key types
go through cryptography, imported inside the functions that need it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import textwrap
from typing import TYPE_CHECKING, NamedTuple

from wire import der
from wire.errors import CertificateError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

log = logging.getLogger("waagent.wire.certs")


def to_pem(label: str, body: bytes) -> bytes:
    """A PEM block: base64 in 64-column lines between BEGIN and END."""
    lines = textwrap.wrap(base64.b64encode(body).decode(), 64)
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


# -- thumbprints and SSH keys ---------------------------------------------------------------

def thumbprint(certificate_der: bytes) -> str:
    """The platform's name for a certificate: SHA-1 of its DER, upper-case hex."""
    return hashlib.sha1(certificate_der).hexdigest().upper()  # noqa: S324 - a name, not security


def certificate_der_of(certificate_pem: bytes) -> bytes:
    for label, body in der.pem_blocks(certificate_pem):
        if label == "CERTIFICATE":
            return body
    raise CertificateError("not a PEM certificate: no CERTIFICATE block")


def certificate_thumbprint(certificate_pem: bytes) -> str:
    """The thumbprint of a PEM certificate."""
    return thumbprint(certificate_der_of(certificate_pem))


def ssh_public_key(certificate_pem: bytes) -> str:
    """The OpenSSH public key line (`ssh-rsa AAAA...`) of a certificate's key.

    For SSH keys the platform delivers by thumbprint (`<Fingerprint>.crt`).
    """
    certificate_der = certificate_der_of(certificate_pem)
    try:
        return der.certificate_public_key(certificate_der).openssh
    except der.NotRsa:
        return _openssh_line(load_certificate(certificate_pem).public_key())
    except CertificateError as err:
        raise CertificateError(f"not a PEM certificate: {err}") from None


def private_key_openssh(key_pem: bytes) -> str:
    """The OpenSSH public key line of a PEM private key (a key pair's `.pub`)."""
    try:
        return der.pem_public_key(key_pem).openssh
    except der.NotRsa:
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as err:
            raise CertificateError(f"not a usable private key: {err}") from None
        return _openssh_line(key.public_key())


def _openssh_line(public_key: object) -> str:
    """A non-RSA public key's OpenSSH line, through cryptography."""
    from cryptography.hazmat.primitives import serialization

    try:
        line = public_key.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    except (ValueError, TypeError, AttributeError) as err:
        raise CertificateError(f"the {type(public_key).__name__} has no OpenSSH form: "
                               f"{err}") from None
    return str(line.decode())


def load_certificate(pem: bytes) -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as err:
        raise CertificateError(f"not a PEM certificate: {err}") from None


# -- decrypted bundles ----------------------------------------------------------------------

class BundleCertificate(NamedTuple):
    """A certificate from the platform, named by thumbprint."""

    thumbprint: str
    pem: bytes


class BundleKey(NamedTuple):
    """A private key, named by the thumbprint of the certificate it belongs to."""

    thumbprint: str
    pem: bytes


class CertificateBundle(NamedTuple):
    """What the Certificates document held, decrypted, keys matched to certificates."""

    certificates: tuple[BundleCertificate, ...]
    keys: tuple[BundleKey, ...]

    @property
    def thumbprints(self) -> tuple[str, ...]:
        """The certificates' thumbprints, in the order delivered."""
        return tuple(c.thumbprint for c in self.certificates)


def public_der(public_key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_bundle(certificates: list[x509.Certificate],
                keys: list[PrivateKeyTypes]) -> CertificateBundle:
    """Name certificates by thumbprint and match each key to its certificate by public key."""
    from cryptography.hazmat.primitives import serialization

    found: dict[str, BundleCertificate] = {}
    by_public: dict[bytes, str] = {}
    for cert in certificates:
        der = cert.public_bytes(serialization.Encoding.DER)
        name = thumbprint(der)
        if name not in found:
            found[name] = BundleCertificate(name, cert.public_bytes(serialization.Encoding.PEM))
            by_public.setdefault(public_der(cert.public_key()), name)
    matched: dict[str, BundleKey] = {}
    for key in keys:
        owner = by_public.get(public_der(key.public_key()))
        if owner is None:
            log.warning("a private key in the certificates has no matching certificate: skipped")
            continue
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        matched[owner] = BundleKey(owner, pem)
    return CertificateBundle(tuple(found.values()), tuple(matched.values()))


def parse_pem_bundle(text: bytes) -> CertificateBundle:
    """Certificates and keys from PEM text (openssl pkcs12 output, with Bag Attributes),
    keys matched to certificates by RSA public key (cryptography for other key types)."""
    blocks = der.pem_blocks(text)
    certificates: dict[str, BundleCertificate] = {}
    owners: dict[der.RsaPublicKey, str] = {}
    keys: dict[str, BundleKey] = {}
    try:
        for label, body in blocks:
            if label == "CERTIFICATE":
                name = thumbprint(body)
                if name not in certificates:
                    certificates[name] = BundleCertificate(name, to_pem(label, body))
                    owners.setdefault(der.certificate_public_key(body), name)
        for label, body in blocks:
            if label in ("PRIVATE KEY", "RSA PRIVATE KEY"):
                public = der.private_key_public_key(body, pkcs1=label == "RSA PRIVATE KEY")
                owner = owners.get(public)
                if owner is None:
                    log.warning("a private key in the certificates has no matching "
                                "certificate: skipped")
                    continue
                keys[owner] = BundleKey(owner, to_pem(label, body))
            elif label.endswith("PRIVATE KEY"):
                raise der.NotRsa(f"{label} in decrypted certificates")
    except der.NotRsa:
        return _parse_pem_bundle_with_cryptography(text)
    except CertificateError as err:
        raise CertificateError(f"unreadable PEM in decrypted certificates: {err}") from None
    return CertificateBundle(tuple(certificates.values()), tuple(keys.values()))


def _parse_pem_bundle_with_cryptography(text: bytes) -> CertificateBundle:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certificates: list[x509.Certificate] = []
    keys: list[PrivateKeyTypes] = []
    for label, body in der.pem_blocks(text):
        try:
            if label == "CERTIFICATE":
                certificates.append(x509.load_der_x509_certificate(body))
            elif label.endswith("PRIVATE KEY"):
                keys.append(serialization.load_pem_private_key(to_pem(label, body), None))
        except (ValueError, TypeError) as err:
            raise CertificateError(f"unreadable {label} in decrypted certificates: "
                                   f"{err}") from None
    return make_bundle(certificates, keys)
