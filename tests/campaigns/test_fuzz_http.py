"""HTTP answers: the plain-HTTP/1.1 client of wire/http1.py, fed raw bytes through a socket
pair (what a loopback server would send), and once through a real loopback server."""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.campaigns.harness import campaign, holds
from tests.campaigns.strategies import HTTP_TOKENS, mutated
from wire.http1 import BadResponse, _read_answer, _Reader, exchange

pytestmark = pytest.mark.campaign

CAP = 4096
STATUS = st.one_of(st.sampled_from(["200", "304", "204", "100", "404", "2²0", "20", "2000"]),
                   st.integers(0, 999).map(lambda n: f"{n:03d}"))
HEADER = st.one_of(
    st.tuples(st.sampled_from(["Content-Length", "content-length", "Transfer-Encoding",
                               "ETag", "Content-Type", "x"]),
              st.sampled_from(["0", "5", "-1", "+3", " 7 ", "1_0", "99999999999", "chunked",
                               "gzip, chunked", "abc", ""])).map(lambda kv: f"{kv[0]}: {kv[1]}"),
    st.text(max_size=10))


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        data = draw(st.binary(max_size=40))
        size = draw(st.sampled_from([f"{len(data):x}", f"{len(data):X};ext=1", "-5", "0x10",
                                     "ffffffffffffffff", "zz", ""]))
        out += size.encode() + b"\r\n" + data + b"\r\n"
    if draw(st.booleans()):
        out += b"0\r\n" + draw(st.sampled_from([b"", b"Trailer: x\r\n"])) + b"\r\n"
    return out


@st.composite
def http_answer(draw: st.DrawFn) -> bytes:
    """Interim answers, a status line, headers, and a body framed by chunks,
    Content-Length or the end of the connection; then a few mutations."""
    head = b""
    if draw(st.integers(0, 5)) == 0:
        head += b"HTTP/1.1 100 Continue\r\n\r\n"
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1x", ""]))
    # Latin-1, as the client decodes the head.
    head += f"{version} {draw(STATUS)} {draw(st.sampled_from(['OK', '', 'Not Found']))}".encode(
        "latin-1") + b"\r\n"
    headers = draw(st.lists(HEADER, max_size=4))
    body = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        headers.append("Transfer-Encoding: chunked")
        body = draw(chunked_body())
    elif draw(st.booleans()):
        headers.append(f"Content-Length: {len(body)}")
    head += "".join(f"{h}\r\n" for h in headers).encode("latin-1", "replace") + b"\r\n"
    return draw(mutated(head + body, HTTP_TOKENS, 2))


def _read(data: bytes, method: str) -> None:
    """The answer as the client reads it from a peer that sent `data` and closed."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(2)
        writer = threading.Thread(target=lambda: (theirs.sendall(data),
                                                  theirs.shutdown(socket.SHUT_WR)))
        writer.start()
        try:
            answer = _read_answer(_Reader(ours), method, CAP)
        finally:
            writer.join()
        assert len(answer.body) <= CAP + 1
        assert 0 <= answer.status <= 999


@campaign(2)
@given(http_answer(), st.sampled_from(["GET", "HEAD", "PUT"]))
def test_http_answers(data: bytes, method: str) -> None:
    holds("HTTP answers", lambda: _read(data, method), (BadResponse,), size=len(data))


def test_http_answer_through_a_loopback_server() -> None:
    """The whole exchange: request sent, a broken answer read, BadResponse raised."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with pytest.raises(BadResponse, match="bad chunk size"):
            exchange("GET", "127.0.0.1", port, "/", {}, None, 5.0, CAP)
    finally:
        thread.join()
        server.close()
