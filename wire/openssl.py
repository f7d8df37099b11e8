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


def decrypt_with_openssl(fs: FileSystem, lib_dir: Path, envelope: bytes, pair: TransportPair,
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
                       "-inkey", command_path(fs, pair.key_path),
                       "-recip", command_path(fs, pair.cert_path),
                       "-out", command_path(fs, scratch)],
                      input=armoured, why="decrypt platform certificates")
        pem = ""
        for extra in ([], ["-legacy"]):  # OpenSSL 3 reads old PKCS#12 ciphers only with -legacy
            result = runner.probe([openssl, "pkcs12", "-nodes", "-password", "pass:", *extra,
                                   "-in", command_path(fs, scratch)])
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
