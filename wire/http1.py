"""Plain-HTTP/1.1 exchanges over a socket: what the WireServer, HostGAPlugin and IMDS need.

The platform's endpoints speak plain HTTP on a link the agent reaches directly. The
standard library's `http.client` would do, but importing it pulls in ssl and the email
package into every boot's goal-state check. A request goes out, one answer is read: the
status line, headers, and a body framed by chunked transfer-coding, Content-Length, or the
end of the connection, never more than the caller's cap. HTTPS (artifact downloads) stays
with `http.client`.

`exchange` uses a connection of its own (`Connection: close`). `Connections` keeps one
idle connection per endpoint and reuses it: the daemon talks to the same two endpoints
every loop, and a new TCP connection per request costs more CPU than the request itself.
A kept connection the server closed meanwhile is noticed before use (it reads as ready),
and an idempotent request that a reused connection lost before any answer came is sent
once more on a new connection: the server may close an idle connection at any moment,
also just as a request goes out. A request that is not idempotent (POST) always goes on
a new connection, so it is never sent twice.
"""

import select
import socket
import threading
from collections.abc import Mapping
from typing import NamedTuple

_MAX_HEAD = 64 * 1024
_READ = 64 * 1024
# Methods that may be sent twice with the effect of once (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class BadResponse(Exception):
    """The peer's answer is not HTTP/1.x, or it ends early."""


class Answer(NamedTuple):
    """Status, reason, headers (lower-case names) and body of one response."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def _request_head(method: str, host: str, port: int, target: str,
                  headers: Mapping[str, str], body: bytes | None,
                  keep_alive: bool = False) -> bytes:
    shown_host = f"[{host}]" if ":" in host else host
    lines = [f"{method} {target} HTTP/1.1", f"Host: {shown_host}:{port}",
             "Accept-Encoding: identity"]
    if not keep_alive:  # HTTP/1.1 keeps a connection open unless told otherwise
        lines.append("Connection: close")
    for name, value in headers.items():
        if any(c in f"{name}{value}" for c in "\r\n\0") or ":" in name:
            raise ValueError(f"HTTP header {name!r} holds a line break or an invalid name")
        lines.append(f"{name}: {value}")
    if body is not None or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Reader:
    """Buffered reads from a socket, bounded by the caller."""

    def __init__(self, sock: socket.socket, quick_ack: bool = False) -> None:
        self.sock = sock
        self.quick_ack = quick_ack
        self.buffer = b""
        self.closed = False
        self.received = 0  # bytes read from the peer

    def _fill(self) -> bool:
        if self.closed:
            return False
        data = self.sock.recv(_READ)
        if self.quick_ack:
            # The kernel delays the ACK of what it received, hoping to send it with data.
            # A server that writes its answer's head and body separately (Python's
            # http.server does) holds the body back until that ACK (Nagle): on a kept
            # connection each answer would wait for the delayed-ACK timer. A new
            # connection starts in this mode on its own.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        if not data:
            self.closed = True
            return False
        self.buffer += data
        self.received += len(data)
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


def _head(reader: _Reader) -> tuple[str, int, str, dict[str, str]]:
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
    return version, int(code), reason.strip(), headers


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
    """Send one request on a new connection and read its answer; a body longer than `cap`
    is cut at cap + 1 bytes (the caller refuses it). OSError on network trouble,
    BadResponse on a broken answer."""
    head = _request_head(method, host, port, target, headers, body)
    with _connect(host, port, timeout) as sock:
        sock.sendall(head + (body or b""))
        return _read_answer(_Reader(sock), method, cap)


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    # An ASCII host as bytes: a str would be IDNA-encoded, which loads the idna codecs.
    address = host.encode("ascii") if host.isascii() else host
    return socket.create_connection((address, port), timeout=timeout)  # type: ignore[arg-type]


class _Unanswered(Exception):
    """A reused connection ended before the first byte of an answer."""


class Connections:
    """Kept-alive connections: at most one idle per endpoint (host, port), taken by one
    request at a time (threads each get their own). See the module's docstring."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], socket.socket] = {}
        self._lock = threading.Lock()

    def exchange(self, method: str, host: str, port: int, target: str,
                 headers: Mapping[str, str], body: bytes | None, timeout: float,
                 cap: int) -> Answer:
        """As the module's `exchange`, over the endpoint's kept connection when it has one."""
        head = _request_head(method, host, port, target, headers, body, keep_alive=True)
        request = head + (body or b"")
        kept = self._take((host, port))
        if kept is not None:
            if method in IDEMPOTENT:
                try:
                    return self._send(kept, (host, port), request, method, cap, timeout,
                                      reused=True)
                except _Unanswered:
                    pass  # the server had closed it: once more, on a new connection
            else:
                kept.close()
        return self._send(_connect(host, port, timeout), (host, port), request, method, cap,
                          timeout, reused=False)

    def _send(self, sock: socket.socket, endpoint: tuple[str, int], request: bytes,
              method: str, cap: int, timeout: float, reused: bool) -> Answer:
        reader = _Reader(sock, quick_ack=True)
        try:
            sock.settimeout(timeout)
            sock.sendall(request)
            answer, reusable = _read_message(reader, method, cap)
        except (OSError, BadResponse) as err:
            sock.close()
            # A timeout is a slow server, not a closed connection: never sent twice.
            if reused and reader.received == 0 and not isinstance(err, TimeoutError):
                raise _Unanswered from err
            raise
        except BaseException:
            sock.close()
            raise
        if reusable:
            self._keep(endpoint, sock)
        else:
            sock.close()
        return answer

    def _take(self, endpoint: tuple[str, int]) -> socket.socket | None:
        with self._lock:
            sock = self._idle.pop(endpoint, None)
        if sock is not None and _readable(sock):
            # Idle, it has nothing to read unless the server closed it (or sent bytes
            # nobody asked for): not usable either way.
            sock.close()
            return None
        return sock

    def _keep(self, endpoint: tuple[str, int], sock: socket.socket) -> None:
        with self._lock:
            previous = self._idle.get(endpoint)
            self._idle[endpoint] = sock
        if previous is not None:
            previous.close()

    def close(self) -> None:
        """Close the idle connections (one in use is closed by its request when done)."""
        with self._lock:
            idle, self._idle = list(self._idle.values()), {}
        for sock in idle:
            sock.close()


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _read_answer(reader: _Reader, method: str, cap: int) -> Answer:
    return _read_message(reader, method, cap)[0]


def _read_message(reader: _Reader, method: str, cap: int) -> tuple[Answer, bool]:
    """The answer, and whether the connection may carry another request: the server keeps
    it open (HTTP/1.1 without `Connection: close`), and the body ended where its framing
    said, all of it read, nothing after it."""
    version, status, reason, found = _head(reader)
    while 100 <= status < 200:  # interim answers (100 Continue) precede the real one
        version, status, reason, found = _head(reader)
    framed = True
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
        framed = False
    reusable = (framed and len(data) <= cap and not reader.buffer and version == "HTTP/1.1"
                and "close" not in found.get("connection", "").lower())
    return Answer(status, reason, found, data), reusable
