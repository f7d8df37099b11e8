"""The openssl binary (`OS.OpensslPath`), as the platform's agent runs it: paths as its
commands see them, and `cms -decrypt` / `pkcs12 -nodes` for the goal state's certificates.

The transport pair's `openssl req` is in wire/transport.py (its keygen race).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from system.errors import CommandFailed
from system.fs import FileSystem
from wire.errors import CertificateError
from wire.x509 import CertificateBundle, parse_pem_bundle, to_pem

if TYPE_CHECKING:
    from wire.transport import TransportPair


def command_path(fs: FileSystem, path: Path) -> str:
    """A path as a command sees it: inside the root when commands run chrooted."""
    runner = fs.runner
    if runner.chroot and not runner.root.is_host:
        return runner.root.system_path(path)
    return str(path)


def decrypt_with_openssl(fs: FileSystem, envelope: bytes, pair: TransportPair,
                         openssl: str) -> CertificateBundle:
    """The openssl binary's way: `cms -decrypt | pkcs12 -nodes` to PEM, as waagent pipes
    them. The decrypted PKCS#12 (the keys in clear) goes from one to the other through the
    pipe and is never written; both start at once."""
    runner = fs.runner
    if runner.plan:
        raise CertificateError("certificates need the openssl binary to decrypt; not run in "
                               "plan mode")
    decrypt = [openssl, "cms", "-decrypt", "-inform", "PEM",
               "-inkey", command_path(fs, pair.key_path),
               "-recip", command_path(fs, pair.cert_path)]
    to_pem12 = [openssl, "pkcs12", "-nodes", "-password", "pass:"]
    armoured = to_pem("CMS", envelope).decode()
    try:
        result = runner.probe_pipe(decrypt, to_pem12, input=armoured)
        if not result.ok:  # OpenSSL 3 reads old PKCS#12 ciphers only with -legacy
            result = runner.probe_pipe(decrypt, [*to_pem12, "-legacy"], input=armoured)
    except CommandFailed as err:
        raise CertificateError(f"{openssl} could not decrypt the certificates: {err}") from None
    if not result.ok:
        raise CertificateError(f"{openssl} could not decrypt the certificates: "
                               f"{result.stderr.strip()[-2000:]}")
    return parse_pem_bundle(result.stdout.encode())
