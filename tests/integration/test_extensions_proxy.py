"""HttpProxy and extension artifacts, through the agent's own download path (gather, then
extensions:<Handler>:unpack): manifests and packages come through the HostGAPlugin,
never through the proxy; when the HostGAPlugin fails, straight from their locations
through the proxy (a recording proxy on 127.0.0.1). No root needed."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from fabric import Fabric, default_scenario
from graph.context import make_context
from tasks import extensions as ext
from tasks import inputs
from tests.integration.test_network_proxy import RecordingProxy, proxy  # noqa: F401 - fixture
from tests.sandbox import make_sandbox_root


def test_artifacts_through_the_hostgaplugin_never_the_proxy_else_direct_through_it(
        proxy: RecordingProxy, tmp_path: Path,  # noqa: F811 - the fixture
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ext.BACKOFF_VARIABLE, "0.05")
    split = urllib.parse.urlsplit(proxy.url)
    scenario = default_scenario()
    root = make_sandbox_root(tmp_path / "vm", scenario.vm_id)
    (root / "etc/waagent.conf").write_text(
        f"HttpProxy.Host={split.hostname}\nHttpProxy.Port={split.port}\n")
    with Fabric(scenario) as fabric:
        variables = {"root": str(root), "wireserver": fabric.wire_url,
                     "hostplugin": fabric.hostplugin_url}
        ctx = make_context(variables)
        ext.gather_extensions(ctx, inputs.goal_state(ctx))  # reads the manifest
        handler = ext.handlers_of(ext.stored_goal_state(ctx) or {})[0]
        assert handler.package_uris, "the manifest was not read"
        ext.download_package(ctx, handler)
        package = ext.package_path(ctx, handler.name, handler.version)
        assert package.read_bytes()[:2] == b"PK"
        assert proxy.seen == []  # WireServer and HostGAPlugin only
        through_plugin = [r for r in fabric.record.requests() if r["route"] == "artifact"]
        assert len(through_plugin) == 2  # the manifest, the package

        # The HostGAPlugin fails: the direct locations, through the proxy.
        fabric.set_hostplugin(False, status=503)
        package.unlink()
        ctx = make_context(variables)
        ext.download_package(ctx, handler)
        assert package.read_bytes()[:2] == b"PK"
        assert [method for method, _ in proxy.seen] == ["GET"]
        assert proxy.seen[0][1] == handler.package_uris[0]
        assert all("127.0.0.1" in url and "/machine" not in url for _, url in proxy.seen)
