"""HTTP transport and the WireServer, HostGAPlugin and IMDS clients against a scripted
server on 127.0.0.1 (a few lines of http.server; the fabric has its own integration tests).
Sleeps are injected, so retries cost nothing."""

from __future__ import annotations

import base64
import datetime
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import FIXTURES
from wire.blob import MAX_PAGE_WRITE, http_date, put_status_blob, status_blob_requests
from wire.errors import DocumentError, HttpStatusError, WireError
from wire.hostplugin import HostPluginClient
from wire.http import (
    HttpClient,
    RetryPolicy,
    base_url,
    proxy_url,
    rebase_url,
    shown_url,
)
from wire.imds import ImdsClient, parse_instance_metadata
from wire.reports import HealthReport
from wire.transport import TransportPair
from wire.wireserver import STALE_REFRESHES, AgentIdentity, WireServerClient

WIRE = FIXTURES / "walinuxagent" / "wire"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]
Route = Callable[[Seen], Answer]


@dataclass
class Scripted:
    """A local HTTP server answering from `route`, recording what it saw."""

    route: Route
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


@pytest.fixture
def server() -> Iterator[Callable[[Route], Scripted]]:
    servers: list[ThreadingHTTPServer] = []

    def start(route: Route) -> Scripted:
        scripted = Scripted(route)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            self.rfile.read(length))
                scripted.seen.append(seen)
                status, headers, body = scripted.route(seen)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout and size-cap tests)

            do_GET = do_POST = do_PUT = _any  # noqa: N815

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(httpd)
        threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
        scripted.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return scripted

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def sequence(*answers: Answer) -> Route:
    """Answer in order; the last answer repeats."""
    queue = list(answers)

    def route(seen: Seen) -> Answer:
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return route


OK: Answer = (200, {}, b"ok")


# -- URL helpers ----------------------------------------------------------------------------

def test_base_url_forms() -> None:
    assert base_url("168.63.129.16", 80) == "http://168.63.129.16:80"
    assert base_url("127.0.0.1:8080", 80) == "http://127.0.0.1:8080"
    assert base_url("http://127.0.0.1:9/", 80) == "http://127.0.0.1:9"
    assert base_url("fe80::1", 80) == "http://[fe80::1]:80"
    with pytest.raises(WireError):
        base_url("", 80)
    with pytest.raises(WireError, match="not a number"):
        base_url("host:port", 80)


def test_rebase_url_keeps_path_and_query() -> None:
    url = ("http://168.63.129.16:80/machine/865a/bc8b%2Db5ed.%5Fcanary?comp=config&"
           "type=sharedConfig&incarnation=1")
    assert rebase_url(url, "http://127.0.0.1:5000") == (
        "http://127.0.0.1:5000/machine/865a/bc8b%2Db5ed.%5Fcanary?comp=config&"
        "type=sharedConfig&incarnation=1")


def test_shown_url_hides_sas_signatures() -> None:
    assert shown_url("https://a.blob/x?sv=1&sig=SECRET") == "https://a.blob/x?<sas>"
    assert shown_url("http://h/machine?comp=health") == "http://h/machine?comp=health"


def test_proxy_url() -> None:
    assert proxy_url(None, 3128) is None
    assert proxy_url("proxy.corp", 8080) == "http://proxy.corp:8080"


# -- retries --------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503, 504, 507])
def test_server_errors_are_retried_with_backoff(server: Callable[[Route], Scripted],
                                                status: int) -> None:
    scripted = server(sequence((status, {}, b""), (status, {}, b""), OK))
    sleeps = Sleeps()
    response = HttpClient(sleep=sleeps).request("GET", f"{scripted.url}/x")
    assert response.status == 200 and response.attempts == 3
    assert sleeps == [1.0, 2.0]


@pytest.mark.parametrize("status", [429, 403])
def test_throttling_waits_longer(server: Callable[[Route], Scripted], status: int) -> None:
    scripted = server(sequence((status, {}, b""), (status, {}, b""), OK))
    sleeps = Sleeps()
    HttpClient(sleep=sleeps).request("GET", f"{scripted.url}/x")
    assert sleeps == [15.0, 15.0]


def test_throttling_has_more_attempts_than_errors(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence(*([(429, {}, b"")] * 10), OK))
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=3, throttle_attempts=20, throttle_delay=1.0, budget=1000)
    assert HttpClient(sleep=sleeps, retry=policy).request("GET", scripted.url).status == 200
    assert len(sleeps) == 10


