"""One plain-HTTP/1.1 exchange over a socket: what the WireServer, HostGAPlugin and IMDS need.

The platform's endpoints speak plain HTTP on a link the agent reaches directly. The
standard library's `http.client` would do, but importing it pulls in ssl and the email
package into every boot's goal-state check. This sends one request with
`Connection: close` and reads one answer: the status line, headers, and a body framed by
chunked transfer-coding, Content-Length, or the end of the connection, never more than
the caller's cap. HTTPS (artifact downloads) stays with `http.client`.
"""

import socket
from collections.abc import Mapping
from typing import NamedTuple

_MAX_HEAD = 64 * 1024
_READ = 64 * 1024


class BadResponse(Exception):
    """The peer's answer is not HTTP/1.x, or it ends early."""


class Answer(NamedTuple):
    """Status, reason, headers (lower-case names) and body of one response."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def _request_head(method: str, host: str, port: int, target: str,
                  headers: Mapping[str, str], body: bytes | None) -> bytes:
    shown_host = f"[{host}]" if ":" in host else host
    lines = [f"{method} {target} HTTP/1.1", f"Host: {shown_host}:{port}",
             "Accept-Encoding: identity", "Connection: close"]
    for name, value in headers.items():
        if any(c in f"{name}{value}" for c in "\r\n\0") or ":" in name:
            raise ValueError(f"HTTP header {name!r} holds a line break or an invalid name")
        lines.append(f"{name}: {value}")
    if body is not None or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Reader:
    """Buffered reads from a socket, bounded by the caller."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def _fill(self) -> bool:
        if self.closed:
            return False
        data = self.sock.recv(_READ)
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    def line(self, limit: int = _MAX_HEAD) -> bytes:
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > limit:
                raise BadResponse("response header line too long")
            if not self._fill():
                raise BadResponse("connection closed inside the response head")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise BadResponse(f"connection closed {size - len(self.buffer)} bytes before "
                                  "the end of the body")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def to_end(self, cap: int) -> bytes:
        while len(self.buffer) <= cap and self._fill():
            pass
        return self.buffer[:cap + 1]


def _head(reader: _Reader) -> tuple[int, str, dict[str, str]]:
    status_line = reader.line().decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    # isascii: "2\xb20" is three digits to isdigit() (superscript two), not to int().
    if not version.startswith("HTTP/1.") or len(code) != 3 or not (code.isascii()
                                                                  and code.isdigit()):
        raise BadResponse(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    size = len(status_line)
    while line := reader.line():
        size += len(line)
        if size > _MAX_HEAD:
            raise BadResponse("response headers too large")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise BadResponse(f"malformed response header: {line[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return int(code), reason.strip(), headers


def _chunked(reader: _Reader, cap: int) -> bytes:
    body = b""
    while True:
        size_text = reader.line().split(b";", 1)[0].strip()
        try:
            # Hex digits only: int() would also take "-5", "0x10" and "1_0".
            if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
                raise ValueError
            size = int(size_text, 16)
        except ValueError:
            raise BadResponse(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while reader.line():  # trailers
                pass
            return body
        if len(body) + size > cap:
            return body + reader.exactly(min(size, cap + 1 - len(body)))
        body += reader.exactly(size)
        reader.exactly(2)  # CRLF after the chunk


def exchange(method: str, host: str, port: int, target: str, headers: Mapping[str, str],
             body: bytes | None, timeout: float, cap: int) -> Answer:
    """Send one request and read its answer; a body longer than `cap` is cut at cap + 1
    bytes (the caller refuses it). OSError on network trouble, BadResponse on a broken
    answer."""
    head = _request_head(method, host, port, target, headers, body)
    # An ASCII host as bytes: a str would be IDNA-encoded, which loads the idna codecs.
    address = host.encode("ascii") if host.isascii() else host
    with socket.create_connection((address, port), timeout=timeout) as sock:  # type: ignore[arg-type]
        sock.sendall(head + (body or b""))
        return _read_answer(_Reader(sock), method, cap)


def _read_answer(reader: _Reader, method: str, cap: int) -> Answer:
    status, reason, found = _head(reader)
    while 100 <= status < 200:  # interim answers (100 Continue) precede the real one
        status, reason, found = _head(reader)
    if method == "HEAD" or status in (204, 304):
        data = b""
    elif "chunked" in found.get("transfer-encoding", "").lower():
        data = _chunked(reader, cap)
    elif "content-length" in found:
        try:
            length = int(found["content-length"])
            if length < 0:
                raise ValueError
        except ValueError:
            raise BadResponse(f"bad Content-Length {found['content-length']!r}") from None
        data = reader.exactly(min(length, cap + 1))
    else:
        data = reader.to_end(cap)
    return Answer(status, reason, found, data)
