"""The wire clients against the fabric emulator on 127.0.0.1: the full protocol flow,
fault bursts, a stale goal state, and the error after the retry budget.

The fabric never imports the agent's code, so what passes here is two independent
readings of PLATFORM.md agreeing over real HTTP. Sleeps are injected: no test waits
for a backoff.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from conf.config import default_config
from fabric import Fabric, default_scenario
from system.fs import FileSystem
from system.root import Root
from system.runner import Runner
from wire.blob import put_status_blob
from wire.certs import install_certificates
from wire.endpoint import discover_endpoint, remember_endpoint
from wire.errors import HttpStatusError, WireError
from wire.extensions_config import parse_manifest
from wire.hostplugin import HostPluginClient
from wire.http import HttpClient, RetryPolicy
from wire.imds import ImdsClient
from wire.reports import HealthReport
from wire.transport import ensure_transport_pair
from wire.wireserver import WireServerClient
from wire.x509 import ssh_public_key


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    with Fabric(default_scenario()) as running:
        yield running


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def wire_client(fabric: Fabric, sleeps: Sleeps, retry: RetryPolicy | None = None) -> WireServerClient:
    http = HttpClient(sleep=sleeps, timeout=10.0, retry=retry or RetryPolicy())
    return WireServerClient(fabric.wire_url, http=http, goal_state_delay=0.5)


def routes(fabric: Fabric, route: str) -> list[dict[str, object]]:
    return fabric.record.requests(route=route)


def test_full_flow(fabric: Fabric, sleeps: Sleeps, tmp_path: Path) -> None:
    root = Root(tmp_path)
    conf = default_config()
    fs = FileSystem(Runner(root=root))
    lib_dir = root / conf.required_path("Lib.Dir")

    # Discovery: the cached endpoint names the fabric's address; the port is the test's.
    remember_endpoint(fs, root, conf, "127.0.0.1")
    endpoint = discover_endpoint(root, conf, dhcp_sender=lambda *_: None)
    assert endpoint.address == "127.0.0.1" and "cache" in endpoint.source
    wire = WireServerClient(f"{endpoint.address}:{fabric.ports['wire']}",
                            http=HttpClient(sleep=sleeps, timeout=10.0))

    wire.check_protocol_version()
    pair = ensure_transport_pair(fs, lib_dir)
    documents = wire.goal_state_documents(pair)
    state = documents.goal_state
    assert state.incarnation == str(fabric.incarnation)
    assert state.role_instance_id
    assert documents.hosting_environment is not None
    assert documents.hosting_environment.vm_name
    assert documents.shared_config is not None
    assert documents.extensions_config is not None
    assert documents.certificates is not None

    # Certificates decrypted in-process into the temporary Lib.Dir.
    bundle = install_certificates(fs, lib_dir, documents.certificates, pair)
    delivered = set(fabric.goal_state_thumbprints())
    assert delivered and set(bundle.thumbprints) == delivered
    assert {p.stem for p in lib_dir.glob("*.crt")} == delivered
    keys = {p.stem for p in lib_dir.glob("*.prv")}
    assert keys and keys <= delivered
    for path in [*lib_dir.glob("*.crt"), *lib_dir.glob("*.prv")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(lib_dir.stat().st_mode) == 0o700
    for path in lib_dir.glob("*.crt"):
        assert ssh_public_key(path.read_bytes()).startswith(("ssh-rsa ", "ecdsa-", "ssh-ed25519 "))
    (certificates_call,) = fabric.record.certificates()
    assert certificates_call["cipher"] == "AES128_CBC"
    assert certificates_call["transport_subject"] == "CN=LinuxTransport"

    # Reports.
    wire.report_health(state, HealthReport.provisioning())
    wire.report_role_properties(state, {"CertificateThumbprint": sorted(delivered)[0]})
    wire.report_health(state, HealthReport.ready())
    assert fabric.record.wait_for_health("Ready", timeout=5)
    reports = fabric.record.health_reports()
    assert [(r["state"], r["substatus"]) for r in reports] == [
        ("NotReady", "Provisioning"), ("Ready", None)]
    assert reports[-1]["container_id"] == state.container_id
    assert reports[-1]["instance_id"] == state.role_instance_id
    assert reports[-1]["incarnation"] == state.incarnation
    (properties,) = fabric.record.role_properties()
    assert properties["properties"] == {"CertificateThumbprint": sorted(delivered)[0]}

    # The agent talked only to the fabric, with the protocol headers, and never retried.
    for request in fabric.record.requests(server="wire"):
        headers = request["headers"]
        assert isinstance(headers, dict)
        assert headers.get("x-ms-version") == "2012-11-30", request["path"]
        assert headers.get("x-ms-agent-name") == "WALinuxAgent"
    assert sleeps == []


def test_failed_provisioning_report(fabric: Fabric, sleeps: Sleeps) -> None:
    wire = wire_client(fabric, sleeps)
    state = wire.goal_state()
    wire.report_health(state, HealthReport.failed("useradd failed: <azureuser> & co"))
    (report,) = fabric.record.health_reports()
    assert (report["state"], report["substatus"]) == ("NotReady", "ProvisioningFailed")
    assert report["description"] == "useradd failed: <azureuser> & co"


def test_survives_bursts_of_500_503_429(fabric: Fabric, sleeps: Sleeps) -> None:
    fabric.inject("versions", 429, count=2)
    fabric.inject("goalstate", 500, count=2)
    fabric.inject("sharedconfig", 503, count=3)
    fabric.inject("extensionsconfig", 502, count=1)
    fabric.inject("health", 503, count=2)
    wire = wire_client(fabric, sleeps)
    wire.check_protocol_version()
    documents = wire.goal_state_documents()
    assert documents.shared_config is not None and documents.extensions_config is not None
    wire.report_health(documents.goal_state, HealthReport.ready())
    assert fabric.record.wait_for_health("Ready", timeout=5)
    statuses = [r["status"] for r in routes(fabric, "sharedconfig")]
    assert statuses == [503, 503, 503, 200]
    assert [r["status"] for r in routes(fabric, "versions")] == [429, 429, 200]
    # throttling waits the long fixed delay, errors back off from 1 s
    assert sleeps.count(15.0) == 2
    assert 1.0 in sleeps and 4.0 in sleeps


def test_dropped_connections_are_retried(fabric: Fabric, sleeps: Sleeps) -> None:
    fabric.inject("goalstate", drop=True, count=2)
    state = wire_client(fabric, sleeps).goal_state()
    assert state.role_instance_id and sleeps == [1.0, 2.0]


def test_stale_goal_state_is_refreshed(fabric: Fabric, sleeps: Sleeps) -> None:
    first = fabric.incarnation
    # The platform moves on while the agent reads incarnation N's documents: 410 Gone.
    fabric.inject("hostingenv", bump_incarnation=True)
    documents = wire_client(fabric, sleeps).goal_state_documents()
    assert documents.goal_state.incarnation == str(first + 1)
    assert [r["status"] for r in routes(fabric, "hostingenv")] == [410, 200]
    assert len(routes(fabric, "goalstate")) == 2


def test_clear_error_after_the_retry_budget(fabric: Fabric, sleeps: Sleeps) -> None:
    fabric.inject("goalstate", 503, count=100)
    wire = wire_client(fabric, sleeps, RetryPolicy(attempts=4))
    with pytest.raises(HttpStatusError) as caught:
        wire.goal_state()
    error = caught.value
    assert error.status == 503 and error.attempts == 4
    message = str(error)
    assert fabric.wire_url in message and "/machine/?comp=goalstate" in message
    assert "4 attempt(s)" in message and "HTTP 503" in message
    assert len(routes(fabric, "goalstate")) == 4
    assert sleeps == [1.0, 2.0, 4.0]


def test_throttling_budget_error(fabric: Fabric, sleeps: Sleeps) -> None:
    fabric.inject("health", 429, count=100)
    wire = wire_client(fabric, sleeps, RetryPolicy(throttle_attempts=3, throttle_delay=2.0))
    state = wire.goal_state()
    with pytest.raises(HttpStatusError, match="3 throttled.*HTTP 429"):
        wire.report_health(state, HealthReport.ready())
    assert fabric.record.health_reports() == []


def test_unreachable_endpoint_error(sleeps: Sleeps) -> None:
    with Fabric(default_scenario()) as stopped:
        url = stopped.wire_url
    wire = WireServerClient(url, http=HttpClient(sleep=sleeps, retry=RetryPolicy(attempts=3)))
    with pytest.raises(WireError, match="failed after 3 attempt.*connection error"):
        wire.versions()


def test_hostplugin_status_artifacts_and_vm_settings(fabric: Fabric, sleeps: Sleeps) -> None:
    wire = wire_client(fabric, sleeps)
    documents = wire.goal_state_documents()
    state = documents.goal_state
    config = documents.extensions_config
    assert config is not None and config.status_upload_blob
    hgap = HostPluginClient(fabric.hostplugin_url, container_id=state.container_id,
                            role_config_name=state.role_config_name,
                            http=HttpClient(sleep=sleeps, timeout=10.0))
    assert "2015-09-01" in hgap.versions()
    assert hgap.is_healthy()

    status = json.dumps({"version": "1.1", "aggregateStatus": {"guestAgentStatus": {
        "status": "Ready"}}}).encode()
    hgap.put_status(config.status_upload_blob, status, "BlockBlob")
    large = json.dumps({"version": "1.1", "padding": "x" * 1500}).encode()  # 4 pages
    hgap.put_status(config.status_upload_blob, large, "PageBlob")
    blobs = fabric.record.status_blobs()
    assert [b["blob_type"] for b in blobs][:1] == ["BlockBlob"]
    assert blobs[0]["via"] == "hostplugin"
    assert blobs[0]["status"]["aggregateStatus"]["guestAgentStatus"]["status"] == "Ready"
    assert blobs[-1]["blob_type"] == "PageBlob"
    assert blobs[-1]["status"] == json.loads(large)

    # The fallback: straight to storage, as when the HostGAPlugin is down.
    assert config.status_upload_blob.startswith("http://127.0.0.1:")
    put_status_blob(HttpClient(sleep=sleeps), config.status_upload_blob, large, "PageBlob")
    direct = fabric.record.status_blobs()[-1]
    assert (direct["via"], direct["blob_type"]) == ("direct", "PageBlob")
    assert direct["status"] == json.loads(large)

    plugin = config.plugins[0]
    assert plugin.location
    manifest = parse_manifest(hgap.fetch_artifact(plugin.location))
    entry = manifest.find(plugin.version)
    assert entry is not None and entry.uris
    package = hgap.fetch_artifact(entry.uris[0])
    assert package[:2] == b"PK"
    artifact_calls = routes(fabric, "artifact")
    assert all(r["headers"]["x-ms-containerid"] == state.container_id  # type: ignore[index]
               for r in artifact_calls)

    settings = hgap.vm_settings()
    if settings.status == "changed":
        assert settings.etag and settings.document
        assert hgap.vm_settings(settings.etag).status == "unchanged"
    else:
        assert settings.status == "unsupported"

    hgap.put_vm_agent_log(b"PK\x05\x06" + bytes(18))
    assert len(fabric.record.logs()) == 1


def test_imds(fabric: Fabric, sleeps: Sleeps) -> None:
    fabric.inject("imds", 500, count=2)
    metadata = ImdsClient(fabric.imds_url, http=HttpClient(sleep=sleeps)).instance()
    assert metadata.vm_id
    assert fabric.scenario is not None and metadata.name == fabric.scenario.hostname
    assert len(sleeps) == 2
