"""The transport pair: the agent's certificate and key the platform encrypts secrets to.

Generated once (RSA-2048, `CN=LinuxTransport`) and kept 0600 in Lib.Dir as
TransportCert.pem / TransportPrivate.pem. The way to Ready makes it with `openssl req` in
processes of its own (the keygen race below); without openssl, in-process with cryptography.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from system.errors import CommandFailed
from system.fs import FileSystem
from system.runner import Started
from wire import TRANSPORT_CERT, TRANSPORT_KEY, der
from wire.errors import CertificateError
from wire.openssl import command_path
from wire.x509 import certificate_der_of, load_certificate, public_der

log = logging.getLogger("waagent.wire.certs")

TRANSPORT_SUBJECT = "LinuxTransport"
TRANSPORT_VALIDITY_DAYS = 730
_KEYGEN_SCRATCH = ".transport-pair-{pid}.partial"


class TransportPair(NamedTuple):
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
        return base64.b64encode(certificate_der_of(cert_pem)).decode()
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
        cert = load_certificate(cert_pem)
        return public_der(cert.public_key()) == public_der(key.public_key())


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


# RSA key generation time varies several-fold with the primes openssl happens to try. One openssl process starts at once; if the agent then has to wait for
# it, a second one joins (the agent is idle, so a core is free) and the first of the two
# to finish wins: the long tail is cut without slowing the agent's own work before.
_POLL_SECONDS = 0.002


def start_transport_keygen(fs: FileSystem, lib_dir: Path,
                           openssl: str) -> Callable[[], tuple[bytes, bytes]]:
    """Start `openssl req` making a new transport pair, as the platform's agent does; the
    function returned waits for it and gives (cert_pem, key_pem).

    RSA key generation then runs in a process of its own beside loading the graph,
    reading the DVD, fetching the goal state and the work that does not need the key
    (see above for the second process). The pair is written in a 0700 scratch directory
    inside Lib.Dir (0700) and read back; where openssl is missing or fails, the pair is
    made in-process instead.
    """
    scratch = lib_dir / _KEYGEN_SCRATCH.format(pid=os.getpid())
    fs.mkdir(lib_dir, mode=0o700, why="agent state directory (holds private keys)")
    for leftover in _abandoned_keygen_scratch(lib_dir):
        try:
            fs.remove(leftover, why="transport pair scratch directory of an agent that is "
                      "gone", quiet=True)
        except OSError as err:
            # A killed agent's openssl may still be writing there: a later run tidies up.
            log.debug("left %s for now: %s", leftover, err)
    fs.mkdir(scratch, mode=0o700, why="scratch directory for a new transport pair", quiet=True)
    racers: list[tuple[Started, Path, Path]] = []

    def start() -> None:
        index = len(racers)
        key_path, cert_path = scratch / f"key-{index}.pem", scratch / f"cert-{index}.pem"
        argv = [openssl, "req", "-x509", "-nodes", "-subj", f"/CN={TRANSPORT_SUBJECT}",
                "-days", str(TRANSPORT_VALIDITY_DAYS), "-newkey", "rsa:2048",
                "-keyout", command_path(fs, key_path), "-out", command_path(fs, cert_path)]
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