def test_retry_budget_gives_a_clear_error(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence((503, {}, b"busy")))
    sleeps = Sleeps()
    with pytest.raises(HttpStatusError) as caught:
        HttpClient(sleep=sleeps).request("GET", f"{scripted.url}/machine/?comp=goalstate")
    error = caught.value
    assert error.status == 503 and error.attempts == 6
    assert error.url == f"{scripted.url}/machine/?comp=goalstate"
    message = str(error)
    assert "/machine/?comp=goalstate" in message and "6 attempt(s)" in message
    assert "HTTP 503" in message
    assert len(scripted.seen) == 6


def test_time_budget_bounds_waiting(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence((500, {}, b"")))
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=100, base_delay=10, max_delay=10, budget=35)
    with pytest.raises(HttpStatusError):
        HttpClient(sleep=sleeps, retry=policy).request("GET", scripted.url)
    assert sum(sleeps) <= 35 and len(sleeps) == 3


def test_other_statuses_fail_at_once(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence((404, {}, b"no such thing")))
    sleeps = Sleeps()
    with pytest.raises(HttpStatusError, match="HTTP 404.*no such thing") as caught:
        HttpClient(sleep=sleeps).request("GET", f"{scripted.url}/x")
    assert caught.value.status == 404 and sleeps == []


def test_allowed_status_is_returned(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence((304, {}, b"")))
    assert HttpClient().request("GET", scripted.url, allow=(304,)).status == 304


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_errors_are_retried_then_named() -> None:
    sleeps = Sleeps()
    url = f"http://127.0.0.1:{_closed_port()}/?comp=versions"
    with pytest.raises(WireError, match="connection error") as caught:
        HttpClient(sleep=sleeps, retry=RetryPolicy(attempts=3)).request("GET", url)
    assert caught.value.attempts == 3 and caught.value.status is None
    assert "127.0.0.1" in str(caught.value) and sleeps == [1.0, 2.0]


def test_timeouts_apply(server: Callable[[Route], Scripted]) -> None:
    def slow(seen: Seen) -> Answer:
        time.sleep(1.0)
        return OK
    scripted = server(slow)
    started = time.monotonic()
    with pytest.raises(WireError, match="connection error"):
        HttpClient(timeout=0.2, sleep=Sleeps(), retry=RetryPolicy(attempts=2)).request(
            "GET", scripted.url)
    assert time.monotonic() - started < 1.0


def test_oversized_answer_is_refused(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence((200, {}, b"x" * 2000)))
    with pytest.raises(WireError, match="larger than 1000 bytes"):
        HttpClient(max_bytes=1000).request("GET", scripted.url)


