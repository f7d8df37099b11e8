"""Just enough DER to name the RSA key in a certificate or private key, without a library.

The agent needs three facts from the platform's certificates and keys: which key belongs
to which certificate, the OpenSSH line of a certificate's or key's public key, and whether
the transport certificate and key are a pair. All three are the RSA modulus and exponent,
which sit at fixed places in X.509 (RFC 5280), PKCS#8 (RFC 5208) and PKCS#1 (RFC 8017).
Reading them here keeps cryptography (~15 MB resident) and asn1crypto (~9 MB) out of the
agent's process on the way to Ready; anything that is not RSA raises `NotRsa`, and the
callers fall back to cryptography.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import NamedTuple

from wire.errors import CertificateError

_SEQUENCE, _INTEGER, _BIT_STRING, _OCTET_STRING, _OID = 0x30, 0x02, 0x03, 0x04, 0x06
_CONTEXT_0 = 0xA0
# 1.2.840.113549.1.1.1, rsaEncryption, as DER content bytes.
_RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


class NotRsa(CertificateError):
    """The key is not RSA (or is structured in a way this reader does not know)."""


class RsaPublicKey(NamedTuple):
    """An RSA public key: what pairs a key with its certificate."""

    modulus: int
    exponent: int

    @property
    def openssh(self) -> str:
        """The OpenSSH public key line: `ssh-rsa AAAA...`."""
        def field(value: bytes) -> bytes:
            return struct.pack(">I", len(value)) + value

        def mpint(number: int) -> bytes:
            # Big-endian two's complement: a leading zero byte when the top bit is set.
            return field(number.to_bytes(number.bit_length() // 8 + 1, "big"))

        blob = field(b"ssh-rsa") + mpint(self.exponent) + mpint(self.modulus)
        return "ssh-rsa " + base64.b64encode(blob).decode()


class _Element(NamedTuple):
    tag: int
    content: bytes


def _read(data: bytes, offset: int = 0) -> tuple[_Element, int]:
    """The element at `offset` and the offset after it."""
    if offset + 2 > len(data):
        raise CertificateError("DER data ends inside an element header")
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or offset + count > len(data):
            raise CertificateError("DER element has an unsupported length encoding")
        length = int.from_bytes(data[offset:offset + count], "big")
        offset += count
    end = offset + length
    if end > len(data):
        raise CertificateError("DER element is longer than its data (truncated)")
    return _Element(tag, data[offset:end]), end


def _children(element: _Element, expected: int = _SEQUENCE) -> list[_Element]:
    if element.tag != expected:
        raise CertificateError(f"DER element 0x{element.tag:02x} where 0x{expected:02x} "
                               "was expected")
    found, offset = [], 0
    while offset < len(element.content):
        child, offset = _read(element.content, offset)
        found.append(child)
    return found


def _whole(der: bytes) -> _Element:
    element, end = _read(der)
    if end != len(der):
        raise CertificateError("DER data has trailing bytes")
    return element


def _integer(element: _Element) -> int:
    if element.tag != _INTEGER or not element.content:
        raise CertificateError("DER INTEGER expected")
    return int.from_bytes(element.content, "big", signed=True)


def _rsa_public(rsa_public_key: bytes) -> RsaPublicKey:
    """RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }"""
    modulus, exponent, *_ = _children(_whole(rsa_public_key))
    return RsaPublicKey(_integer(modulus), _integer(exponent))


def _check_rsa_algorithm(algorithm: _Element) -> None:
    oid = _children(algorithm)[0]
    if oid.tag != _OID or oid.content != _RSA_ENCRYPTION:
        raise NotRsa("the key is not an RSA key")


def spki_public_key(spki: _Element) -> RsaPublicKey:
    """SubjectPublicKeyInfo ::= SEQUENCE { algorithm, subjectPublicKey BIT STRING }"""
    algorithm, bits = _children(spki)[:2]
    _check_rsa_algorithm(algorithm)
    if bits.tag != _BIT_STRING or not bits.content or bits.content[0] != 0:
        raise CertificateError("subjectPublicKey is not a whole-byte BIT STRING")
    return _rsa_public(bits.content[1:])


def certificate_public_key(certificate_der: bytes) -> RsaPublicKey:
    """The RSA public key of an X.509 certificate."""
    try:
        tbs = _children(_children(_whole(certificate_der))[0])
        # TBSCertificate: [0] version (optional), serial, signature, issuer, validity,
        # subject, subjectPublicKeyInfo, ...
        fields = tbs[1:] if tbs and tbs[0].tag == _CONTEXT_0 else tbs
        return spki_public_key(fields[5])
    except IndexError:
        raise CertificateError("the certificate is truncated before its public key") from None


def private_key_public_key(key_der: bytes, *, pkcs1: bool = False) -> RsaPublicKey:
    """The public half of an RSA private key, PKCS#8 (`PRIVATE KEY`) or PKCS#1."""
    try:
        fields = _children(_whole(key_der))
        if not pkcs1:
            # PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey OCTET STRING }
            _check_rsa_algorithm(fields[1])
            if fields[2].tag != _OCTET_STRING:
                raise CertificateError("PKCS#8 privateKey is not an OCTET STRING")
            fields = _children(_whole(fields[2].content))
        # RSAPrivateKey ::= SEQUENCE { version, modulus, publicExponent, ... }
        return RsaPublicKey(_integer(fields[1]), _integer(fields[2]))
    except IndexError:
        raise CertificateError("the private key is truncated") from None


def pem_blocks(text: bytes) -> list[tuple[str, bytes]]:
    """(label, DER) of each PEM block in text: `CERTIFICATE`, `PRIVATE KEY`, ..."""
    blocks = []
    for match in _PEM_BLOCK.finditer(text):
        label = match.group(1).decode()
        try:
            blocks.append((label, base64.b64decode(b"".join(match.group(2).split()),
                                                   validate=True)))
        except ValueError:
            raise CertificateError(f"PEM {label} block is not valid base64") from None
    return blocks


def pem_public_key(pem: bytes) -> RsaPublicKey:
    """The RSA public key of the first certificate or private key in PEM text."""
    for label, der in pem_blocks(pem):
        if label == "CERTIFICATE":
            return certificate_public_key(der)
        if label == "PRIVATE KEY":
            return private_key_public_key(der)
        if label == "RSA PRIVATE KEY":
            return private_key_public_key(der, pkcs1=True)
        if label.endswith("PRIVATE KEY"):
            raise NotRsa(f"a {label} is not an unencrypted RSA key")
    raise CertificateError("no PEM certificate or private key found")
