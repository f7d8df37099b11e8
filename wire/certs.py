"""The transport certificate, certificate decryption and storage, certificate -> SSH key.

The platform encrypts the VM's certificates (a PKCS#12 with an empty password) in a
CMS EnvelopedData to the agent's transport certificate (PLATFORM.md section 2).
`cryptography` cannot read the platform's subjectKeyIdentifier recipients, so the
CMS structure is parsed with asn1crypto and decrypted with cryptography's RSA and
cipher primitives, in-process. When that meets an algorithm it does not support,
the openssl binary (`OS.OpensslPath`) is run through the Runner instead.

cryptography and asn1crypto are imported inside the functions: importing them costs
tens of milliseconds the no-op boot path must not pay.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import hashlib
import logging
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from system.errors import CommandFailed
from system.fs import FileSystem
from wire.documents import CertificateFile
from wire.errors import CertificateError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

log = logging.getLogger("waagent.wire.certs")

TRANSPORT_CERT = "TransportCert.pem"
TRANSPORT_KEY = "TransportPrivate.pem"
TRANSPORT_SUBJECT = "LinuxTransport"
TRANSPORT_VALIDITY_DAYS = 730
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)


# -- thumbprints and SSH keys ---------------------------------------------------------------

def thumbprint(certificate_der: bytes) -> str:
    """The platform's name for a certificate: SHA-1 of its DER, upper-case hex."""
    return hashlib.sha1(certificate_der).hexdigest().upper()  # noqa: S324 - a name, not security


def certificate_thumbprint(certificate_pem: bytes) -> str:
    """The thumbprint of a PEM certificate."""
    return thumbprint(_certificate_der(_load_certificate(certificate_pem)))


def ssh_public_key(certificate_pem: bytes) -> str:
    """The OpenSSH public key line (`ssh-rsa AAAA...`) of a certificate's key.

    For SSH keys the platform delivers by thumbprint (`<Fingerprint>.crt`).
    """
    from cryptography.hazmat.primitives import serialization

    key = _load_certificate(certificate_pem).public_key()
    try:
        line = key.public_bytes(serialization.Encoding.OpenSSH,
                                serialization.PublicFormat.OpenSSH)
    except (ValueError, TypeError) as err:
        raise CertificateError(f"the certificate's {type(key).__name__} has no OpenSSH form: "
                               f"{err}") from None
    return line.decode()


def _load_certificate(pem: bytes) -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as err:
        raise CertificateError(f"not a PEM certificate: {err}") from None


def _certificate_der(certificate: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.DER)


# -- the transport pair ---------------------------------------------------------------------

@dataclass(frozen=True)
class TransportPair:
    """The agent's transport certificate and key, as stored in Lib.Dir."""

    cert_path: Path
    key_path: Path
    cert_pem: bytes
    key_pem: bytes

    @property
    def header_value(self) -> str:
        """`x-ms-guest-agent-public-x509-cert`: base64 DER, without PEM lines."""
        return transport_header_value(self.cert_pem)


def transport_header_value(cert_pem: bytes) -> str:
    """The body of a PEM certificate on one line: base64 of its DER."""
    match = _PEM_BLOCK.search(cert_pem)
    if match is None or match.group(1) != b"CERTIFICATE":
        raise CertificateError("the transport certificate is not a PEM certificate")
    body = match.group(0).splitlines()[1:-1]
    return b"".join(line.strip() for line in body).decode()


def load_transport_pair(lib_dir: Path) -> TransportPair | None:
    """The stored transport pair when both files are there and belong together, else None."""
    cert_path, key_path = lib_dir / TRANSPORT_CERT, lib_dir / TRANSPORT_KEY
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError:
        return None
    from cryptography.hazmat.primitives import serialization

    try:
        # Our own key, written by this agent: checking the RSA mathematics again on every
        # new goal state costs ~50 ms and proves nothing the pairing check below does not.
        key = serialization.load_pem_private_key(key_pem, None,
                                                 unsafe_skip_rsa_key_validation=True)
        cert = _load_certificate(cert_pem)
    except (ValueError, TypeError, CertificateError) as err:
        log.warning("transport pair in %s is unreadable (%s): making a new one", lib_dir, err)
        return None
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        log.warning("%s does not belong to %s: making a new transport pair", cert_path, key_path)
        return None
    return TransportPair(cert_path, key_path, cert_pem, key_pem)


