"""The in-process fallback: CMS EnvelopedData and PKCS#12 decryption without openssl.

Used where the openssl binary is missing or fails. The CMS structure is parsed with
asn1crypto (`cryptography` cannot read the platform's subjectKeyIdentifier recipients)
and decrypted with cryptography's primitives; both are imported inside the functions
that need them (heavy in memory and import time: never on the way to Ready when
openssl works).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from wire.errors import CertificateError
from wire.x509 import CertificateBundle, load_certificate, make_bundle

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

log = logging.getLogger("waagent.wire.certs")


# -- CMS decryption -------------------------------------------------------------------------

class UnsupportedCms(CertificateError):
    """The CMS uses an algorithm this process cannot decrypt; openssl may."""


def _certificate_der(certificate: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.DER)


def decrypt_cms(der: bytes, key_pem: bytes, cert_pem: bytes | None = None) -> bytes:
    """Decrypt a CMS EnvelopedData addressed to the transport key; return the content.

    The recipient is chosen by subjectKeyIdentifier or issuer and serial of `cert_pem`;
    without a certificate every RSA key-transport recipient is tried.
    """
    from asn1crypto import cms
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "enveloped_data":
            raise CertificateError(f"Certificates <Data> is CMS {info['content_type'].native}, "
                                   "not enveloped_data")
        envelope = info["content"]
        recipients = list(envelope["recipient_infos"])
        content_info = envelope["encrypted_content_info"]
        algorithm = content_info["content_encryption_algorithm"]
        encrypted = content_info["encrypted_content"].native
    except CertificateError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        raise CertificateError(f"Certificates <Data> is not a readable CMS EnvelopedData "
                               f"(truncated or corrupt): {err}") from None
    if encrypted is None:
        raise CertificateError("the CMS EnvelopedData carries no encrypted content")
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as err:
        raise CertificateError(f"the transport private key is unreadable: {err}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertificateError("the transport key is not an RSA key")
    candidates = _recipients_for(recipients, cert_pem)
    if not candidates:
        raise CertificateError(
            "the certificates are not encrypted to this VM's transport certificate (no CMS "
            "recipient matches it); the platform may hold an older transport certificate: "
            "fetch the goal state again")
    failures = []
    for recipient in candidates:
        try:
            content_key = _unwrap_key(recipient, key)
            return _decrypt_content(algorithm, content_key, encrypted)
        except UnsupportedCms:
            raise
        except CertificateError as err:
            failures.append(str(err))
    raise CertificateError("cannot decrypt the certificates with the transport key "
                           f"({'; '.join(failures)}); was the transport pair replaced after "
                           "the platform encrypted them? Fetch the goal state again")


def _recipients_for(recipients: list[object], cert_pem: bytes | None) -> list[object]:
    """The key-transport recipients that name our certificate (all of them without one)."""
    transport = [r.chosen for r in recipients if r.name == "ktri"]  # type: ignore[attr-defined]
    if cert_pem is None:
        return list(transport)
    from asn1crypto import x509 as asn1_x509

    ours = asn1_x509.Certificate.load(_certificate_der(load_certificate(cert_pem)))
    key_ids = {ours.key_identifier, ours.public_key.sha1}  # extension, or RFC 5280 method 1
    matching = []
    for recipient in transport:
        rid = recipient["rid"]
        if rid.name == "subject_key_identifier" and rid.chosen.native in key_ids:
            matching.append(recipient)
        elif rid.name == "issuer_and_serial_number":
            issuer_serial = rid.chosen
            if (issuer_serial["issuer"] == ours.issuer
                    and issuer_serial["serial_number"].native == ours.serial_number):
                matching.append(recipient)
    return matching


def _unwrap_key(recipient: object, key: object) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    assert isinstance(key, rsa.RSAPrivateKey)
    algorithm = recipient["key_encryption_algorithm"]["algorithm"].native  # type: ignore[index]
    wrapped = recipient["encrypted_key"].native  # type: ignore[index]
    if algorithm in ("rsaes_pkcs1v15", "rsa"):
        scheme: padding.AsymmetricPadding = padding.PKCS1v15()
    elif algorithm == "rsaes_oaep":
        scheme = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(),  # noqa: S303
                              label=None)
    else:
        raise UnsupportedCms(f"key transport {algorithm} is not supported in-process")
    try:
        return key.decrypt(wrapped, scheme)
    except ValueError:
        raise CertificateError("the content key does not decrypt with this transport key") from None


def _decrypt_content(algorithm: object, content_key: bytes, encrypted: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes

    try:
        cipher_name = algorithm.encryption_cipher  # type: ignore[attr-defined]
        iv = algorithm.encryption_iv  # type: ignore[attr-defined]
    except (ValueError, KeyError) as err:
        raise UnsupportedCms(f"content encryption is not supported in-process: {err}") from None
    cipher: CipherAlgorithm
    if cipher_name == "tripledes":
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES

        if len(content_key) not in (16, 24):
            raise CertificateError("the decrypted 3DES content key has the wrong length")
        cipher = TripleDES(content_key)
    elif cipher_name == "aes":
        if len(content_key) not in (16, 24, 32):
            raise CertificateError("the decrypted AES content key has the wrong length")
        cipher = algorithms.AES(content_key)
    else:
        raise UnsupportedCms(f"content encryption {cipher_name} is not supported in-process")
    block = 8 if cipher_name == "tripledes" else 16
    if not encrypted or len(encrypted) % block or len(iv or b"") != block:
        raise CertificateError("the encrypted content is truncated (not whole cipher blocks)")
    decryptor = Cipher(cipher, modes.CBC(iv)).decryptor()
    padded = decryptor.update(encrypted) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= block or padded[-pad:] != bytes([pad]) * pad:
        raise CertificateError("the decrypted content has bad padding: wrong transport key "
                               "or corrupt data")
    return padded[:-pad]


# -- PKCS#12 ----------------------------------------------------------------------------------

def read_pkcs12(pfx: bytes) -> CertificateBundle:
    """The certificates and keys of a PKCS#12 (empty password, with or without MAC).

    Read here, bag by bag: cryptography's loader returns only the first private key
    (the platform sends one per key pair and per extension certificate), and it checks
    each RSA key's mathematics, slowly, on the way to Ready, for keys that come
    out of the platform's own envelope. Algorithms this reader does not know go to
    cryptography's loader.
    """
    try:
        return _read_pkcs12_bags(pfx)
    except UnsupportedCms as unsupported:
        log.debug("PKCS#12 read by cryptography: %s", unsupported)
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import pkcs12

    errors = []
    for password in (b"", None):
        try:
            key, cert, more = pkcs12.load_key_and_certificates(pfx, password)
        except (ValueError, UnsupportedAlgorithm) as err:
            errors.append(str(err))
            continue
        certificates = ([cert] if cert is not None else []) + list(more)
        return make_bundle(certificates, [key] if key is not None else [])
    raise CertificateError("the decrypted certificates are not a PKCS#12 readable with an "
                           f"empty password: {errors[-1]}")


# The empty password as PKCS#12 encodes it: a BMPString with its terminator.
_EMPTY_PASSWORD = b"\x00\x00"


def _pkcs12_kdf(password: bytes, salt: bytes, purpose: int, iterations: int,
                length: int) -> bytes:
    """RFC 7292 appendix B.2 key derivation with SHA-1 (PKCS#12 PBE)."""
    import hashlib

    v = 64  # SHA-1's block size
    diversifier = bytes([purpose]) * v

    def stretch(data: bytes) -> bytes:
        """Copies of `data` filling the next multiple of v bytes."""
        if not data:
            return b""
        size = v * ((len(data) + v - 1) // v)
        return (data * (size // len(data) + 1))[:size]

    block = stretch(salt) + stretch(password)
    out = b""
    while len(out) < length:
        digest = hashlib.sha1(diversifier + block).digest()
        for _ in range(iterations - 1):
            digest = hashlib.sha1(digest).digest()
        out += digest
        increment = int.from_bytes(stretch(digest), "big") + 1
        block = b"".join(
            ((int.from_bytes(block[i:i + v], "big") + increment) % (1 << (8 * v))).to_bytes(v, "big")
            for i in range(0, len(block), v))
    return out[:length]


def _pbe_decrypt(algorithm: Any, data: bytes) -> bytes:
    """Decrypt PKCS#12 content or a key with the empty password: PBE-SHA1-3DES or PBES2."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives import hashes, padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    name = algorithm["algorithm"].native
    if name == "pkcs12_sha1_tripledes_3key":
        params = algorithm["parameters"]
        salt, rounds = params["salt"].native, params["iterations"].native
        key = _pkcs12_kdf(_EMPTY_PASSWORD, salt, 1, rounds, 24)
        iv = _pkcs12_kdf(_EMPTY_PASSWORD, salt, 2, rounds, 8)
        cipher = Cipher(TripleDES(key), modes.CBC(iv))
        block = 64
    elif name == "pbes2":
        kdf = algorithm["parameters"]["key_derivation_func"]["parameters"]
        scheme = algorithm["parameters"]["encryption_scheme"]
        prf = kdf["prf"]["algorithm"].native if kdf["prf"] else "sha1"
        hashers: dict[str, hashes.HashAlgorithm] = {
            "sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha512": hashes.SHA512()}
        hasher = hashers.get(prf.replace("hmac_", ""))
        if hasher is None or not scheme.encryption_cipher == "aes":
            raise UnsupportedCms(f"PBES2 with {prf} and {scheme['algorithm'].native}")
        key = PBKDF2HMAC(hasher, scheme.key_length or 32, kdf["salt"].native,
                         kdf["iteration_count"].native).derive(b"")
        cipher = Cipher(algorithms.AES(key), modes.CBC(scheme.encryption_iv))
        block = 128
    else:
        raise UnsupportedCms(f"PKCS#12 encryption {name}")
    decryptor = cipher.decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(block).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _check_pkcs12_mac(pfx: Any) -> None:
    """The PKCS#12 MAC (HMAC-SHA1 keyed from the empty password) must match its content."""
    import hmac

    mac_data = pfx["mac_data"]
    if not mac_data:
        return
    if mac_data["mac"]["digest_algorithm"]["algorithm"].native != "sha1":
        raise UnsupportedCms("PKCS#12 MAC with a digest other than SHA-1")
    salt = mac_data["mac_salt"].native
    rounds = mac_data["iterations"].native or 1
    key = _pkcs12_kdf(_EMPTY_PASSWORD, salt, 3, rounds, 20)
    content = pfx["auth_safe"]["content"].native
    want = mac_data["mac"]["digest"].native
    if not hmac.compare_digest(hmac.new(key, content, "sha1").digest(), want):
        raise CertificateError("the PKCS#12 MAC does not match its content (corrupted, or "
                               "not encrypted with an empty password)")


def _read_pkcs12_bags(pfx_der: bytes) -> CertificateBundle:
    """Every certificate and private key of a PKCS#12, its MAC checked."""
    from asn1crypto import keys as asn1_keys
    from asn1crypto import pkcs12 as asn1_pkcs12
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certificates: list[x509.Certificate] = []
    keys: list[PrivateKeyTypes] = []
    try:
        pfx = asn1_pkcs12.Pfx.load(pfx_der)
        _check_pkcs12_mac(pfx)
        for info in pfx.authenticated_safe:
            kind = info["content_type"].native
            if kind == "data":
                safe = info["content"].native
            elif kind == "encrypted_data":
                encrypted = info["content"]["encrypted_content_info"]
                safe = _pbe_decrypt(encrypted["content_encryption_algorithm"],
                                    encrypted["encrypted_content"].native)
            else:
                raise UnsupportedCms(f"PKCS#12 safe of type {kind}")
            for bag in asn1_pkcs12.SafeContents.load(safe):
                bag_kind = bag["bag_id"].native
                value = bag["bag_value"].untag()
                if bag_kind == "cert_bag" and value["cert_id"].native == "x509":
                    certificates.append(x509.load_der_x509_certificate(
                        value["cert_value"].parsed.dump()))
                elif bag_kind in ("pkcs8_shrouded_key_bag", "key_bag"):
                    if bag_kind == "pkcs8_shrouded_key_bag":
                        info_der = asn1_keys.EncryptedPrivateKeyInfo.load(value.dump())
                        plain = _pbe_decrypt(info_der["encryption_algorithm"],
                                             info_der["encrypted_data"].native)
                    else:
                        plain = value.dump()
                    keys.append(serialization.load_der_private_key(
                        plain, password=None, unsafe_skip_rsa_key_validation=True))
    except (ValueError, TypeError, KeyError) as err:
        raise CertificateError(f"the decrypted certificates are not a PKCS#12 this agent reads: "
                               f"{err}") from None
    return make_bundle(certificates, keys)
