"""Transport pair, certificate decryption and storage, certificate -> SSH key."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from system.fs import FileSystem
from system.root import Root
from system.runner import Result, Runner
from tests.support.fixtures import FIXTURES
from wire.certs import decrypt_certificate_file, install_certificates
from wire.cms import decrypt_cms
from wire.errors import CertificateError
from wire.subdocuments import CertificateFile, parse_certificate_file
from wire.transport import (
    TransportPair,
    ensure_transport_pair,
    generate_transport_pair,
    load_transport_pair,
    start_transport_keygen,
    transport_header_value,
)
from wire.x509 import (
    certificate_thumbprint,
    parse_pem_bundle,
    private_key_openssh,
    ssh_public_key,
)

WIRE = FIXTURES / "walinuxagent" / "wire"
AZURE = FIXTURES / "cloudinit" / "azure"
EXPECTED = {"F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9", "8979F1AC8C4215827BF3B5A403E6137B504D02A4"}
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def fixture_pair(directory: Path = WIRE, cert: str = "trans_cert",
                 key: str = "trans_prv") -> TransportPair:
    return TransportPair(directory / cert, directory / key, (directory / cert).read_bytes(),
                         (directory / key).read_bytes())


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[FileSystem, Path]:
    root = Root(tmp_path)
    return FileSystem(Runner(root=root)), root / "var/lib/waagent"


def key_files(lib_dir: Path) -> list[str]:
    return sorted(p.name for p in lib_dir.glob("*.prv")) if lib_dir.exists() else []


# -- the fixture check ----------------------------------------------------------------------

def test_fixture_certificates_decrypt_to_the_expected_thumbprints() -> None:
    document = parse_certificate_file((WIRE / "certs.xml").read_bytes())
    bundle = decrypt_certificate_file(document, fixture_pair())
    assert set(bundle.thumbprints) == EXPECTED and len(bundle.thumbprints) == 2
    assert [k.thumbprint for k in bundle.keys] == ["F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9"]


def test_fixture_certificates_installed_as_crt_and_prv(sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    document = parse_certificate_file((WIRE / "certs.xml").read_bytes())
    bundle = install_certificates(fs, lib_dir, document, fixture_pair())
    assert set(bundle.thumbprints) == EXPECTED
    assert sorted(p.name for p in lib_dir.glob("*.crt")) == sorted(f"{t}.crt" for t in EXPECTED)
    assert key_files(lib_dir) == ["F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9.prv"]
    assert stat.S_IMODE(lib_dir.stat().st_mode) == 0o700
    for path in [*lib_dir.glob("*.crt"), *lib_dir.glob("*.prv")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in lib_dir.glob("*.crt"):
        assert certificate_thumbprint(path.read_bytes()) == path.stem
    # the key is the certificate's own
    cert = x509.load_pem_x509_certificate(
        (lib_dir / "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9.crt").read_bytes())
    key = serialization.load_pem_private_key(
        (lib_dir / "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9.prv").read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        cert.public_key().public_bytes(serialization.Encoding.DER, spki)
    # a second install changes nothing
    fs.runner.planned.clear()
    install_certificates(fs, lib_dir, document, fixture_pair())
    assert [c for c in fs.runner.planned if c.kind == "write"] == []


def test_plan_mode_records_and_writes_nothing(tmp_path: Path) -> None:
    fs = FileSystem(Runner(root=Root(tmp_path), plan=True))
    lib_dir = tmp_path / "var/lib/waagent"
    document = parse_certificate_file((WIRE / "certs.xml").read_bytes())
    install_certificates(fs, lib_dir, document, fixture_pair())
    assert not lib_dir.exists()
    written = [c.target for c in fs.runner.planned if c.kind == "write"]
    assert "/var/lib/waagent/F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9.prv" in written


@pytest.mark.parametrize("sequence", ["hibernate/goal_state_1", "hibernate/goal_state_2"])
def test_sequence_certificates_match_their_manifest(sequence: str) -> None:
    base = FIXTURES / "walinuxagent" / sequence
    pair = fixture_pair(base.parent, "TransportCert.pem", "TransportPrivate.pem")
    bundle = decrypt_certificate_file(
        parse_certificate_file((base / "Certificates.xml").read_bytes()), pair)
    manifest = json.loads((base / "Certificates.json").read_text())
    assert set(bundle.thumbprints) == {c["thumbprint"] for c in manifest}
    assert {k.thumbprint for k in bundle.keys} == {
        c["thumbprint"] for c in manifest if c["hasPrivateKey"]}


@pytest.mark.parametrize("incarnation", [3, 4])
def test_tenant_certificate_rotation_decrypts(incarnation: int) -> None:
    base = FIXTURES / "walinuxagent" / "tenant_certificate_rotation"
    pair = fixture_pair(base, "TransportCert.pem", "TransportPrivate.pem")
    document = parse_certificate_file(
        (base / f"Certificates-incarnation-{incarnation}.xml").read_bytes())
    bundle = decrypt_certificate_file(document, pair)
    assert bundle.thumbprints and all(len(t) == 40 for t in bundle.thumbprints)


# -- documents without certificates ---------------------------------------------------------

def test_no_data_means_no_certificates(sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    bundle = install_certificates(fs, lib_dir, CertificateFile("Pkcs7BlobWithPfxContents", None,
                                                               "1"), fixture_pair())
    assert bundle.thumbprints == () and not lib_dir.exists()


def test_non_pfx_format_is_skipped(sandbox: tuple[FileSystem, Path],
                                   caplog: pytest.LogCaptureFixture) -> None:
    fs, lib_dir = sandbox
    document = parse_certificate_file((WIRE / "certs_format_not_pfx.xml").read_bytes())
    assert install_certificates(fs, lib_dir, document, fixture_pair()).thumbprints == ()
    assert "CertificatesNonPfxPackage" in caplog.text
    assert not lib_dir.exists()


def test_empty_format_is_decrypted(sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    document = parse_certificate_file((WIRE / "certs_no_format_specified.xml").read_bytes())
    assert set(install_certificates(fs, lib_dir, document, fixture_pair()).thumbprints) == EXPECTED


# -- hostile input: clean, named errors, no partial key files -------------------------------

def _certs_data() -> str:
    document = parse_certificate_file((WIRE / "certs.xml").read_bytes())
    assert document.data is not None
    return document.data


@pytest.mark.parametrize(("data", "message"), [
    ("".join(_certs_data().split())[:2000], "truncated or corrupt"),
    ("".join(_certs_data().split())[:96], "truncated or corrupt"),
    ("!!!not base64!!!", "not valid base64"),
    (base64.b64encode(b"\x30\x03\x02\x01\x01").decode(), "not a readable CMS"),
    (base64.b64encode(b"garbage that is not DER at all").decode(), "not a readable CMS"),
])
def test_hostile_data_fails_cleanly(sandbox: tuple[FileSystem, Path], data: str,
                                    message: str) -> None:
    fs, lib_dir = sandbox
    with pytest.raises(CertificateError, match=message):
        install_certificates(fs, lib_dir, CertificateFile("Pkcs7BlobWithPfxContents", data, "1"),
                             fixture_pair())
    assert key_files(lib_dir) == []


def test_truncated_ciphertext_is_named() -> None:
    from asn1crypto import cms

    der = base64.b64decode("".join(_certs_data().split()))
    info = cms.ContentInfo.load(der)
    content = info["content"]["encrypted_content_info"]
    content["encrypted_content"] = content["encrypted_content"].native[:-5]
    with pytest.raises(CertificateError, match="truncated"):
        decrypt_cms(info.dump(force=True), fixture_pair().key_pem, fixture_pair().cert_pem)


def test_wrong_transport_pair_is_named(sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    cert_pem, key_pem = generate_transport_pair()
    other = TransportPair(lib_dir / "c", lib_dir / "k", cert_pem, key_pem)
    document = parse_certificate_file((WIRE / "certs.xml").read_bytes())
    with pytest.raises(CertificateError, match="not encrypted to this VM's transport"):
        install_certificates(fs, lib_dir, document, other)
    assert key_files(lib_dir) == []


def test_wrong_transport_key_with_right_certificate_is_named(
        sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    _cert, key_pem = generate_transport_pair()
    wrong = TransportPair(WIRE / "trans_cert", lib_dir / "k", fixture_pair().cert_pem, key_pem)
    document = parse_certificate_file((WIRE / "certs.xml").read_bytes())
    with pytest.raises(CertificateError, match="cannot decrypt the certificates"):
        install_certificates(fs, lib_dir, document, wrong)
    assert key_files(lib_dir) == []


def test_incorrect_certs_fixture_is_not_for_this_transport_pair() -> None:
    document = parse_certificate_file((WIRE / "incorrect-certs.xml").read_bytes())
    with pytest.raises(CertificateError, match="not encrypted to this VM's transport"):
        decrypt_certificate_file(document, fixture_pair())


def test_a_failed_store_leaves_no_partial_files(sandbox: tuple[FileSystem, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fs, lib_dir = sandbox
    original = FileSystem.write

    def failing_write(self: FileSystem, path: Path, data: str | bytes, **kwargs: object) -> bool:
        if path.suffix == ".prv":
            raise OSError(28, "No space left on device")
        return original(self, path, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FileSystem, "write", failing_write)
    document = parse_certificate_file((WIRE / "certs.xml").read_bytes())
    with pytest.raises(OSError, match="No space"):
        install_certificates(fs, lib_dir, document, fixture_pair())
    assert sorted(p.name for p in lib_dir.iterdir()) == []


# -- the transport pair ---------------------------------------------------------------------

def test_transport_pair_generated_once_and_kept_private(sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    pair = ensure_transport_pair(fs, lib_dir)
    assert pair.cert_path == lib_dir / "TransportCert.pem"
    assert pair.key_path == lib_dir / "TransportPrivate.pem"
    for path in (pair.cert_path, pair.key_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(lib_dir.stat().st_mode) == 0o700
    cert = x509.load_pem_x509_certificate(pair.cert_path.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=LinuxTransport"
    assert cert.issuer == cert.subject
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    again = ensure_transport_pair(fs, lib_dir)
    assert again.cert_pem == pair.cert_pem and again.key_pem == pair.key_pem


def test_transport_header_is_base64_der_without_pem_lines(
        sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    pair = ensure_transport_pair(fs, lib_dir)
    header = pair.header_value
    assert "-----" not in header and "\n" not in header
    der = x509.load_pem_x509_certificate(pair.cert_pem).public_bytes(serialization.Encoding.DER)
    assert base64.b64decode(header) == der
    assert transport_header_value((WIRE / "trans_cert").read_bytes()).startswith("MIIDEzCCAfug")


def test_mismatched_transport_pair_is_replaced(sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    first = ensure_transport_pair(fs, lib_dir)
    other_cert, _ = generate_transport_pair()
    (lib_dir / "TransportCert.pem").write_bytes(other_cert)
    assert load_transport_pair(lib_dir) is None
    replaced = ensure_transport_pair(fs, lib_dir)
    assert replaced.key_pem != first.key_pem
    assert load_transport_pair(lib_dir) == replaced


def test_generated_pair_decrypts_what_is_encrypted_to_it(sandbox: tuple[FileSystem, Path]) -> None:
    """Round trip in the platform's format: subjectKeyIdentifier recipient, 3DES."""
    fs, lib_dir = sandbox
    pair = ensure_transport_pair(fs, lib_dir)
    inner = decrypt_cms(base64.b64decode("".join(_certs_data().split())),
                        fixture_pair().key_pem, fixture_pair().cert_pem)
    der = _envelope(inner, pair.cert_pem, "tripledes_3key", key_id=True)
    bundle = install_certificates(
        fs, lib_dir, CertificateFile(None, base64.b64encode(der).decode(), "1"), pair)
    assert set(bundle.thumbprints) == EXPECTED