def ensure_transport_pair(fs: FileSystem, lib_dir: Path,
                          generated: Callable[[], tuple[bytes, bytes]] | None = None,
                          ) -> TransportPair:
    """The transport pair, generated once (RSA-2048, `CN=LinuxTransport`) and kept 0600.

    `generated` gives a pair made ahead of time (in a thread, while the goal state is on
    its way); without it the pair is generated here. In plan mode a new pair is made in
    memory only and the writes are recorded.
    """
    existing = load_transport_pair(lib_dir)
    if existing is not None:
        return existing
    cert_pem, key_pem = (generated or generate_transport_pair)()
    fs.mkdir(lib_dir, mode=0o700, why="agent state directory (holds private keys)")
    cert_path, key_path = lib_dir / TRANSPORT_CERT, lib_dir / TRANSPORT_KEY
    # The key first: a certificate without its key is useless, the reverse is regenerated.
    fs.write(key_path, key_pem, mode=0o600, why="transport private key", secret=True)
    fs.write(cert_path, cert_pem, mode=0o600, why="transport certificate")
    return TransportPair(cert_path, key_path, cert_pem, key_pem)


def generate_transport_pair() -> tuple[bytes, bytes]:
    """A new self-signed RSA-2048 `CN=LinuxTransport` certificate and key, as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TRANSPORT_SUBJECT)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # tolerate a clock behind
        .not_valid_after(now + datetime.timedelta(days=TRANSPORT_VALIDITY_DAYS))
        # The platform names the recipient by subjectKeyIdentifier: make it explicit.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# -- decrypted bundles ----------------------------------------------------------------------

@dataclass(frozen=True)
class BundleCertificate:
    """A certificate from the platform, named by thumbprint."""

    thumbprint: str
    pem: bytes


@dataclass(frozen=True)
class BundleKey:
    """A private key, named by the thumbprint of the certificate it belongs to."""

    thumbprint: str
    pem: bytes


@dataclass(frozen=True)
class CertificateBundle:
    """What the Certificates document held, decrypted, keys matched to certificates."""

    certificates: tuple[BundleCertificate, ...]
    keys: tuple[BundleKey, ...]

    @property
    def thumbprints(self) -> tuple[str, ...]:
        """The certificates' thumbprints, in the order delivered."""
        return tuple(c.thumbprint for c in self.certificates)


def _public_der(public_key: object) -> bytes:
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
            by_public.setdefault(_public_der(cert.public_key()), name)
    matched: dict[str, BundleKey] = {}
    for key in keys:
        owner = by_public.get(_public_der(key.public_key()))
        if owner is None:
            log.warning("a private key in the certificates has no matching certificate: skipped")
            continue
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        matched[owner] = BundleKey(owner, pem)
    return CertificateBundle(tuple(found.values()), tuple(matched.values()))


def parse_pem_bundle(text: bytes) -> CertificateBundle:
    """Certificates and keys from PEM text (openssl pkcs12 output, with Bag Attributes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certificates: list[x509.Certificate] = []
    keys: list[PrivateKeyTypes] = []
    for match in _PEM_BLOCK.finditer(text):
        kind, block = match.group(1), match.group(0)
        try:
            if kind == b"CERTIFICATE":
                certificates.append(x509.load_pem_x509_certificate(block))
            elif kind.endswith(b"PRIVATE KEY"):
                keys.append(serialization.load_pem_private_key(block, None))
        except (ValueError, TypeError) as err:
            raise CertificateError(f"unreadable {kind.decode()} in decrypted certificates: "
                                   f"{err}") from None
    return make_bundle(certificates, keys)


def read_pkcs12(pfx: bytes) -> CertificateBundle:
    """The certificates and keys of a PKCS#12 (empty password, with or without MAC).

    Read here, bag by bag: cryptography's loader returns only the first private key
    (the platform sends one per key pair and per extension certificate), and it checks
    each RSA key's mathematics, ~50 ms a key on the way to Ready, for keys that come
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


