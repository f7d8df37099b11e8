"""wire.http1: one HTTP/1.1 exchange, every body framing, broken answers named; kept-alive
connections reused, replaced when the server closed them, dropped when an answer leaves
them unusable."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from wire.http1 import BadResponse, Connections, exchange


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


def closed_after_the_test(server_class: Any) -> Iterator[Any]:
    """`server_class` for one test: every server the test makes is closed after it."""
    servers: list[Any] = []

    class Tracked(server_class):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            servers.append(self)

    yield Tracked
    for server in servers:
        server.close()


@pytest.fixture
def serve() -> Iterator[type[CannedServer]]:
    yield from closed_after_the_test(CannedServer)


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


# -- kept-alive connections (Connections) ------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# Script entries that are not answers:
IDLE_CLOSE = b"<idle close>"  # after the answer before it, the server closes the connection
DROP = b"<drop>"  # the server reads the request and closes without answering
SILENT = b"<silent>"  # the server reads the request and never answers


class KeepAliveServer:
    """Serves requests on 127.0.0.1 from a script, several per connection: each request
    takes the next entry (an answer, DROP or SILENT; IDLE_CLOSE after an answer).
    `seen` holds (connection number, request line) of each request."""

    def __init__(self, *script: bytes) -> None:
        self.script = list(script)
        self.seen: list[tuple[int, bytes]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                self._serve_connection(conn, self.connections)

    def _serve_connection(self, conn: socket.socket, number: int) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                more = conn.recv(4096)
                if not more:
                    return
                data += more
            head, _, data = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(data) < length:
                data += conn.recv(4096)
            data = data[length:]
            self.seen.append((number, head.split(b"\r\n")[0]))
            entry = self.script.pop(0)
            if entry == DROP:
                return
            if entry != SILENT:
                conn.sendall(entry)
            if self.script[:1] == [IDLE_CLOSE]:
                self.script.pop(0)
                return

    def get(self, pool: Connections, method: str = "GET", cap: int = 1 << 20,
            path: str = "/", timeout: float = 5.0) -> bytes:
        return pool.exchange(method, "127.0.0.1", self.port, path, {}, None, timeout,
                             cap).body

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def kept() -> Iterator[type[KeepAliveServer]]:
    yield from closed_after_the_test(KeepAliveServer)


@pytest.fixture
def pool() -> Iterator[Connections]:
    connections = Connections()
    yield connections
    connections.close()


def test_a_connection_is_reused_across_requests(kept: type[KeepAliveServer],
                                                pool: Connections) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    server = kept(OK, chunked, b"HTTP/1.1 204 No Content\r\n\r\n", OK)
    assert [server.get(pool, path=f"/{n}") for n in range(4)] == [b"ok", b"hi", b"", b"ok"]
    assert server.seen == [(1, b"GET /0 HTTP/1.1"), (1, b"GET /1 HTTP/1.1"),
                           (1, b"GET /2 HTTP/1.1"), (1, b"GET /3 HTTP/1.1")]


def test_the_request_does_not_ask_to_close(serve: type[CannedServer]) -> None:
    server = serve(OK)
    pool = Connections()
    pool.exchange("PUT", "127.0.0.1", server.port, "/status", {}, b"{}", 5.0, 100)
    pool.close()
    sent = server.requests[0]
    assert sent.startswith(b"PUT /status HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Connection: close" not in sent
    assert sent.endswith(b"Content-Length: 2\r\n\r\n{}")


def test_a_connection_the_server_closed_while_idle_is_replaced(
        kept: type[KeepAliveServer], pool: Connections) -> None:
    server = kept(OK, IDLE_CLOSE, OK)
    assert server.get(pool) == b"ok"
    deadline = time.monotonic() + 5
    while server.script[:1] == [IDLE_CLOSE]:  # until the server has closed it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert server.get(pool) == b"ok"
    assert server.seen == [(1, b"GET / HTTP/1.1"), (2, b"GET / HTTP/1.1")]


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_an_idempotent_request_lost_on_a_reused_connection_is_sent_once_more(
        kept: type[KeepAliveServer], pool: Connections, method: str) -> None:
    # The server reads the second request and closes without a word, as a server that
    # closes an idle connection just as a request arrives: once more, on a new connection.
    server = kept(OK, DROP, OK)
    server.get(pool, method=method)
    assert server.get(pool, method=method, path="/again") == b"ok"
    line = f"{method} /again HTTP/1.1".encode()
    assert server.seen == [(1, f"{method} / HTTP/1.1".encode()), (1, line), (2, line)]


def test_a_request_lost_on_a_new_connection_is_an_error(kept: type[KeepAliveServer],
                                                        pool: Connections) -> None:
    server = kept(OK, DROP, DROP, OK)
    server.get(pool)
    with pytest.raises(BadResponse, match="closed inside the response head"):
        server.get(pool)  # lost on the reused connection, then on the new one
    assert [number for number, _ in server.seen] == [1, 1, 2]


def test_a_post_never_goes_on_a_reused_connection(kept: type[KeepAliveServer],
                                                  pool: Connections) -> None:
    server = kept(OK, OK, OK)
    server.get(pool)
    server.get(pool, method="POST")
    server.get(pool)  # the POST's connection is the one kept now
    assert server.seen == [(1, b"GET / HTTP/1.1"), (2, b"POST / HTTP/1.1"),
                           (2, b"GET / HTTP/1.1")]


def test_a_half_read_answer_closes_the_connection(kept: type[KeepAliveServer],
                                                  pool: Connections) -> None:
    # Cut at the cap: the rest of the body is still on the wire, so the connection cannot
    # carry the next request.
    server = kept(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, OK)
    assert len(server.get(pool, cap=10)) == 11
    assert server.get(pool) == b"ok"
    assert [number for number, _ in server.seen] == [1, 2]


def test_an_answer_that_ends_early_is_an_error_and_not_sent_again(
        kept: type[KeepAliveServer], pool: Connections) -> None:
    server = kept(OK, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", IDLE_CLOSE,
                  OK)
    server.get(pool)
    with pytest.raises(BadResponse, match="before the end of the body"):
        server.get(pool)  # part of an answer came: the request may have been handled
    assert server.get(pool) == b"ok"
    assert [number for number, _ in server.seen] == [1, 1, 2]


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n\r\nok",  # framed by the end of the connection
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",  # bytes past the body
])
def test_a_connection_the_answer_leaves_unusable_is_not_kept(
        kept: type[KeepAliveServer], pool: Connections, answer: bytes) -> None:
    server = kept(answer, IDLE_CLOSE, OK)
    assert server.get(pool) == b"ok"
    assert server.get(pool) == b"ok"
    assert [number for number, _ in server.seen] == [1, 2]


def test_a_timeout_on_a_reused_connection_is_not_sent_again(kept: type[KeepAliveServer],
                                                            pool: Connections) -> None:
    server = kept(OK, SILENT, OK)
    server.get(pool)
    with pytest.raises(TimeoutError):
        server.get(pool, timeout=0.3)
    assert server.get(pool) == b"ok"  # the timed-out connection was not kept
    assert [number for number, _ in server.seen] == [1, 1, 2]
