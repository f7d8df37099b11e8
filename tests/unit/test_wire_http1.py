"""wire.http1: one HTTP/1.1 exchange, every body framing, broken answers named."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from wire.http1 import BadResponse, exchange


class CannedServer:
    """Answers each connection on 127.0.0.1 with fixed bytes and keeps what it was sent."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(rest) < length:
                    rest += conn.recv(4096)
                self.requests.append(head + b"\r\n\r\n" + rest)
                conn.sendall(self.answer)

    def get(self, method: str = "GET", body: bytes | None = None, cap: int = 1 << 20,
            headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str], bytes]:
        return exchange(method, "127.0.0.1", self.port, "/path?q=1", headers or {}, body,
                        5.0, cap)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[type[CannedServer]]:
    servers: list[CannedServer] = []

    class Tracked(CannedServer):
        def __init__(self, answer: bytes) -> None:
            super().__init__(answer)
            servers.append(self)

    yield Tracked
    for server in servers:
        server.close()


def test_content_length_body_and_the_request_sent(serve: type[CannedServer]) -> None:
    server = serve(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello")
    status, reason, headers, body = server.get("POST", b"<xml/>", headers={"x-ms-version": "1"})
    assert (status, reason, body) == (201, "Created", b"hello")
    assert headers["x-a"] == "1, 2"
    sent = server.requests[0]
    assert sent.startswith(b"POST /path?q=1 HTTP/1.1\r\n")
    for line in (b"Host: 127.0.0.1:", b"Connection: close", b"x-ms-version: 1",
                 b"Content-Length: 6"):
        assert line in sent
    assert sent.endswith(b"\r\n\r\n<xml/>")


def test_chunked_body_with_extensions_and_trailers(serve: type[CannedServer]) -> None:
    server = serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert server.get()[3] == b"hello world"


def test_body_to_the_end_of_the_connection(serve: type[CannedServer]) -> None:
    assert serve(b"HTTP/1.0 200 OK\r\n\r\nuntil close").get()[3] == b"until close"


def test_interim_continue_then_the_answer(serve: type[CannedServer]) -> None:
    server = serve(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert server.get()[::3] == (200, b"ok")


def test_no_body_for_head_and_204(serve: type[CannedServer]) -> None:
    assert serve(b"HTTP/1.1 204 No Content\r\n\r\n").get()[3] == b""
    assert serve(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n").get("HEAD")[3] == b""


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100,
])
def test_a_body_over_the_cap_is_cut_one_byte_past_it(serve: type[CannedServer],
                                                     answer: bytes) -> None:
    assert len(serve(answer).get(cap=10)[3]) == 11


@pytest.mark.parametrize(("answer", "message"), [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "before the end of the body"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed response header"),
    (b"HTTP/1.1 200 OK\r\nContent-", "closed inside the response head"),
])
def test_broken_answers_are_named(serve: type[CannedServer], answer: bytes,
                                  message: str) -> None:
    with pytest.raises(BadResponse, match=message):
        serve(answer).get()


def test_header_injection_is_refused(serve: type[CannedServer]) -> None:
    server = serve(b"HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(ValueError, match="line break"):
        server.get(headers={"x-ms-version": "1\r\nEvil: yes"})
    assert server.requests == []


def test_connection_refused_is_an_os_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):
        exchange("GET", "127.0.0.1", port, "/", {}, None, 2.0, 100)
