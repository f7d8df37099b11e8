"""HttpProxy and the proxy variables: storage and artifact downloads go through the proxy,
the WireServer and the HostGAPlugin never do. A recording HTTP proxy on 127.0.0.1 stands
between the agent's clients and the fabric; no root needed."""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fabric import Fabric, default_scenario
from graph.context import make_context
from tasks import status
from tests.sandbox import make_sandbox_root
from wire.artifacts import ArtifactClient
from wire.blob import put_status_blob
from wire.hostplugin import HostPluginClient
from wire.proxy import download_proxy
from wire.wireserver import WireServerClient


class RecordingProxy(ThreadingHTTPServer):
    """A forward proxy for plain HTTP that records each absolute URL it is asked for."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.seen: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: RecordingProxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _forward(self) -> None:
        self.server.seen.append((self.command, self.path))
        target = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("proxy-connection", "connection", "host")}
        connection = http.client.HTTPConnection(target.hostname or "", target.port or 80,
                                                timeout=10)
        try:
            connection.request(self.command, target.path + (f"?{target.query}" if target.query
                                                             else ""), body=body,
                               headers=headers)
            answer = connection.getresponse()
            data = answer.read()
        finally:
            connection.close()
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = _forward


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    server = RecordingProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_downloads_go_through_the_proxy_the_platform_never(
        proxy: RecordingProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host, port = urllib.parse.urlsplit(proxy.url).hostname, urllib.parse.urlsplit(proxy.url).port
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    root = make_sandbox_root(tmp_path / "vm", "11111111-2222-3333-4444-555555555555")
    (root / "etc/waagent.conf").write_text(f"HttpProxy.Host={host}\nHttpProxy.Port={port}\n")
    with Fabric(default_scenario()) as fabric:
        ctx = make_context({"root": str(root), "wireserver": fabric.wire_url})
        # The platform: goal state, its documents, the HostGAPlugin (status, artifacts).
        wire = WireServerClient(fabric.wire_url)
        wire.check_protocol_version()
        state = wire.goal_state()
        extensions = wire.extensions_config(state)
        assert extensions is not None and extensions.plugins and extensions.status_upload_blob
        plugin = HostPluginClient(fabric.hostplugin_url, container_id=state.container_id,
                                  role_config_name=state.role_config_name)
        assert plugin.versions()
        location = extensions.plugins[0].location
        assert location is not None
        assert b"<Version>" in plugin.fetch_artifact(location)
        plugin.put_status(extensions.status_upload_blob, b'{"version": "1.0"}')
        assert proxy.seen == []

        # Storage: an artifact straight from its location, the status blob straight to it.
        direct = ArtifactClient(None, proxy=status.proxy(ctx), rounds=1)
        assert b"<Version>" in direct.fetch([location], what="manifest", max_bytes=1 << 20)
        blob_proxy = download_proxy(ctx.conf, extensions.status_upload_blob)
        assert blob_proxy == proxy.url
        put_status_blob(wire.http, extensions.status_upload_blob, b'{"version": "1.0"}',
                        "BlockBlob", proxy=blob_proxy)
        assert [method for method, _ in proxy.seen] == ["GET", "PUT"]
        assert proxy.seen[0][1] == location
        assert proxy.seen[1][1].split("?")[0] == extensions.status_upload_blob.split("?")[0]
        assert [b["via"] for b in fabric.record.status_blobs()][-1] != "HostGAPlugin"
        # Only the platform's addresses never go through it, whatever is configured.
        assert download_proxy(ctx.conf, "http://168.63.129.16/machine/?comp=goalstate") is None