def test_environment_proxy_is_never_used(server: Callable[[Route], Scripted],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = server(sequence(OK))
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    assert HttpClient().request("GET", scripted.url).status == 200


def test_explicit_proxy_for_downloads(server: Callable[[Route], Scripted]) -> None:
    proxy = server(sequence((200, {}, b"via proxy")))
    response = HttpClient().request("GET", "http://artifacts.example.invalid/pkg.zip",
                                    proxy=proxy.url)
    assert response.body == b"via proxy"
    assert proxy.seen[0].path == "http://artifacts.example.invalid/pkg.zip"


# -- WireServer -----------------------------------------------------------------------------

def fixture(name: str) -> bytes:
    return (WIRE / name).read_bytes()


def wire_routes(goal_states: list[bytes] | None = None,
                overrides: dict[str, list[Answer]] | None = None) -> Route:
    """A WireServer from the fixtures: sub-document URLs still name 168.63.129.16."""
    states = list(goal_states or [fixture("goal_state.xml")])
    extra = {k: list(v) for k, v in (overrides or {}).items()}

    def route(seen: Seen) -> Answer:
        for key, answers in extra.items():
            if key in seen.path and answers:
                return answers.pop(0)
        if seen.path == "/?comp=versions":
            return 200, {}, fixture("version_info.xml")
        if seen.path == "/machine/?comp=goalstate":
            return 200, {}, states.pop(0) if len(states) > 1 else states[0]
        if "type=hostingEnvironmentConfig" in seen.path:
            return 200, {}, fixture("hosting_env.xml")
        if "type=sharedConfig" in seen.path:
            return 200, {}, fixture("shared_config.xml")
        if "type=extensionsConfig" in seen.path:
            return 200, {}, fixture("ext_conf.xml")
        if "comp=certificates" in seen.path:
            return 200, {}, fixture("certs.xml")
        if seen.path == "/machine?comp=health":
            return 200, {}, b""
        if seen.path == "/machine?comp=roleProperties":
            return 202, {}, b""
        if seen.path == "/machine?comp=telemetrydata":
            return 200, {}, b""
        return 404, {}, b"unknown"
    return route


def client(url: str, sleeps: Sleeps | None = None) -> WireServerClient:
    return WireServerClient(url, http=HttpClient(sleep=sleeps if sleeps is not None else Sleeps()),
                            identity=AgentIdentity("WALinuxAgent", "2.9.1.1"),
                            goal_state_delay=1.0)


def fixture_pair() -> TransportPair:
    return TransportPair(WIRE / "trans_cert", WIRE / "trans_prv",
                         (WIRE / "trans_cert").read_bytes(), (WIRE / "trans_prv").read_bytes())


def test_wireserver_headers_and_version(server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes())
    versions = client(scripted.url).check_protocol_version()
    assert versions.preferred == "2012-11-30"
    headers = scripted.seen[0].headers
    assert headers["x-ms-agent-name"] == "WALinuxAgent"
    assert headers["x-ms-version"] == "2012-11-30"
    assert headers["user-agent"] == "WALinuxAgent/2.9.1.1"


def test_unsupported_protocol_version_fails_clearly(server: Callable[[Route], Scripted]) -> None:
    versions = (b"<Versions><Preferred><Version>2099-01-01</Version></Preferred>"
                b"<Supported><Version>2098-01-01</Version></Supported></Versions>")
    scripted = server(sequence((200, {}, versions)))
    with pytest.raises(WireError, match="does not support protocol 2012-11-30.*2099-01-01"):
        client(scripted.url).check_protocol_version()


def test_documents_are_fetched_from_our_endpoint(server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes())
    documents = client(scripted.url).goal_state_documents(fixture_pair())
    assert documents.goal_state.incarnation == "1"
    assert documents.hosting_environment and documents.hosting_environment.vm_name == (
        "MachineRole_IN_0")
    assert documents.shared_config and documents.shared_config.instances
    assert documents.extensions_config and len(documents.extensions_config.plugins) == 1
    assert documents.certificates and documents.certificates.is_pfx
    # every request reached the scripted server: the platform address was rewritten
    paths = scripted.paths()
    assert len(paths) == 5
    assert all(not p.startswith("http") for p in paths)
    certificates = next(s for s in scripted.seen if "comp=certificates" in s.path)
    assert certificates.headers["x-ms-cipher-name"] == "AES128_CBC"
    assert certificates.headers["x-ms-guest-agent-public-x509-cert"] == fixture_pair().header_value


def test_certificates_fall_back_to_3des(server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes(overrides={"comp=certificates": [(400, {}, b"bad cipher")]}))
    state = client(scripted.url).goal_state()
    assert client(scripted.url).certificates(state, fixture_pair()) is not None
    ciphers = [s.headers["x-ms-cipher-name"] for s in scripted.seen if "certificates" in s.path]
    assert ciphers == ["AES128_CBC", "DES_EDE3_CBC"]


def test_goal_state_without_role_instance_is_retried(server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes([fixture("goal_state_noop.xml"), fixture("goal_state_noop.xml"),
                                   fixture("goal_state.xml")]))
    sleeps = Sleeps()
    state = client(scripted.url, sleeps).goal_state()
    assert state.role_instance_id is not None and sleeps == [1.0, 1.0]


def test_a_fetched_goal_state_document_is_parsed_without_a_second_get(
        server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes([fixture("goal_state.xml")]))
    wire = client(scripted.url)
    document = wire.goal_state_document()
    assert document == fixture("goal_state.xml")
    state = wire.goal_state(fetched=document)
    assert state.incarnation == "1"
    assert [s.path for s in scripted.seen].count("/machine/?comp=goalstate") == 1


def test_a_fetched_document_without_role_instance_is_fetched_again(
        server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes([fixture("goal_state.xml")]))
    sleeps = Sleeps()
    state = client(scripted.url, sleeps).goal_state(fetched=fixture("goal_state_noop.xml"))
    assert state.role_instance_id is not None and sleeps == [1.0]
    assert [s.path for s in scripted.seen].count("/machine/?comp=goalstate") == 1


def test_goal_state_never_placed_fails_clearly(server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes([fixture("goal_state_noop.xml")]))
    with pytest.raises(WireError, match="no RoleInstance after 6 attempts"):
        client(scripted.url).goal_state()


def test_stale_goal_state_is_refreshed_once(server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes(overrides={"type=sharedConfig": [(410, {}, b"gone")]}))
    documents = client(scripted.url).goal_state_documents()
    assert documents.shared_config is not None
    assert scripted.paths().count("/machine/?comp=goalstate") == 2


def test_persistently_stale_goal_state_fails(server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes(overrides={"type=sharedConfig": [(410, {}, b"")] * 5}))
    with pytest.raises(HttpStatusError) as caught:
        client(scripted.url).goal_state_documents()
    assert caught.value.status == 410
    assert scripted.paths().count("/machine/?comp=goalstate") == STALE_REFRESHES


def test_health_reports(server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes())
    wire = client(scripted.url)
    state = wire.goal_state()
    wire.report_health(state, HealthReport.provisioning())
    wire.report_health(state, HealthReport.failed("disk <full> & gone"))
    wire.report_health(state, HealthReport.ready())
    posts = [s for s in scripted.seen if s.method == "POST"]
    assert [p.path for p in posts] == ["/machine?comp=health"] * 3
    assert posts[0].headers["content-type"] == "text/xml;charset=utf-8"
    assert b"<SubStatus>Provisioning</SubStatus>" in posts[0].body
    assert b"<Description>disk &lt;full&gt; &amp; gone</Description>" in posts[1].body
    assert b"<State>Ready</State>" in posts[2].body and b"Details" not in posts[2].body
    assert b"<InstanceId>b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0</InstanceId>" in (
        posts[2].body)


def test_role_properties_expect_202(server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes())
    wire = client(scripted.url)
    state = wire.goal_state()
    wire.report_role_properties(state, {"CertificateThumbprint": "ABCDEF"})
    body = scripted.seen[-1].body
    assert b'<Property name="CertificateThumbprint" value="ABCDEF"/>' in body
    other = server(wire_routes(overrides={"comp=roleProperties": [(200, {}, b"")]}))
    with pytest.raises(HttpStatusError, match="expected HTTP 202"):
        client(other.url).report_role_properties(state, {"CertificateThumbprint": "ABCDEF"})


def test_telemetry_size_cap(server: Callable[[Route], Scripted]) -> None:
    scripted = server(wire_routes())
    wire = client(scripted.url)
    wire.send_telemetry(b"<TelemetryData/>")
    assert scripted.seen[-1].path == "/machine?comp=telemetrydata"
    with pytest.raises(WireError, match="64512-byte limit"):
        wire.send_telemetry(b"x" * 64513)


def test_malformed_goal_state_is_named(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence((200, {}, b"<GoalState><Incarnation>1</Incarnation>")))
    with pytest.raises(DocumentError, match="GoalState: not well-formed XML"):
        client(scripted.url).goal_state()


# -- HostGAPlugin and status blobs ----------------------------------------------------------

def plugin(url: str) -> HostPluginClient:
    return HostPluginClient(url, container_id="cid", role_config_name="dep.1.xml",
                            http=HttpClient(sleep=Sleeps()))


def test_hostplugin_headers_versions_health(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence((200, {}, b'["2015-09-01"]'), OK))
    hgap = plugin(scripted.url)
    assert hgap.versions() == ("2015-09-01",)
    assert hgap.is_healthy()
    headers = scripted.seen[0].headers
    assert headers["x-ms-version"] == "2015-09-01"
    assert headers["x-ms-containerid"] == "cid"
    assert headers["x-ms-host-config-name"] == "dep.1.xml"
    assert scripted.paths() == ["/versions", "/health"]


def test_hostplugin_versions_as_xml(server: Callable[[Route], Scripted]) -> None:
    xml = (b"<Versions><Preferred><Version>2015-09-01</Version></Preferred><Supported>"
           b"<Version>2015-09-01</Version><Version>2012-11-30</Version></Supported></Versions>")
    scripted = server(sequence((200, {}, xml)))
    assert plugin(scripted.url).versions() == ("2015-09-01", "2012-11-30")


def test_hostplugin_unhealthy_is_false_without_retry(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence((503, {}, b"")))
    assert not plugin(scripted.url).is_healthy()
    assert len(scripted.seen) == 1


def test_hostplugin_artifact(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence((200, {}, b"PK\x03\x04zip")))
    body = plugin(scripted.url).fetch_artifact("https://storage.example/pkg.zip?sig=x")
    assert body == b"PK\x03\x04zip"
    assert scripted.seen[0].path == "/extensionArtifact"
    assert scripted.seen[0].headers["x-ms-artifact-location"] == (
        "https://storage.example/pkg.zip?sig=x")


def test_hostplugin_block_blob_status(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence(OK))
    plugin(scripted.url).put_status("https://acct.blob/status?sig=s", b'{"v":1}', "BlockBlob")
    (put,) = scripted.seen
    assert (put.method, put.path) == ("PUT", "/status")
    envelope = json.loads(put.body)
    assert envelope["requestUri"] == "https://acct.blob/status?sig=s"
    headers = {h["headerName"]: h["headerValue"] for h in envelope["headers"]}
    assert headers["x-ms-blob-type"] == "BlockBlob"
    assert base64.b64decode(envelope["content"]) == b'{"v":1}'


def test_hostplugin_page_blob_status(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence(OK))
    plugin(scripted.url).put_status("https://acct.blob/status?sig=s", b"a" * 700, "PageBlob")
    create, page = (json.loads(s.body) for s in scripted.seen)
    create_headers = {h["headerName"]: h["headerValue"] for h in create["headers"]}
    assert create_headers["x-ms-blob-type"] == "PageBlob"
    assert create_headers["x-ms-blob-content-length"] == "1024"
    assert "content" not in create
    assert page["requestUri"] == "https://acct.blob/status?sig=s&comp=page"
    page_headers = {h["headerName"]: h["headerValue"] for h in page["headers"]}
    assert page_headers["x-ms-range"] == "bytes=0-1023"
    assert base64.b64decode(page["content"]) == b"a" * 700 + b"\0" * 324


def test_page_blob_requests_are_chunked() -> None:
    size = MAX_PAGE_WRITE + 1000
    requests = status_blob_requests("https://a/b?sig=x", b"z" * size, "PageBlob")
    assert len(requests) == 3
    assert requests[0].headers["x-ms-blob-content-length"] == str(-(-size // 512) * 512)
    assert requests[1].headers["x-ms-range"] == f"bytes=0-{MAX_PAGE_WRITE - 1}"
    assert requests[2].headers["x-ms-range"] == (
        f"bytes={MAX_PAGE_WRITE}-{MAX_PAGE_WRITE + 1023}")
    assert all(len(r.body) % 512 == 0 and len(r.body) <= MAX_PAGE_WRITE for r in requests[1:])


def test_blob_requests_are_dated_as_http_wants() -> None:
    # The storage service reads x-ms-date as an RFC 7231 date, in GMT.
    moment = datetime.datetime(1994, 11, 6, 9, 49, 37, tzinfo=datetime.timezone(
        datetime.timedelta(hours=1)))
    (put,) = status_blob_requests("https://a/b?sig=x", b"{}", "BlockBlob", now=moment)
    assert put.headers["x-ms-date"] == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert http_date(datetime.datetime(2026, 2, 28, 23, 5, 1, tzinfo=datetime.UTC)) == (
        "Sat, 28 Feb 2026 23:05:01 GMT")


def test_the_status_blob_needs_no_email_package() -> None:
    # The daemon imports wire.blob to send its status and would hold email for its life.
    out = subprocess.run([sys.executable, "-c", "import sys, wire.blob; print('email' in sys.modules)"],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_direct_status_blob_upload(server: Callable[[Route], Scripted]) -> None:
    storage = server(sequence((201, {}, b"")))
    put_status_blob(HttpClient(sleep=Sleeps()), f"{storage.url}/c/status?sig=s", b"{}",
                    "BlockBlob")
    (put,) = storage.seen
    assert put.path == "/c/status?sig=s" and put.body == b"{}"
    assert put.headers["x-ms-blob-type"] == "BlockBlob"
    assert put.headers["x-ms-version"] == "2014-02-14" and "x-ms-date" in put.headers


def test_vm_settings(server: Callable[[Route], Scripted]) -> None:
    settings = (FIXTURES / "walinuxagent/hostgaplugin/vm_settings.json").read_bytes()
    scripted = server(sequence((200, {"ETag": "123"}, settings), (304, {}, b""),
                               (404, {}, b"")))
    hgap = plugin(scripted.url)
    first = hgap.vm_settings()
    assert first.status == "changed" and first.etag == "123" and first.document
    assert hgap.vm_settings("123").status == "unchanged"
    assert scripted.seen[1].headers["if-none-match"] == "123"
    assert hgap.vm_settings("123").status == "unsupported"


def test_vm_agent_log(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence(OK))
    plugin(scripted.url).put_vm_agent_log(b"PK zip")
    (put,) = scripted.seen
    assert put.path == "/vmAgentLog" and put.body == b"PK zip"
    assert put.headers["x-ms-vmagentlog-deploymentid"] == "dep"


# -- IMDS -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [FIXTURES / "walinuxagent/imds/valid.json",
                                  FIXTURES / "walinuxagent/imds/unicode.json",
                                  FIXTURES / "cloudinit/imds/imds_network_metadata.json"],
                         ids=lambda p: p.name)
def test_imds_fixtures_parse(path: Path) -> None:
    metadata = parse_instance_metadata(path.read_bytes())
    assert metadata.vm_id and metadata.name and metadata.location


def test_imds_fields() -> None:
    metadata = parse_instance_metadata(
        (FIXTURES / "cloudinit/imds/imds_network_metadata.json").read_bytes())
    assert metadata.vm_id == "ff702a6b-cb6a-4fcd-ad68-b4ce38227642"
    assert metadata.name == "my-hostname" and metadata.vm_size == "Standard_DS1_v2"
    assert [(k.key_data, k.path) for k in metadata.public_keys] == [("ssh-rsa key1", "path1")]
    unicode = parse_instance_metadata((FIXTURES / "walinuxagent/imds/unicode.json").read_bytes())
    assert unicode.location == "wéstus"


def test_imds_os_profile_and_user_data() -> None:
    answers = json.loads((FIXTURES / "azure-init/api-responses/imds/two-bad-then-success.json")
                         .read_text())["responses"]
    document = answers[2]["response"]
    document["compute"]["userData"] = base64.b64encode(b"#cloud-config\n").decode()
    metadata = parse_instance_metadata(json.dumps(document))
    assert metadata.admin_username == "azureuser" and metadata.computer_name == "temp-vm"
    assert metadata.disable_password_authentication is True
    assert metadata.public_keys[0].path == "/home/azureuser/.ssh/authorized_keys"
    assert metadata.user_data_bytes == b"#cloud-config\n"


@pytest.mark.parametrize(("text", "field"), [(b"{}", "compute"), (b'{"compute":{}}', "vmId"),
                                             (b"not json", "not JSON")])
def test_imds_malformed_is_named(text: bytes, field: str) -> None:
    with pytest.raises(DocumentError, match=f"IMDS instance: .*{field}"):
        parse_instance_metadata(text)


def test_imds_client_retries_the_scripted_errors(server: Callable[[Route], Scripted]) -> None:
    """azure-init's scripted sequence: 500, 500, then the document."""
    answers = json.loads((FIXTURES / "azure-init/api-responses/imds/two-bad-then-success.json")
                         .read_text())["responses"]
    scripted = server(sequence(*[(a["status_code"], a["headers"],
                                  json.dumps(a["response"]).encode()) for a in answers]))
    sleeps = Sleeps()
    metadata = ImdsClient(scripted.url, http=HttpClient(sleep=sleeps)).instance()
    assert metadata.name == "temp-vm" and len(sleeps) == 2
    assert scripted.seen[0].path == "/metadata/instance?api-version=2021-02-01"
    assert scripted.seen[0].headers["metadata"] == "true"


def test_imds_bad_request_fails_at_once(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence((400, {}, b'{"error": "Bad request."}')))
    with pytest.raises(HttpStatusError, match="HTTP 400"):
        ImdsClient(scripted.url, http=HttpClient(sleep=Sleeps())).instance()


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


def test_imds_deep_json_is_a_document_error() -> None:
    deep = b'{"compute": {"vmId": "x", "tags": ' + DEEP_JSON + b"}}"
    with pytest.raises(DocumentError, match="^IMDS instance: .*nested deeper"):
        parse_instance_metadata(deep)


def test_hostplugin_deep_json_is_a_document_error(server: Callable[[Route], Scripted]) -> None:
    scripted = server(sequence((200, {"ETag": "1"}, b'{"extensionGoalStates": ' + DEEP_JSON
                                + b"}"), (200, {}, DEEP_JSON)))
    hgap = plugin(scripted.url)
    with pytest.raises(DocumentError, match="^vmSettings: .*nested deeper"):
        hgap.vm_settings()
    with pytest.raises(DocumentError, match="^HostGAPlugin versions: .*nested deeper"):
        hgap.versions()
