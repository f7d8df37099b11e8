"""The certificates channel in the platform's exact format, checked with openssl and asn1crypto."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from fabric import default_scenario
from fabric.certs import (
    Delivered,
    build_pkcs12,
    encrypt_settings,
    envelope_certificates,
    transport_cert_from_header,
    wrap64,
)
from fabric.keys import rsa_key, self_signed_cert, thumbprint


def need_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("missing tool: openssl")


@pytest.fixture(scope="module")
def transport(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, x509.Certificate]:
    """A transport pair made as the agent makes it (openssl req, CN=LinuxTransport)."""
    need_openssl()
    tmp = tmp_path_factory.mktemp("transport")
    key, crt = tmp / "TransportPrivate.pem", tmp / "TransportCert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-nodes", "-subj", "/CN=LinuxTransport", "-days", "730",
         "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True, timeout=60,
    )
    return key, crt, x509.load_pem_x509_certificate(crt.read_bytes())


def openssl(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=60, check=False)


def test_pkcs12_layout_is_the_platforms(tmp_path: Path) -> None:
    need_openssl()
    s = default_scenario()
    path = tmp_path / "p.pfx"
    path.write_bytes(build_pkcs12(s.delivered()))
    info = openssl("pkcs12", "-info", "-noout", "-passin", "pass:", "-in", str(path))
    assert info.returncode == 0, info.stderr
    text = info.stderr.decode()
    assert "MAC: sha1, Iteration 2000" in text
    assert text.count("Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC") == 2
    assert "PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC" in text
    assert text.count("Certificate bag") == 3
    # -password pass: needs the MAC; a wrong password must fail the MAC check.
    assert openssl("pkcs12", "-nodes", "-password", "pass:", "-in", str(path)).returncode == 0
    assert openssl("pkcs12", "-nodes", "-password", "pass:wrong", "-in", str(path)).returncode != 0


def test_pkcs12_loads_with_cryptography() -> None:
    s = default_scenario()
    loaded = pkcs12.load_pkcs12(build_pkcs12(s.delivered()), b"")
    certs = [loaded.cert.certificate] if loaded.cert else []
    certs += [c.certificate for c in loaded.additional_certs]
    assert sorted(thumbprint(c) for c in certs) == sorted(s.thumbprints())
    assert loaded.key is not None


def test_envelope_decrypts_with_the_transport_key(transport: tuple[Path, Path, x509.Certificate], tmp_path: Path) -> None:
    key, crt, cert = transport
    s = default_scenario()
    envelope = envelope_certificates(s.delivered(), cert, "DES_EDE3_CBC")
    # Recipient by subjectKeyIdentifier, content 3DES, version 2 (PLATFORM.md section 2).
    info = cms.ContentInfo.load(envelope)["content"]
    assert info["version"].native == "v2"
    recipient = info["recipient_infos"][0].chosen
    assert recipient["rid"].name == "subject_key_identifier"
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert recipient["rid"].chosen.native == ski
    assert info["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native == "tripledes_3key"
    # The agent's own route: S/MIME text with 64-column base64, openssl cms -decrypt, pkcs12 -nodes.
    p7m = tmp_path / "Certificates.p7m"
    p7m.write_text("MIME-Version:1.0\nContent-Disposition: attachment; filename=\"x\"\n"
                   "Content-Type: application/x-pkcs7-mime; name=\"x\"\nContent-Transfer-Encoding: base64\n\n"
                   + wrap64(envelope))
    decrypted = openssl("cms", "-decrypt", "-in", str(p7m), "-inkey", str(key), "-recip", str(crt))
    assert decrypted.returncode == 0, decrypted.stderr
    pem = openssl("pkcs12", "-nodes", "-passin", "pass:", data=decrypted.stdout)
    assert pem.returncode == 0, pem.stderr
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem.stdout.decode(), re.S)
    thumbs = sorted(thumbprint(x509.load_pem_x509_certificate(b.encode())) for b in blocks)
    assert thumbs == sorted(s.thumbprints())
    assert pem.stdout.decode().count("BEGIN PRIVATE KEY") == 2


def test_aes128_when_the_agent_asks(transport: tuple[Path, Path, x509.Certificate]) -> None:
    _, _, cert = transport
    envelope = envelope_certificates(default_scenario().delivered()[:1], cert, "AES128_CBC")
    algorithm = cms.ContentInfo.load(envelope)["content"]["encrypted_content_info"]["content_encryption_algorithm"]
    assert algorithm["algorithm"].native == "aes128_cbc"


def test_transport_header_forms(transport: tuple[Path, Path, x509.Certificate]) -> None:
    _, crt, cert = transport
    pem = crt.read_text()
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    assert transport_cert_from_header(body) == cert
    assert transport_cert_from_header(pem) == cert


def test_protected_settings_decrypt_with_the_settings_certificate(tmp_path: Path) -> None:
    need_openssl()
    key = rsa_key("test", "settings")
    cert = self_signed_cert(key, "settings", "test")
    (tmp_path / "c.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "c.prv").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    der = base64.b64decode(encrypt_settings(b'{"secret": 1}', cert))
    out = openssl("smime", "-decrypt", "-inform", "DER", "-recip", str(tmp_path / "c.crt"),
                  "-inkey", str(tmp_path / "c.prv"), data=der)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b'{"secret": 1}'


def test_keys_are_deterministic() -> None:
    assert rsa_key("a", "b").private_numbers() == rsa_key("a", "b").private_numbers()
    cert = self_signed_cert(rsa_key("a", "b"), "x", "a")
    assert cert.fingerprint(hashes.SHA256()) == self_signed_cert(rsa_key("a", "b"), "x", "a").fingerprint(hashes.SHA256())
    assert Delivered(cert).key is None
