"""wire.der reads the RSA key of certificates and private keys exactly as cryptography does."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from wire import der
from wire.errors import CertificateError


def make_certificate(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def openssh_of(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def test_certificate_and_both_private_key_forms_give_the_same_key(
        rsa_key: rsa.RSAPrivateKey) -> None:
    numbers = rsa_key.public_key().public_numbers()
    expected = der.RsaPublicKey(numbers.n, numbers.e)
    pkcs8 = rsa_key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    pkcs1 = rsa_key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
    assert der.pem_public_key(make_certificate(rsa_key)) == expected
    assert der.pem_public_key(pkcs8) == expected
    assert der.pem_public_key(pkcs1) == expected


def test_openssh_line_matches_cryptography(rsa_key: rsa.RSAPrivateKey) -> None:
    assert der.pem_public_key(make_certificate(rsa_key)).openssh == openssh_of(rsa_key)


@pytest.mark.parametrize("exponent", [3, 65537])
def test_openssh_line_for_other_sizes_and_exponents(exponent: int) -> None:
    # A 1032-bit modulus has its top bit in a byte of its own: the mpint padding differs.
    key = rsa.generate_private_key(public_exponent=exponent, key_size=1032)
    assert der.pem_public_key(make_certificate(key)).openssh == openssh_of(key)


def test_a_non_rsa_key_is_named_as_such() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with pytest.raises(der.NotRsa):
        der.pem_public_key(make_certificate(key))
    with pytest.raises(der.NotRsa):
        der.pem_public_key(pem)


def test_truncated_and_garbled_input_is_a_certificate_error(
        rsa_key: rsa.RSAPrivateKey) -> None:
    cert_der = x509.load_pem_x509_certificate(make_certificate(rsa_key)).public_bytes(
        serialization.Encoding.DER)
    for broken in (cert_der[:40], cert_der[:-1], cert_der + b"\x00", b"\x30\x84\xff\xff\xff\xff",
                   b"", b"\x02\x01\x01"):
        with pytest.raises(CertificateError):
            der.certificate_public_key(broken)
    with pytest.raises(CertificateError, match="base64"):
        der.pem_blocks(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match="no PEM"):
        der.pem_public_key(b"nothing here")
