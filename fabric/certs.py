"""The certificates channel: PKCS#12 inside a CMS envelope, in the platform's exact format.

PLATFORM.md section 2 "The exact format": the PKCS#12 has an empty password
and a MAC, the CMS EnvelopedData names its recipient by subjectKeyIdentifier,
the content is 3DES (AES-128 when the agent asks for AES128_CBC), and the
base64 in <Data> is wrapped at 64 characters.

The PKCS#12 is assembled here with asn1crypto because neither the openssl
command (one private key per file) nor cryptography (no empty password with
MAC) can write what the platform writes when it carries several key pairs;
its layout copies the fixture's (openssl pkcs12 -info on wire/certs.xml).
The CMS envelope is made by the openssl binary: the fabric is not the agent,
so running a command here is fine, and it gives the exact recipient format.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import tempfile
from dataclasses import dataclass

from asn1crypto import algos, cms, keys, pkcs12
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, modes

_PBE_ITERATIONS = 2000
_OPENSSL_TIMEOUT = 30


class CertificateError(Exception):
    """The certificates document could not be built (bad transport certificate, openssl failure)."""


@dataclass(frozen=True)
class Delivered:
    """One certificate the platform delivers, with its private key when the VM gets it."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey | None = None


def _pkcs12_kdf(password: bytes, salt: bytes, purpose: int, iterations: int, length: int) -> bytes:
    """RFC 7292 appendix B.2 key derivation with SHA-1 (u=20, v=64), as the platform uses."""
    u, v = 20, 64
    diversifier = bytes([purpose]) * v

    def stretch(data: bytes) -> bytes:
        if not data:
            return b""
        count = -(-len(data) // v) * v
        return (data * (count // len(data) + 1))[:count]

    block = stretch(salt) + stretch(password)
    out = b""
    while len(out) < length:
        digest = hashlib.sha1(diversifier + block).digest()  # noqa: S324 - PKCS#12 format
        for _ in range(iterations - 1):
            digest = hashlib.sha1(digest).digest()  # noqa: S324
        out += digest
        b = int.from_bytes((digest * (v // u + 1))[:v], "big")
        block = b"".join(
            ((int.from_bytes(block[j : j + v], "big") + b + 1) % (1 << (v * 8))).to_bytes(v, "big")
            for j in range(0, len(block), v)
        )
    return out[:length]


# An empty password is the BMPString terminator alone: two zero bytes.
_EMPTY_PASSWORD = b"\x00\x00"


def _pbe_3des(data: bytes) -> tuple[algos.EncryptionAlgorithm, bytes]:
    """pbeWithSHAAnd3-KeyTripleDES-CBC with the empty password: what the platform's PFX uses."""
    salt = os.urandom(8)
    key = _pkcs12_kdf(_EMPTY_PASSWORD, salt, 1, _PBE_ITERATIONS, 24)
    iv = _pkcs12_kdf(_EMPTY_PASSWORD, salt, 2, _PBE_ITERATIONS, 8)
    padder = padding.PKCS7(64).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(TripleDES(key), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    algorithm = algos.EncryptionAlgorithm(
        {
            "algorithm": "pkcs12_sha1_tripledes_3key",
            "parameters": {"salt": salt, "iterations": _PBE_ITERATIONS},
        }
    )
    return algorithm, encrypted


def build_pkcs12(items: list[Delivered]) -> bytes:
    """A PKCS#12 (DER) laid out as the platform's: empty password, SHA-1 MAC.

    As in the fixture wire/certs.xml: a data ContentInfo with the keys as
    shrouded key bags, then an encrypted-data ContentInfo with the certificate
    bags, both pbeWithSHAAnd3-KeyTripleDES-CBC, 2000 iterations.
    """
    key_bags = []
    cert_bags = []
    for index, item in enumerate(items):
        local_id = pkcs12.Attribute(
            {"type": "local_key_id", "values": [hashlib.sha1(bytes([index])).digest()]}  # noqa: S324
        )
        cert_der = item.cert.public_bytes(serialization.Encoding.DER)
        cert_bags.append(
            pkcs12.SafeBag(
                {
                    "bag_id": "cert_bag",
                    "bag_value": pkcs12.CertBag(
                        {"cert_id": "x509", "cert_value": asn1_x509.Certificate.load(cert_der)}
                    ),
                    "bag_attributes": [local_id] if item.key else None,
                }
            )
        )
        if item.key is not None:
            key_der = item.key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            algorithm, encrypted = _pbe_3des(key_der)
            key_bags.append(
                pkcs12.SafeBag(
                    {
                        "bag_id": "pkcs8_shrouded_key_bag",
                        "bag_value": keys.EncryptedPrivateKeyInfo(
                            {"encryption_algorithm": algorithm, "encrypted_data": encrypted}
                        ),
                        "bag_attributes": [local_id],
                    }
                )
            )
    safes = []
    if key_bags:
        safes.append(
            cms.ContentInfo({"content_type": "data", "content": pkcs12.SafeContents(key_bags).dump()})
        )
    algorithm, encrypted = _pbe_3des(pkcs12.SafeContents(cert_bags).dump())
    safes.append(
        cms.ContentInfo(
            {
                "content_type": "encrypted_data",
                "content": cms.EncryptedData(
                    {
                        "version": "v0",
                        "encrypted_content_info": {
                            "content_type": "data",
                            "content_encryption_algorithm": algorithm,
                            "encrypted_content": encrypted,
                        },
                    }
                ),
            }
        )
    )
    auth_safe = pkcs12.AuthenticatedSafe(safes).dump()
    salt = os.urandom(20)
    mac_key = _pkcs12_kdf(_EMPTY_PASSWORD, salt, 3, _PBE_ITERATIONS, 20)
    mac = hmac.new(mac_key, auth_safe, hashlib.sha1).digest()
    pfx = pkcs12.Pfx(
        {
            "version": 3,
            "auth_safe": cms.ContentInfo({"content_type": "data", "content": auth_safe}),
            "mac_data": pkcs12.MacData(
                {
                    "mac": algos.DigestInfo({"digest_algorithm": {"algorithm": "sha1"}, "digest": mac}),
                    "mac_salt": salt,
                    "iterations": _PBE_ITERATIONS,
                }
            ),
        }
    )
    der: bytes = pfx.dump()
    return der


def transport_cert_from_header(value: str) -> x509.Certificate:
    """The agent's transport certificate from x-ms-guest-agent-public-x509-cert (base64 DER)."""
    text = "".join(
        line for line in value.replace("\\n", "\n").splitlines() if "-----" not in line
    )
    try:
        return x509.load_der_x509_certificate(base64.b64decode(text, validate=False))
    except ValueError as error:
        raise CertificateError(f"bad transport certificate in header: {error}") from error


def _openssl_cms_encrypt(data: bytes, recipient: x509.Certificate, cipher: str, keyid: bool) -> bytes:
    with tempfile.TemporaryDirectory(prefix="fabric-cms-") as tmp:
        recip = os.path.join(tmp, "recip.pem")
        with open(recip, "wb") as f:
            f.write(recipient.public_bytes(serialization.Encoding.PEM))
        argv = ["openssl", "cms", "-encrypt", "-binary", f"-{cipher}", "-outform", "DER"]
        if keyid:
            argv.append("-keyid")
        argv += ["-recip", recip]
        try:
            result = subprocess.run(  # noqa: S603 - fixed argv, no shell
                argv, input=data, capture_output=True, timeout=_OPENSSL_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise CertificateError(f"openssl cms -encrypt could not run: {error}") from error
        if result.returncode != 0:
            raise CertificateError(
                f"openssl cms -encrypt failed ({result.returncode}): {result.stderr.decode(errors='replace')}"
            )
        output: bytes = result.stdout
        return output


def envelope_certificates(
    items: list[Delivered], transport: x509.Certificate, cipher_name: str | None
) -> bytes:
    """CMS EnvelopedData (DER) of a PKCS#12 of items, to the transport certificate.

    Recipient by subjectKeyIdentifier (-keyid); AES-128-CBC only when the agent
    asks for AES128_CBC, otherwise DES-EDE3-CBC as the platform answers old agents.
    """
    return envelope_pkcs12(build_pkcs12(items), transport, cipher_name)


def envelope_pkcs12(pfx: bytes, transport: x509.Certificate, cipher_name: str | None) -> bytes:
    """`envelope_certificates` for a PKCS#12 already built (the fabric builds one per goal
    state, as the platform does, and encrypts it to each transport certificate asking)."""
    cipher = "aes128" if (cipher_name or "").upper() == "AES128_CBC" else "des3"
    return _openssl_cms_encrypt(pfx, transport, cipher, keyid=True)


def encrypt_settings(plaintext: bytes, cert: x509.Certificate) -> str:
    """protectedSettings as the platform sends them: base64 DER CMS to the settings certificate."""
    der = _openssl_cms_encrypt(plaintext, cert, "des3", keyid=False)
    return base64.b64encode(der).decode()


def wrap64(data: bytes) -> str:
    """Base64 wrapped at 64 characters a line (OpenSSL's S/MIME reader needs short lines)."""
    text = base64.b64encode(data).decode()
    return "".join(text[i : i + 64] + "\n" for i in range(0, len(text), 64))