@pytest.mark.parametrize("cipher", ["aes128_cbc", "aes256_cbc", "tripledes_3key"])
@pytest.mark.parametrize("key_id", [True, False])
def test_aes_and_issuer_serial_recipients(cipher: str, key_id: bool) -> None:
    inner = decrypt_cms(base64.b64decode("".join(_certs_data().split())),
                        fixture_pair().key_pem, fixture_pair().cert_pem)
    der = _envelope(inner, fixture_pair().cert_pem, cipher, key_id=key_id)
    assert decrypt_cms(der, fixture_pair().key_pem, fixture_pair().cert_pem) == inner
    # without the certificate every recipient is tried
    assert decrypt_cms(der, fixture_pair().key_pem) == inner


def _envelope(content: bytes, cert_pem: bytes, cipher: str, *, key_id: bool) -> bytes:
    """A CMS EnvelopedData (test-side encoder, independent of the code under test)."""
    import os

    from asn1crypto import algos, cms
    from asn1crypto import x509 as asn1_x509
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives import padding as sym_padding
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    cert = x509.load_pem_x509_certificate(cert_pem)
    parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    sizes = {"aes128_cbc": 16, "aes256_cbc": 32, "tripledes_3key": 24}
    key = os.urandom(sizes[cipher])
    iv = os.urandom(8 if cipher == "tripledes_3key" else 16)
    engine = TripleDES(key) if cipher == "tripledes_3key" else algorithms.AES(key)
    padder = sym_padding.PKCS7(len(iv) * 8).padder()
    encryptor = Cipher(engine, modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    if key_id:
        rid = cms.RecipientIdentifier(name="subject_key_identifier", value=parsed.key_identifier)
    else:
        rid = cms.RecipientIdentifier(name="issuer_and_serial_number", value=cms.IssuerAndSerialNumber(
            {"issuer": parsed.issuer, "serial_number": parsed.serial_number}))
    recipient = cms.KeyTransRecipientInfo({
        "version": "v2" if key_id else "v0",
        "rid": rid,
        "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
        "encrypted_key": public.encrypt(key, padding.PKCS1v15()),
    })
    envelope = cms.EnvelopedData({
        "version": "v2" if key_id else "v0",
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=recipient)],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": algos.EncryptionAlgorithm(
                {"algorithm": cipher, "parameters": iv}),
            "encrypted_content": encrypted,
        },
    })
    return cms.ContentInfo({"content_type": "enveloped_data", "content": envelope}).dump()


