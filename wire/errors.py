"""Errors of the platform protocols; each names what failed, on what, and what to do."""

from __future__ import annotations

from system.errors import AgentError


class WireError(AgentError):
    """A platform protocol failed: unreachable, refused, or answered something unusable.

    `url`, `status` and `attempts` are set when an HTTP exchange is the cause.
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None,
                 attempts: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts


class HttpStatusError(WireError):
    """The server answered with a status the caller does not accept (after any retries)."""


class DocumentError(WireError):
    """A platform document is malformed; the message names the document and the field."""

    def __init__(self, document: str, message: str) -> None:
        super().__init__(f"{document}: {message}")
        self.document = document


class CertificateError(WireError):
    """Certificates could not be decrypted or stored; no partial key file is left behind."""
