"""Pure parts of provisioning: password hashes, sshd_config edits, /etc/hosts, key lines."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from passlib.hash import bcrypt, md5_crypt, sha256_crypt, sha512_crypt

from system.root import Root
from system.runner import Result, Runner
from tasks.hostname import _LABEL, hosts_text
from tasks.ssh import _key_body, edit_sshd_config, key_fields
from tasks.user import _USER_NAME, password_hash, sudoers_text


@pytest.mark.parametrize(("crypt_id", "scheme", "prefix"), [
    ("1", md5_crypt, "$1$"), ("5", sha256_crypt, "$5$"), ("6", sha512_crypt, "$6$"),
    ("2a", bcrypt, "$2a$")])
def test_password_hash_schemes_verify(crypt_id: str, scheme: object, prefix: str) -> None:
    hashed = password_hash("S3cret pw", crypt_id, 10)
    assert hashed.startswith(prefix)
    assert scheme.verify("S3cret pw", hashed)  # type: ignore[attr-defined]
    assert not scheme.verify("other", hashed)  # type: ignore[attr-defined]


def test_salt_length_and_randomness() -> None:
    first, second = password_hash("pw", "6", 12), password_hash("pw", "6", 12)
    assert len(first.split("$")[2]) == 12
    assert first != second, "a fresh salt each time"
    assert len(password_hash("pw", "1", 30).split("$")[2]) == 8, "MD5 salts stop at 8"


def test_sudoers_nopasswd_without_password() -> None:
    assert sudoers_text("bob", False).endswith("bob ALL=(ALL) NOPASSWD: ALL\n")
    assert sudoers_text("bob", True).endswith("bob ALL=(ALL) ALL\n")


def test_sshd_edit_places_settings_before_match_once() -> None:
    text = ("#PasswordAuthentication yes\nPasswordAuthentication yes\nUsePAM yes\n"
            "passwordauthentication yes\nMatch Group sftp\n  PasswordAuthentication yes\n")
    out = edit_sshd_config(text, {"PasswordAuthentication": "no", "ClientAliveInterval": "180"})
    head, tail = out.split("Match Group sftp")
    assert head.count("PasswordAuthentication no") == 1
    assert "\nPasswordAuthentication yes" not in head and "passwordauthentication" not in head
    assert "#PasswordAuthentication yes" in head, "comments stay"
    assert "PasswordAuthentication yes" in tail, "Match blocks are not ours"
    assert edit_sshd_config(out, {"PasswordAuthentication": "no",
                                  "ClientAliveInterval": "180"}) == out, "idempotent"


def test_sshd_edit_without_match_appends() -> None:
    out = edit_sshd_config("UsePAM yes\n", {"ClientAliveInterval": "180"})
    assert out.endswith("ClientAliveInterval 180\n")


def test_hosts_entry() -> None:
    assert hosts_text("127.0.0.1\tlocalhost\n", "vm-1") == \
        "127.0.0.1\tlocalhost\n127.0.1.1\tvm-1\n"
    assert hosts_text("127.0.0.1 localhost\n127.0.1.1 old\n", "vm.example.com") == \
        "127.0.0.1 localhost\n127.0.1.1\tvm.example.com vm\n"
    already = "10.0.0.4 vm-1\n"
    assert hosts_text(already, "vm-1") == already


def test_key_body_ignores_options_and_comments() -> None:
    assert _key_body('from="10.0.0.1" ssh-ed25519 AAAAC3Nz bob@x') == "ssh-ed25519 AAAAC3Nz"
    assert _key_body("not a key") is None


@pytest.mark.parametrize(("line", "fields"), [
    ("ssh-rsa AAAAB3NzaC1yc2E=", ("ssh-rsa", "AAAAB3NzaC1yc2E=")),
    (" ssh-rsa\tAAAA  bob ", ("ssh-rsa", "AAAA")),
    ("opts ssh-ed25519 AAAA c d e", ("ssh-ed25519", "AAAA")),
    ("ssh-rsa ssh-rsa AAAA", ("ssh-rsa", "AAAA")),
    ("ecdsa-sha2-nistp384 AAAA+/==", ("ecdsa-sha2-nistp384", "AAAA+/==")),
    ("sk-ssh-ed25519@openssh.com AAAA bob@host", ("sk-ssh-ed25519@openssh.com", "AAAA")),
    ("ssh-ecdsa AAAA", None), ("ecdsa-sha2-nistp AAAA", None), ("sk- AAAA", None),
    ("sk-UPPER AAAA", None), ("ssh-rsa AA-AA", None), ("ssh-rsa", None),
    ("a b ssh-rsa AAAA", None), ("ssh-rsa AAAA\u0661", None), ("", None)])
def test_key_fields_reads_type_and_body(line: str, fields: tuple[str, str] | None) -> None:
    assert key_fields(line) == fields


@pytest.mark.parametrize(("name", "valid"), [
    ("root", True), ("_svc", True), ("a.b-c_d", True), ("a" * 32, True), ("a" * 31 + "$", True),
    ("_$", True), ("a" * 33, False), ("a" * 32 + "$", False), ("$", False), ("a$$", False),
    ("a$b", False), ("0user", False), ("-user", False), (".user", False), ("User", False),
    ("user\n", False), ("\u00e9t\u00e9", False), ("", False)])
def test_user_names_are_the_portable_ones(name: str, valid: bool) -> None:
    assert bool(re.fullmatch(_USER_NAME, name)) is valid


@pytest.mark.parametrize(("crypt_id", "scheme"), [
    ("1", md5_crypt), ("5", sha256_crypt), ("6", sha512_crypt)])
def test_openssl_computes_the_hash_and_passlib_verifies_it(tmp_path: Path, crypt_id: str,
                                                           scheme: object) -> None:
    runner = RecordingRunner(Root(tmp_path))
    hashed = password_hash("S3cret pw ü", crypt_id, 16, run=runner)
    assert scheme.verify("S3cret pw ü", hashed)  # type: ignore[attr-defined]
    assert any(c.endswith(f"passwd -{crypt_id} -salt {hashed.split('$')[2]} -stdin")
               for c in _commands_run(runner)), "openssl made it"


def test_without_openssl_or_beyond_it_passlib_hashes(tmp_path: Path) -> None:
    missing = Runner(Root(tmp_path))
    assert sha512_crypt.verify("pw", password_hash("pw", "6", 10, run=missing,
                                                   openssl="/nonexistent/openssl"))
    runner = RecordingRunner(Root(tmp_path))
    for password in ("x" * 300, "two\nlines"):
        hashed = password_hash(password, "6", 10, run=runner)
        assert sha512_crypt.verify(password, hashed)
    assert _commands_run(runner) == [], "openssl would cut or split these passwords"


class RecordingRunner(Runner):
    """A Runner that remembers the read-only commands it ran."""

    def __init__(self, root: Root) -> None:
        super().__init__(root)
        self.probed: list[str] = []

    def probe(self, argv: Sequence[str], **kwargs: Any) -> Result:
        self.probed.append(" ".join(argv))
        return super().probe(argv, **kwargs)


def _commands_run(runner: Runner) -> list[str]:
    assert isinstance(runner, RecordingRunner)
    return runner.probed


@pytest.mark.parametrize(("label", "valid"), [
    ("vm", True), ("VM-01", True), ("a" * 63, True), ("0start", True), ("a-b-c", True),
    ("", False), ("a" * 64, False), ("-lead", False), ("trail-", False), ("-", False),
    ("under_score", False), ("sp ace", False), ("d\u00e9j\u00e0", False), ("vm\n", False)])
def test_host_name_labels_follow_rfc_1123(label: str, valid: bool) -> None:
    assert bool(_LABEL.fullmatch(label)) is valid