@needs_openssl
def test_openssl_decrypts_a_cipher_the_in_process_path_does_not_know(tmp_path: Path) -> None:
    """Camellia is not decrypted in-process; the openssl binary, run through the Runner,
    reads it."""
    root = Root(tmp_path)
    fs = FileSystem(Runner(root=root))
    lib_dir = root / "var/lib/waagent"
    pair = ensure_transport_pair(fs, lib_dir)
    inner = decrypt_cms(base64.b64decode("".join(_certs_data().split())),
                        fixture_pair().key_pem, fixture_pair().cert_pem)
    pfx_file = tmp_path / "inner.p12"
    pfx_file.write_bytes(inner)
    der = subprocess.run(
        ["openssl", "cms", "-encrypt", "-binary", "-camellia128", "-keyid", "-outform", "DER",
         "-in", str(pfx_file), str(pair.cert_path)],
        check=True, capture_output=True).stdout
    pfx_file.unlink()
    document = CertificateFile("Pkcs7BlobWithPfxContents", base64.b64encode(der).decode(), "1")
    bundle = install_certificates(fs, lib_dir, document, pair)
    assert set(bundle.thumbprints) == EXPECTED
    assert key_files(lib_dir) == ["F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9.prv"]
    # Decrypted through a pipe: nothing but the transport pair and the results is written.
    assert sorted(path.suffix for path in lib_dir.iterdir()) == [".crt", ".crt", ".pem", ".pem",
                                                                 ".prv"]


