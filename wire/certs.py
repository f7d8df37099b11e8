"""The transport certificate, certificate decryption and storage, certificate -> SSH key.

The platform encrypts the VM's certificates (a PKCS#12 with an empty password) in a
CMS EnvelopedData to the agent's transport certificate (PLATFORM.md section 2).

The way to Ready uses the openssl binary (`OS.OpensslPath`) through the Runner, as the
platform's agent does: `req` makes the transport pair in a process of its own while the
DVD is read and the goal state fetched, `cms -decrypt` and `pkcs12 -nodes` turn the
envelope into PEM, and `wire.der` pairs keys with certificates. That keeps cryptography
and asn1crypto (~24 MB resident, ~70 ms to import) out of the agent's process. Where the
openssl binary is missing or fails, the same work is done in-process: the CMS structure
is parsed with asn1crypto (`cryptography` cannot read the platform's
subjectKeyIdentifier recipients) and decrypted with cryptography's primitives.

cryptography and asn1crypto are imported inside the functions that need them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import hashlib
import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from system.errors import CommandFailed
from system.fs import FileSystem
from system.log import get_logger
from system.record import Record
from system.runner import Started
from wire import TRANSPORT_CERT, TRANSPORT_KEY, der
from wire.errors import CertificateError
from wire.subdocuments import CertificateFile

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

log = get_logger("waagent.wire.certs")

TRANSPORT_SUBJECT = "LinuxTransport"
TRANSPORT_VALIDITY_DAYS = 730
_KEYGEN_SCRATCH = ".transport-pair-{pid}.partial"


def to_pem(label: str, body: bytes) -> bytes:
    """A PEM block: base64 in 64-column lines between BEGIN and END."""
    lines = textwrap.wrap(base64.b64encode(body).decode(), 64)
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


# -- thumbprints and SSH keys ---------------------------------------------------------------

def thumbprint(certificate_der: bytes) -> str:
    """The platform's name for a certificate: SHA-1 of its DER, upper-case hex."""
    return hashlib.sha1(certificate_der).hexdigest().upper()  # noqa: S324 - a name, not security


def _certificate_der_of(certificate_pem: bytes) -> bytes:
    for label, body in der.pem_blocks(certificate_pem):
        if label == "CERTIFICATE":
            return body
    raise CertificateError("not a PEM certificate: no CERTIFICATE block")


def certificate_thumbprint(certificate_pem: bytes) -> str:
    """The thumbprint of a PEM certificate."""
    return thumbprint(_certificate_der_of(certificate_pem))


def ssh_public_key(certificate_pem: bytes) -> str:
    """The OpenSSH public key line (`ssh-rsa AAAA...`) of a certificate's key.

    For SSH keys the platform delivers by thumbprint (`<Fingerprint>.crt`).
    """
    certificate_der = _certificate_der_of(certificate_pem)
    try:
        return der.certificate_public_key(certificate_der).openssh
    except der.NotRsa:
        return _openssh_line(_load_certificate(certificate_pem).public_key())
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

class TransportPair(Record):
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
    try:
        return base64.b64encode(_certificate_der_of(cert_pem)).decode()
    except CertificateError:
        raise CertificateError("the transport certificate is not a PEM certificate") from None


def _pair_belongs_together(cert_pem: bytes, key_pem: bytes) -> bool:
    """True when the key is the certificate's (compared by public key)."""
    try:
        return der.pem_public_key(cert_pem) == der.pem_public_key(key_pem)
    except der.NotRsa:
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(key_pem, None,
                                                 unsafe_skip_rsa_key_validation=True)
        cert = _load_certificate(cert_pem)
        return _public_der(cert.public_key()) == _public_der(key.public_key())


def load_transport_pair(lib_dir: Path) -> TransportPair | None:
    """The stored transport pair when both files are there and belong together, else None."""
    cert_path, key_path = lib_dir / TRANSPORT_CERT, lib_dir / TRANSPORT_KEY
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        # Our own key, written by this agent: the pairing check is the one that matters.
        together = _pair_belongs_together(cert_pem, key_pem)
    except (ValueError, TypeError, CertificateError) as err:
        log.warning("transport pair in %s is unreadable (%s): making a new one", lib_dir, err)
        return None
    if not together:
        log.warning("%s does not belong to %s: making a new transport pair", cert_path, key_path)
        return None
    return TransportPair(cert_path, key_path, cert_pem, key_pem)


