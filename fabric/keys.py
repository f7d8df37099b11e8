"""Deterministic key material for scenarios.

A scenario file must give the same thumbprints every time it is loaded, in any
process: the media (ovf-env.xml with certificate fingerprints) is often built by
one command and the fabric served by another. So keys are derived from a seed
(scenario seed + a label) instead of the OS random source. These keys are
publicly derivable: they are test material, never use them for anything real.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import random

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % d for d in range(2, int(p**0.5) + 1))]
_PUBLIC_EXPONENT = 65537
# Fixed validity window: certificates must be byte-identical across loads.
_NOT_BEFORE = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(2049, 12, 31, tzinfo=datetime.UTC)


def _rng(seed: str, label: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{label}".encode()).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _is_probable_prime(n: int, rng: random.Random, rounds: int = 8) -> bool:
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(rounds):
        a = rng.randrange(2, n - 2)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int, rng: random.Random) -> int:
    while True:
        # Top two bits set so that p*q has exactly 2*bits bits.
        candidate = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if (candidate - 1) % _PUBLIC_EXPONENT == 0:
            continue
        if _is_probable_prime(candidate, rng):
            return candidate


@functools.lru_cache(maxsize=64)
def rsa_key(seed: str, label: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """An RSA private key derived from (seed, label): same inputs, same key."""
    rng = _rng(seed, label)
    while True:
        p = _prime(bits // 2, rng)
        q = _prime(bits // 2, rng)
        if p != q:
            break
    if p < q:
        p, q = q, p
    phi = (p - 1) * (q - 1)
    d = pow(_PUBLIC_EXPONENT, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p=p, q=q, d=d,
        dmp1=d % (p - 1), dmq1=d % (q - 1), iqmp=pow(q, -1, p),
        public_numbers=rsa.RSAPublicNumbers(_PUBLIC_EXPONENT, p * q),
    )
    return numbers.private_key()


@functools.lru_cache(maxsize=64)
def ed25519_key(seed: str, label: str) -> ed25519.Ed25519PrivateKey:
    """An Ed25519 private key derived from (seed, label)."""
    raw = hashlib.sha256(f"{seed}\0{label}\0ed25519".encode()).digest()
    return ed25519.Ed25519PrivateKey.from_private_bytes(raw)


def self_signed_cert(key: rsa.RSAPrivateKey, common_name: str, seed: str) -> x509.Certificate:
    """A self-signed certificate for key, deterministic (fixed dates, serial from seed)."""
    return issue_cert(key.public_key(), common_name, key, common_name, seed)


def issue_cert(
    public_key: rsa.RSAPublicKey,
    common_name: str,
    issuer_key: rsa.RSAPrivateKey,
    issuer_name: str,
    seed: str,
) -> x509.Certificate:
    """A certificate for public_key signed by issuer_key (RSA PKCS#1 v1.5 is deterministic)."""
    serial = int.from_bytes(hashlib.sha256(f"{seed}\0{common_name}".encode()).digest()[:16], "big")
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(public_key)
        .serial_number(serial >> 1 or 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 thumbprint, upper-case hex: how the platform names certificates."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S324 - platform format


def cert_pem(cert: x509.Certificate) -> str:
    """The certificate as PEM text."""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def private_key_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, openssh: bool = False) -> str:
    """The private key as PKCS#8 PEM, or OpenSSH format when openssh is true."""
    fmt = serialization.PrivateFormat.OpenSSH if openssh else serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def openssh_public_key(key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey, comment: str = "") -> str:
    """The public key in OpenSSH one-line format."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip()