# -- CMS decryption -------------------------------------------------------------------------

class UnsupportedCms(CertificateError):
    """The CMS uses an algorithm this process cannot decrypt; openssl may."""


def decode_certificate_data(data: str) -> bytes:
    """The DER bytes of `<Data>` (base64, wrapped at 64 columns)."""
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise CertificateError(f"Certificates <Data> is not valid base64: {err}") from None


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

    ours = asn1_x509.Certificate.load(_certificate_der(_load_certificate(cert_pem)))
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


def openssl_command(openssl_path: str | None) -> str:
    """The openssl binary to run: `OS.OpensslPath` when set, else `openssl` from PATH."""
    return openssl_path or "openssl"


# -- installing certificates ----------------------------------------------------------------

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
    Everything is decrypted in memory first; if storing fails part-way, the files this
    call created are removed, so no partial set of keys is left behind.
    """
    if document.data is None:
        log.debug("Certificates document has no <Data>: no certificates")
        return CertificateBundle((), ())
    if not document.is_pfx:
        log.warning("Certificates document format %r is not %s: skipped",
                    document.format, "Pkcs7BlobWithPfxContents")
        return CertificateBundle((), ())
    der = decode_certificate_data(document.data)
    try:
        pfx = decrypt_cms(der, pair.key_pem, pair.cert_pem)
    except UnsupportedCms as err:
        log.info("in-process decryption unsupported (%s): using %s", err, openssl)
        bundle = _decrypt_with_openssl(fs, lib_dir, der, pair, openssl)
    else:
        try:
            bundle = read_pkcs12(pfx)
        except CertificateError as err:
            # Old PKCS#12 ciphers (RC2, ...) that this cryptography build refuses: openssl
            # may read them (with -legacy). If it cannot either, both reasons are shown.
            log.info("in-process PKCS#12 reading failed (%s): trying %s", err, openssl)
            try:
                bundle = _decrypt_with_openssl(fs, lib_dir, der, pair, openssl)
            except CertificateError as fallback:
                raise CertificateError(f"{err}; {fallback}") from None
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


def _command_path(fs: FileSystem, path: Path) -> str:
    """A path as a command sees it: inside the root when commands run chrooted."""
    runner = fs.runner
    if runner.chroot and not runner.root.is_host:
        return runner.root.system_path(path)
    return str(path)


def _decrypt_with_openssl(fs: FileSystem, lib_dir: Path, der: bytes, pair: TransportPair,
                          openssl: str) -> CertificateBundle:
    """The openssl binary's way: `cms -decrypt`, then `pkcs12 -nodes` to PEM."""
    runner = fs.runner
    if runner.plan:
        raise CertificateError("certificates need the openssl binary to decrypt; not run in "
                               "plan mode")
    armoured = ("-----BEGIN CMS-----\n"
                + "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
                + "\n-----END CMS-----\n")
    fs.mkdir(lib_dir, mode=0o700, why="agent state directory (holds private keys)")
    scratch = lib_dir / ".Certificates.p12.partial"
    try:
        runner.change([openssl, "cms", "-decrypt", "-inform", "PEM",
                       "-inkey", _command_path(fs, pair.key_path),
                       "-recip", _command_path(fs, pair.cert_path),
                       "-out", _command_path(fs, scratch)],
                      input=armoured, why="decrypt platform certificates (openssl fallback)")
        pem = ""
        for extra in ([], ["-legacy"]):  # OpenSSL 3 reads old PKCS#12 ciphers only with -legacy
            result = runner.probe([openssl, "pkcs12", "-nodes", "-password", "pass:", *extra,
                                   "-in", _command_path(fs, scratch)])
            if result.ok:
                pem = result.stdout
                break
        if not pem:
            raise CertificateError(f"{openssl} pkcs12 could not read the decrypted certificates")
    except CommandFailed as err:
        raise CertificateError(f"{openssl} could not decrypt the certificates: {err}") from None
    finally:
        # A decrypted PKCS#12 holds the keys in clear: never leave it behind.
        fs.remove(scratch, why="remove decrypted certificates scratch file")
    return parse_pem_bundle(pem.encode())