def ensure_transport_pair(fs: FileSystem, lib_dir: Path,
                          generated: Callable[[], tuple[bytes, bytes]] | None = None,
                          ) -> TransportPair:
    """The transport pair, generated once (RSA-2048, `CN=LinuxTransport`) and kept 0600.

    `generated` gives a pair made ahead of time (`start_transport_keygen`, while the goal
    state is on its way); without it the pair is generated here, in-process. In plan mode
    a new pair is made in memory only and the writes are recorded.
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


# RSA key generation time varies several-fold with the primes openssl happens to try
# (0.1-1 s here). One openssl process starts at once; if the agent then has to wait for
# it, a second one joins (the agent is idle, so a core is free) and the first of the two
# to finish wins: the long tail is cut without slowing the agent's own work before.
_POLL_SECONDS = 0.002


def start_transport_keygen(fs: FileSystem, lib_dir: Path,
                           openssl: str) -> Callable[[], tuple[bytes, bytes]]:
    """Start `openssl req` making a new transport pair, as the platform's agent does; the
    function returned waits for it and gives (cert_pem, key_pem).

    RSA key generation (~0.2 s) then runs in a process of its own beside loading the graph,
    reading the DVD, fetching the goal state and the work that does not need the key
    (see above for the second process). The pair is written in a 0700 scratch directory
    inside Lib.Dir (0700) and read back; where openssl is missing or fails, the pair is
    made in-process instead.
    """
    scratch = lib_dir / _KEYGEN_SCRATCH.format(pid=os.getpid())
    fs.mkdir(lib_dir, mode=0o700, why="agent state directory (holds private keys)")
    for leftover in _abandoned_keygen_scratch(lib_dir):
        fs.remove(leftover, why="transport pair scratch directory of an agent that is gone",
                  quiet=True)
    fs.mkdir(scratch, mode=0o700, why="scratch directory for a new transport pair", quiet=True)
    racers: list[tuple[Started, Path, Path]] = []

    def start() -> None:
        index = len(racers)
        key_path, cert_path = scratch / f"key-{index}.pem", scratch / f"cert-{index}.pem"
        argv = [openssl, "req", "-x509", "-nodes", "-subj", f"/CN={TRANSPORT_SUBJECT}",
                "-days", str(TRANSPORT_VALIDITY_DAYS), "-newkey", "rsa:2048",
                "-keyout", _command_path(fs, key_path), "-out", _command_path(fs, cert_path)]
        racers.append((fs.runner.start(argv, why="generate the transport key pair"),
                       cert_path, key_path))

    failure: Exception | None = None
    try:
        start()
    except CommandFailed as err:
        failure = err

    def first_pair() -> tuple[bytes, bytes]:
        nonlocal failure
        if racers and not racers[0][0].done():
            start()  # the agent waits from here on: a second process races the first
        pending = list(racers)
        while pending:
            finished = [racer for racer in pending if racer[0].done()]
            if not finished:
                time.sleep(_POLL_SECONDS)
                continue
            for racer in finished:
                pending.remove(racer)
                started, cert_path, key_path = racer
                try:
                    started.wait()
                    cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
                    if not _pair_belongs_together(cert_pem, key_pem):
                        raise CertificateError("the certificate is not the key's")
                except (CommandFailed, CertificateError, OSError) as err:
                    failure = err
                    continue
                for loser, *_ in pending:
                    loser.stop()
                return cert_pem, key_pem
        raise failure or CertificateError("no key generation was started")

    def collect() -> tuple[bytes, bytes]:
        try:
            return first_pair()
        except (CommandFailed, CertificateError, OSError) as err:
            log.info("%s could not make the transport pair (%s): making it in-process",
                     openssl, err)
            return generate_transport_pair()
        finally:
            for started, *_ in racers:
                started.stop()
            fs.remove(scratch, why="remove transport pair scratch directory", quiet=True)

    return collect


def _abandoned_keygen_scratch(lib_dir: Path) -> list[Path]:
    """Scratch directories of `start_transport_keygen` whose agent process has ended."""
    found = []
    for path in lib_dir.glob(_KEYGEN_SCRATCH.format(pid="*")):
        pid = path.name.split("-")[-1].split(".")[0]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            found.append(path)
        except PermissionError:
            pass  # alive, someone else's
    return found


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

class BundleCertificate(Record):
    """A certificate from the platform, named by thumbprint."""

    thumbprint: str
    pem: bytes


class BundleKey(Record):
    """A private key, named by the thumbprint of the certificate it belongs to."""

    thumbprint: str
    pem: bytes


class CertificateBundle(Record):
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
        bundle = _decrypt_with_openssl(fs, lib_dir, envelope, pair, openssl)
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


def _command_path(fs: FileSystem, path: Path) -> str:
    """A path as a command sees it: inside the root when commands run chrooted."""
    runner = fs.runner
    if runner.chroot and not runner.root.is_host:
        return runner.root.system_path(path)
    return str(path)


def _decrypt_with_openssl(fs: FileSystem, lib_dir: Path, envelope: bytes, pair: TransportPair,
                          openssl: str) -> CertificateBundle:
    """The openssl binary's way: `cms -decrypt`, then `pkcs12 -nodes` to PEM."""
    runner = fs.runner
    if runner.plan:
        raise CertificateError("certificates need the openssl binary to decrypt; not run in "
                               "plan mode")
    armoured = to_pem("CMS", envelope).decode()
    fs.mkdir(lib_dir, mode=0o700, why="agent state directory (holds private keys)")
    scratch = lib_dir / ".Certificates.p12.partial"
    try:
        runner.change([openssl, "cms", "-decrypt", "-inform", "PEM",
                       "-inkey", _command_path(fs, pair.key_path),
                       "-recip", _command_path(fs, pair.cert_path),
                       "-out", _command_path(fs, scratch)],
                      input=armoured, why="decrypt platform certificates")
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
        fs.remove(scratch, why="remove decrypted certificates scratch file", quiet=True)
    return parse_pem_bundle(pem.encode())