@needs_openssl
def test_a_failure_both_ways_leaves_nothing(tmp_path: Path) -> None:
    root = Root(tmp_path)
    fs = FileSystem(Runner(root=root))
    lib_dir = root / "var/lib/waagent"
    pair = ensure_transport_pair(fs, lib_dir)
    other_cert, _ = generate_transport_pair()
    (tmp_path / "other.pem").write_bytes(other_cert)
    (tmp_path / "data").write_bytes(b"x" * 100)
    der = subprocess.run(
        ["openssl", "cms", "-encrypt", "-binary", "-camellia128", "-keyid", "-outform", "DER",
         "-in", str(tmp_path / "data"), str(tmp_path / "other.pem")],
        check=True, capture_output=True).stdout
    document = CertificateFile("Pkcs7BlobWithPfxContents", base64.b64encode(der).decode(), "1")
    with pytest.raises(CertificateError):
        install_certificates(fs, lib_dir, document, pair)
    assert key_files(lib_dir) == [] and not list(lib_dir.glob(".Certificates*"))


@needs_openssl
def test_content_that_is_not_pkcs12_fails_both_ways_cleanly(sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    der = _envelope(b"this is not a PKCS#12" * 10, fixture_pair().cert_pem, "aes128_cbc",
                    key_id=True)
    document = CertificateFile("Pkcs7BlobWithPfxContents", base64.b64encode(der).decode(), "1")
    with pytest.raises(CertificateError, match="not a PKCS#12.*openssl"):
        install_certificates(fs, lib_dir, document, fixture_pair())
    assert key_files(lib_dir) == [] and not list(lib_dir.glob(".Certificates*"))


# -- cloud-init's certificate fixtures ------------------------------------------------------

def test_pem_bundle_thumbprints_match_cloud_init() -> None:
    bundle = parse_pem_bundle((AZURE / "parse_certificates_pem").read_bytes())
    expected = (AZURE / "parse_certificates_fingerprints").read_text().split()
    assert sorted(bundle.thumbprints) == sorted(expected)
    assert len(bundle.keys) == 2 and {k.thumbprint for k in bundle.keys} <= set(expected)


def test_certificate_to_ssh_public_key_matches_cloud_init() -> None:
    line = ssh_public_key((AZURE / "pubkey_extract_cert").read_bytes())
    assert line == (AZURE / "pubkey_extract_ssh_key").read_text().strip()


def test_ssh_public_key_of_a_non_certificate_is_named() -> None:
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        ssh_public_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_every_private_key_of_a_pkcs12_is_read() -> None:
    """The platform packs one key per key pair and per extension certificate;
    cryptography alone returns only the first."""
    from cryptography.hazmat.primitives import hashes

    from fabric import default_scenario
    from fabric.certs import build_pkcs12
    from wire.cms import read_pkcs12

    delivered = default_scenario().delivered()
    with_keys = sorted(d.cert.fingerprint(hashes.SHA1()).hex().upper()
                       for d in delivered if d.key is not None)
    bundle = read_pkcs12(build_pkcs12(delivered))
    assert len(with_keys) >= 2
    assert sorted(k.thumbprint for k in bundle.keys) == with_keys


# -- the openssl path and the in-process fallback ---------------------------------------------

@needs_openssl
def test_certificates_are_decrypted_by_openssl_outside_the_process(
        sandbox: tuple[FileSystem, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    fs, lib_dir = sandbox
    piped: list[tuple[str, str]] = []
    run_pipe = fs.runner.probe_pipe

    def spy(first: list[str], second: list[str], **options: Any) -> Result:
        piped.append((" ".join(first[:3]), " ".join(second[:3])))
        return run_pipe(first, second, **options)

    monkeypatch.setattr(fs.runner, "probe_pipe", spy)
    document = parse_certificate_file((WIRE / "certs.xml").read_bytes())
    bundle = install_certificates(fs, lib_dir, document, fixture_pair())
    assert set(bundle.thumbprints) == EXPECTED
    assert piped == [("openssl cms -decrypt", "openssl pkcs12 -nodes")]


def test_without_openssl_the_certificates_are_decrypted_in_process(
        sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    document = parse_certificate_file((WIRE / "certs.xml").read_bytes())
    bundle = install_certificates(fs, lib_dir, document, fixture_pair(),
                                  openssl="/nonexistent/openssl")
    assert set(bundle.thumbprints) == EXPECTED
    assert key_files(lib_dir) == ["F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9.prv"]
    assert not list(lib_dir.glob(".Certificates*"))


@needs_openssl
def test_both_ways_store_the_same_files(tmp_path: Path) -> None:
    document = parse_certificate_file((WIRE / "certs.xml").read_bytes())
    stored = []
    for name, openssl in (("binary", "openssl"), ("in-process", "/nonexistent/openssl")):
        fs = FileSystem(Runner(root=Root(tmp_path / name)))
        lib_dir = tmp_path / name / "var/lib/waagent"
        install_certificates(fs, lib_dir, document, fixture_pair(), openssl=openssl)
        stored.append({p.name: p.read_bytes() for p in lib_dir.iterdir()})
    assert stored[0] == stored[1]


@needs_openssl
def test_transport_pair_made_by_openssl_in_the_background(
        sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    collect = start_transport_keygen(fs, lib_dir, "openssl")
    assert sum("openssl req -x509" in c.target for c in fs.runner.planned) == 1
    # Waiting at once: a second openssl races the first (the agent is idle meanwhile).
    pair = ensure_transport_pair(fs, lib_dir, generated=collect)
    assert sum("openssl req -x509" in c.target for c in fs.runner.planned) == 2
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    assert cert.subject.rfc4514_string() == "CN=LinuxTransport"
    key = serialization.load_pem_private_key(pair.key_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert load_transport_pair(lib_dir) == pair
    assert sorted(p.name for p in lib_dir.iterdir()) == ["TransportCert.pem",
                                                         "TransportPrivate.pem"]
    assert stat.S_IMODE(pair.key_path.stat().st_mode) == 0o600


def test_transport_pair_made_in_process_without_openssl(
        sandbox: tuple[FileSystem, Path]) -> None:
    fs, lib_dir = sandbox
    collect = start_transport_keygen(fs, lib_dir, "/nonexistent/openssl")
    pair = ensure_transport_pair(fs, lib_dir, generated=collect)
    assert load_transport_pair(lib_dir) == pair
    assert not list(lib_dir.glob(".transport-pair-*"))


def test_key_pair_public_line() -> None:
    line = private_key_openssh((WIRE / "trans_prv").read_bytes())
    cert_line = ssh_public_key((WIRE / "trans_cert").read_bytes())
    assert line == cert_line and line.startswith("ssh-rsa AAAA")
    with pytest.raises(CertificateError):
        private_key_openssh(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
