"""Every route of the fabric over real HTTP on 127.0.0.1: WireServer, HostGAPlugin, storage, IMDS."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509

from fabric import Fabric, default_scenario, parse_scenario
from fabric.certs import wrap64
from fabric.keys import thumbprint

WIRE = {"x-ms-version": "2012-11-30", "x-ms-agent-name": "fabric-test"}
TIMEOUT = 10


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    with Fabric(default_scenario()) as f:
        yield f


@pytest.fixture(scope="module")
def transport(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A transport pair and its header value (base64 DER without the PEM lines)."""
    if shutil.which("openssl") is None:
        pytest.skip("missing tool: openssl")
    tmp = tmp_path_factory.mktemp("transport")
    key, crt = tmp / "TransportPrivate.pem", tmp / "TransportCert.pem"
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-subj", "/CN=LinuxTransport", "-days", "730",
                    "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=60)
    header = "".join(line for line in crt.read_text().splitlines() if "-----" not in line)
    return key, crt, header


def get(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=TIMEOUT)


def goal_state_urls(fabric: Fabric) -> dict[str, str]:
    text = requests.get(f"{fabric.wire_url}/machine/?comp=goalstate", headers=WIRE, timeout=TIMEOUT).text
    return {tag: url.replace("&amp;", "&") for tag, url in re.findall(r"<(\w+)>(http[^<]+)</\1>", text)}


def health_body(state: str, substatus: str | None = None, description: str | None = None) -> bytes:
    details = f"<Details><SubStatus>{substatus}</SubStatus><Description>{description}</Description></Details>" if substatus else ""
    return (f'<?xml version="1.0" encoding="utf-8"?><Health><GoalStateIncarnation>1</GoalStateIncarnation>'
            f"<Container><ContainerId>c</ContainerId><RoleInstanceList><Role><InstanceId>i</InstanceId>"
            f"<Health><State>{state}</State>{details}</Health></Role></RoleInstanceList></Container></Health>").encode()


# --- WireServer -------------------------------------------------------------------------------


def test_versions_and_goal_state(fabric: Fabric) -> None:
    versions = get(f"{fabric.wire_url}/?comp=versions")  # the published agent sends no x-ms-version here
    assert versions.status_code == 200 and "<Preferred>\n    <Version>2012-11-30</Version>" in versions.text
    urls = goal_state_urls(fabric)
    assert set(urls) == {"HostingEnvironmentConfig", "SharedConfig", "ExtensionsConfig", "FullConfig", "Certificates"}
    for url in urls.values():
        assert url.startswith(fabric.wire_url + "/")
    for name in ("HostingEnvironmentConfig", "SharedConfig", "ExtensionsConfig", "FullConfig"):
        response = get(urls[name], **WIRE)
        assert response.status_code == 200, name
        assert fabric.bind in response.text or name != "ExtensionsConfig"
    recorded = fabric.record.requests(route="goalstate")[0]
    assert recorded["headers"]["x-ms-version"] == "2012-11-30"
    assert recorded["headers"]["x-ms-agent-name"] == "fabric-test"


def test_missing_x_ms_version_is_400(fabric: Fabric) -> None:
    assert get(f"{fabric.wire_url}/machine/?comp=goalstate").status_code == 400
    assert get(f"{fabric.wire_url}/machine/?comp=nothing", **WIRE).status_code == 404
    assert requests.post(f"{fabric.wire_url}/machine/?comp=goalstate", headers=WIRE, timeout=TIMEOUT).status_code == 405


def test_certificates_decrypt_with_the_transport_key(fabric: Fabric, transport: tuple[Path, Path, str], tmp_path: Path) -> None:
    key, crt, header = transport
    url = goal_state_urls(fabric)["Certificates"]
    assert get(url, **WIRE).status_code == 400  # no transport certificate
    response = get(url, **WIRE, **{"x-ms-cipher-name": "DES_EDE3_CBC", "x-ms-guest-agent-public-x509-cert": header})
    assert response.status_code == 200
    data = re.search(r"<Data>(.*)</Data>", response.text, re.S).group(1)  # type: ignore[union-attr]
    assert "<Format>Pkcs7BlobWithPfxContents</Format>" in response.text
    assert all(len(line) <= 64 for line in data.splitlines())
    (tmp_path / "c.der").write_bytes(base64.b64decode(data))
    decrypted = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "c.der"),
                                "-inkey", str(key), "-recip", str(crt)], capture_output=True, timeout=60)
    assert decrypted.returncode == 0, decrypted.stderr
    pem = subprocess.run(["openssl", "pkcs12", "-nodes", "-passin", "pass:"], input=decrypted.stdout,
                         capture_output=True, timeout=60)
    assert pem.returncode == 0, pem.stderr
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem.stdout, re.S)
    assert sorted(thumbprint(x509.load_pem_x509_certificate(b)) for b in blocks) == sorted(fabric.goal_state_thumbprints())
    assert fabric.record.certificates()[-1]["transport_subject"] == "CN=LinuxTransport"


def test_no_certificates_means_no_certificates_url() -> None:
    with Fabric(parse_scenario("username: a\n")) as fabric:
        assert "Certificates" not in goal_state_urls(fabric)


def test_health_role_properties_telemetry(fabric: Fabric) -> None:
    post = lambda comp, body: requests.post(f"{fabric.wire_url}/machine?comp={comp}", data=body,  # noqa: E731
                                            headers={**WIRE, "Content-Type": "text/xml;charset=utf-8"}, timeout=TIMEOUT)
    assert post("health", health_body("NotReady", "Provisioning", "Starting")).status_code == 200
    assert post("health", health_body("Ready")).status_code == 200
    assert post("health", b"<not xml").status_code == 400
    reports = fabric.record.health_reports()
    assert [(h["state"], h["substatus"], h["description"]) for h in reports] == [
        ("NotReady", "Provisioning", "Starting"), ("Ready", None, None)]
    assert reports[0]["incarnation"] == "1" and reports[0]["container_id"] == "c" and reports[0]["instance_id"] == "i"
    role = (b'<?xml version="1.0" encoding="utf-8"?><RoleProperties><Container><ContainerId>c</ContainerId>'
            b'<RoleInstances><RoleInstance><Id>i</Id><Properties><Property name="CertificateThumbprint" value="AB" />'
            b"</Properties></RoleInstance></RoleInstances></Container></RoleProperties>")
    assert post("roleProperties", role).status_code == 202
    assert fabric.record.role_properties()[0]["properties"] == {"CertificateThumbprint": "AB"}
    assert post("telemetrydata", b"<TelemetryData/>").status_code == 200
    assert post("telemetrydata", b"x" * 70000).status_code == 413
    assert fabric.record.telemetry()[0]["body"] == "<TelemetryData/>"
    assert fabric.record.wait_for_health("Ready", timeout=1)


# --- HostGAPlugin and storage -------------------------------------------------------------------------


def test_hostplugin_versions_health(fabric: Fabric) -> None:
    assert get(f"{fabric.hostplugin_url}/versions").status_code == 200
    assert get(f"{fabric.hostplugin_url}/health").status_code == 200
    assert get(f"{fabric.hostplugin_url}/nothing").status_code == 404


def test_extension_artifacts_through_hostplugin_and_direct(fabric: Fabric) -> None:
    conf = get(goal_state_urls(fabric)["ExtensionsConfig"], **WIRE).text
    location = re.search(r'<Plugin name="Fabric.Demo.NoOp" version="1.0.0" location="([^"]+)"', conf).group(1)  # type: ignore[union-attr]
    assert get(f"{fabric.hostplugin_url}/extensionArtifact").status_code == 400
    manifest = get(f"{fabric.hostplugin_url}/extensionArtifact", **{"x-ms-artifact-location": location})
    assert manifest.status_code == 200 and "<Version>1.0.0</Version>" in manifest.text
    package_url = re.search(r"<Uri>([^<]+)</Uri>", manifest.text).group(1)  # type: ignore[union-attr]
    package = get(f"{fabric.hostplugin_url}/extensionArtifact", **{"x-ms-artifact-location": package_url})
    direct = get(package_url)
    assert package.status_code == direct.status_code == 200 and package.content == direct.content
    archive = zipfile.ZipFile(io.BytesIO(package.content))
    handler = json.loads(archive.read("HandlerManifest.json"))[0]["handlerManifest"]
    assert handler["enableCommand"] == "bin/handler.sh enable"
    assert (archive.getinfo("bin/handler.sh").external_attr >> 16) & 0o111
    assert get(f"{fabric.hostplugin_url}/storage/packages/Nope__1.zip").status_code == 404


def test_package_directory_is_zipped_on_the_fly(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "HandlerManifest.json").write_text("[]")
    (pkg / "bin" / "run.sh").write_text("#!/bin/sh\n")
    (pkg / "bin" / "run.sh").chmod(0o755)
    (tmp_path / "s.yaml").write_text("username: a\nextensions:\n  - {name: My.Ext, version: 2.0.1, package: pkg}\n")
    with Fabric(tmp_path / "s.yaml") as fabric:
        response = get(f"{fabric.hostplugin_url}/storage/packages/My.Ext__2.0.1.zip")
        archive = zipfile.ZipFile(io.BytesIO(response.content))
        assert sorted(archive.namelist()) == ["HandlerManifest.json", "bin/run.sh"]
        assert (archive.getinfo("bin/run.sh").external_attr >> 16) & 0o777 == 0o755


def status_json(fabric: Fabric, request_uri: str, headers: dict[str, str], content: bytes | None) -> requests.Response:
    body: dict[str, object] = {"requestUri": request_uri,
                               "headers": [{"headerName": k, "headerValue": v} for k, v in headers.items()]}
    if content is not None:
        body["content"] = base64.b64encode(content).decode()
    return requests.put(f"{fabric.hostplugin_url}/status", data=json.dumps(body),
                        headers={"x-ms-version": "2015-09-01", "Content-type": "application/json"}, timeout=TIMEOUT)


def status_blob_url(fabric: Fabric) -> str:
    conf = get(goal_state_urls(fabric)["ExtensionsConfig"], **WIRE).text
    return re.search(r"<StatusUploadBlob[^>]*>([^<]+)<", conf).group(1).replace("&amp;", "&")  # type: ignore[union-attr]


def test_status_block_blob_through_hostplugin(fabric: Fabric) -> None:
    status = json.dumps({"version": "1.1", "aggregateStatus": {"guestAgentStatus": {"status": "Ready"}}}).encode()
    url = status_blob_url(fabric)
    assert status_json(fabric, url, {"x-ms-blob-type": "BlockBlob"}, status).status_code == 200
    blob = fabric.record.status_blobs()[-1]
    assert (blob["via"], blob["blob_type"]) == ("hostplugin", "BlockBlob")
    assert blob["status"]["aggregateStatus"]["guestAgentStatus"]["status"] == "Ready"
    assert get(url).content == status
    assert requests.put(f"{fabric.hostplugin_url}/status", data=b"{", timeout=TIMEOUT).status_code == 400


def test_status_page_blob_through_hostplugin(fabric: Fabric) -> None:
    status = json.dumps({"version": "1.1", "pages": True})
    size = (len(status) + 511) // 512 * 512
    url = status_blob_url(fabric)
    assert status_json(fabric, url, {"x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": str(size)}, None).status_code == 200
    page = status.ljust(size).encode()
    assert status_json(fabric, url + "&comp=page", {"x-ms-range": f"bytes=0-{size - 1}", "x-ms-page-write": "update"}, page).status_code == 200
    blob = fabric.record.status_blobs()[-1]
    assert (blob["via"], blob["blob_type"], blob["status"]) == ("hostplugin", "PageBlob", {"version": "1.1", "pages": True})


def test_status_direct_block_and_page_blob(fabric: Fabric) -> None:
    url = status_blob_url(fabric)
    put = lambda u, data, **h: requests.put(u, data=data, headers=h, timeout=TIMEOUT)  # noqa: E731
    assert put(url, b'{"direct": 1}').status_code == 400  # no x-ms-blob-type
    assert put(url, b'{"direct": 1}', **{"x-ms-blob-type": "BlockBlob"}).status_code == 201
    assert fabric.record.status_blobs()[-1]["status"] == {"direct": 1}
    assert put(url, b"", **{"x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": "1024"}).status_code == 201
    page = b'{"direct": 2}'.ljust(512, b"\0")
    assert put(url + "&comp=page", b"\0" * 512, **{"x-ms-range": "bytes=512-1023"}).status_code == 201
    assert put(url + "&comp=page", page, **{"x-ms-range": "bytes=0-511"}).status_code == 201
    assert put(url + "&comp=page", page, **{"x-ms-range": "bytes=0-100"}).status_code == 400
    assert put(url + "&comp=page", page, **{"x-ms-range": "bytes=1024-1535"}).status_code == 416
    last = fabric.record.status_blobs()[-1]
    assert (last["via"], last["blob_type"], last["status"]) == ("direct", "PageBlob", {"direct": 2})


def test_vm_agent_log(fabric: Fabric) -> None:
    response = requests.put(f"{fabric.hostplugin_url}/vmAgentLog", data=b"PK\x03\x04zip",
                            headers={"x-ms-version": "2015-09-01", "x-ms-containerid": "c"}, timeout=TIMEOUT)
    assert response.status_code == 200
    log = fabric.record.logs()[0]
    assert log["size"] == 7 and log["headers"]["x-ms-containerid"] == "c"
    assert base64.b64decode(log["content_base64"]) == b"PK\x03\x04zip"


def test_vm_settings_etag(fabric: Fabric) -> None:
    first = get(f"{fabric.hostplugin_url}/vmSettings")
    assert first.status_code == 200 and first.json()["extensionGoalStatesSource"] == "FastTrack"
    etag = first.headers["ETag"]
    assert get(f"{fabric.hostplugin_url}/vmSettings", **{"if-none-match": etag}).status_code == 304
    fabric.bump_incarnation(extensions={"Fabric.Demo.NoOp": {"public_settings": {"greeting": "bye"}}})
    changed = get(f"{fabric.hostplugin_url}/vmSettings", **{"if-none-match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    goal = changed.json()["extensionGoalStates"][0]
    assert goal["settingsSeqNo"] == 1 and json.loads(goal["settings"][0]["publicSettings"]) == {"greeting": "bye"}


def test_vm_settings_unsupported() -> None:
    with Fabric(parse_scenario("username: a\nvm_settings: false\n")) as fabric:
        assert get(f"{fabric.hostplugin_url}/vmSettings").status_code == 404


# --- IMDS -----------------------------------------------------------------------------------------------


def test_imds(fabric: Fabric) -> None:
    url = f"{fabric.imds_url}/metadata/instance?api-version=2021-02-01"
    assert get(url).status_code == 400  # no Metadata: true
    assert get(f"{fabric.imds_url}/metadata/instance", Metadata="true").status_code == 400  # no api-version
    document = get(url, Metadata="true").json()
    s = default_scenario()
    assert document["compute"]["vmId"] == s.vm_id
    assert document["compute"]["osProfile"]["adminUsername"] == "azureuser"
    assert document["compute"]["publicKeys"][0]["keyData"].startswith(s.ssh_public_key(0))
    assert base64.b64decode(document["compute"]["userData"]).decode() == s.custom_data
    compute = get(f"{fabric.imds_url}/metadata/instance/compute?api-version=2021-02-01", Metadata="true").json()
    assert compute == document["compute"]
    name = get(f"{fabric.imds_url}/metadata/instance/compute/name?api-version=2021-02-01&format=text", Metadata="true")
    assert name.text == "demo-vm"
    assert get(f"{fabric.imds_url}/metadata/instance/nope?api-version=1", Metadata="true").status_code == 404


# --- faults and incarnations ------------------------------------------------------------------------------


def test_status_fault_for_n_calls_after_skip(fabric: Fabric) -> None:
    fabric.inject("goalstate", 503, count=2, skip=1)
    codes = [get(f"{fabric.wire_url}/machine/?comp=goalstate", **WIRE).status_code for _ in range(4)]
    assert codes == [200, 503, 503, 200]
    assert [r["status"] for r in fabric.record.requests(route="goalstate")] == codes


@pytest.mark.parametrize("status", [500, 503, 429, 410, 403])
def test_each_status_can_be_injected(fabric: Fabric, status: int) -> None:
    fabric.inject("health", status)
    response = requests.post(f"{fabric.wire_url}/machine?comp=health", data=health_body("Ready"), headers=WIRE, timeout=TIMEOUT)
    assert response.status_code == status
    assert fabric.record.health_reports() == []  # a failed call is not a report


def test_dropped_connection(fabric: Fabric) -> None:
    fabric.inject("versions", drop=True)
    with pytest.raises(requests.ConnectionError):
        get(f"{fabric.wire_url}/?comp=versions")
    assert fabric.record.requests(route="versions")[0]["status"] is None
    assert get(f"{fabric.wire_url}/?comp=versions").status_code == 200


def test_delay_then_normal_answer(fabric: Fabric) -> None:
    fabric.inject("imds", delay=0.2)
    assert get(f"{fabric.imds_url}/metadata/instance?api-version=1", Metadata="true").status_code == 200


def test_stale_goal_state_after_a_bump(fabric: Fabric) -> None:
    urls = goal_state_urls(fabric)
    fabric.inject("extensionsconfig", bump_incarnation=True)
    assert get(urls["ExtensionsConfig"], **WIRE).status_code == 410  # the goal state moved under the agent
    fresh = goal_state_urls(fabric)
    assert "incarnation=2" in fresh["ExtensionsConfig"]
    assert get(fresh["ExtensionsConfig"], **WIRE).status_code == 200
    assert get(urls["SharedConfig"], **WIRE).status_code == 410


def test_bump_with_new_settings_and_certificates(fabric: Fabric, transport: tuple[Path, Path, str]) -> None:
    before = fabric.goal_state_thumbprints()
    assert fabric.bump_incarnation(extensions={"Fabric.Demo.NoOp": {"protected_settings": {"secret": "new"}},
                                               "Other.Ext": {"version": "3.0"}},
                                   add_certificates=["rotated"]) == 2
    urls = goal_state_urls(fabric)
    conf = get(urls["ExtensionsConfig"], **WIRE).text
    assert '<RuntimeSettings seqNo="1">' in conf and 'name="Other.Ext" version="3.0"' in conf
    after = fabric.goal_state_thumbprints()
    assert len(after) == len(before) + 1 and set(before) < set(after)
    response = get(urls["Certificates"], **WIRE, **{"x-ms-guest-agent-public-x509-cert": transport[2]})
    assert "<Incarnation>2</Incarnation>" in response.text
    assert fabric.record.certificates()[-1]["thumbprints"] == after


def test_faults_from_the_scenario() -> None:
    scenario = parse_scenario("username: a\nfaults:\n  - {route: versions, status: 500, count: 1}\n")
    with Fabric(scenario) as fabric:
        assert get(f"{fabric.wire_url}/?comp=versions").status_code == 500
        assert get(f"{fabric.wire_url}/?comp=versions").status_code == 200


def test_inject_refuses_an_unknown_route(fabric: Fabric) -> None:
    with pytest.raises(ValueError, match="unknown route"):
        fabric.inject("nowhere", 500)


# --- replay and record ---------------------------------------------------------------------------------------


def test_replay_fixture_documents_verbatim_but_addresses(fixtures: Path) -> None:
    wire = fixtures / "walinuxagent/wire"
    with Fabric(replay_dir=wire) as fabric:
        def rewritten(name: str) -> str:
            text = (wire / name).read_text()
            text = text.replace("http://168.63.129.16:80", fabric.wire_url)
            return re.sub(r"https?://(mock-goal-state|[\w.-]+\.blob\.core\.windows\.net|sas_url)",
                          lambda m: f"{fabric.hostplugin_url}/storage/_/{m.group(1)}", text)

        goal_state = get(f"{fabric.wire_url}/machine/?comp=goalstate", **WIRE).text
        assert goal_state == rewritten("goal_state.xml")
        urls = goal_state_urls(fabric)
        for tag, name in [("HostingEnvironmentConfig", "hosting_env.xml"), ("SharedConfig", "shared_config.xml"),
                          ("ExtensionsConfig", "ext_conf.xml"), ("Certificates", "certs.xml")]:
            assert get(urls[tag], **WIRE).text == rewritten(name), tag
        assert get(f"{fabric.wire_url}/?comp=versions").text == (wire / "version_info.xml").read_text()


def test_replay_other_extensions_config(fixtures: Path) -> None:
    wire = fixtures / "walinuxagent/wire"
    with Fabric(replay_dir=wire, replay_files={"extensionsconfig": "ext_conf_no_extensions-page_blob.xml"}) as fabric:
        text = get(goal_state_urls(fabric)["ExtensionsConfig"], **WIRE).text
        assert f'<StatusUploadBlob statusBlobType="PageBlob">{fabric.hostplugin_url}/storage/_/sas_url</StatusUploadBlob>' in text


def test_record_dump(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    with Fabric(default_scenario(), record_path=path) as fabric:
        requests.post(f"{fabric.wire_url}/machine?comp=health", data=health_body("Ready"), headers=WIRE, timeout=TIMEOUT)
        assert json.loads(path.read_text())["health"][0]["state"] == "Ready"  # written as reports arrive
        get(f"{fabric.wire_url}/?comp=versions")
    record = json.loads(path.read_text())  # and on stop
    assert [r["route"] for r in record["requests"]] == ["health", "versions"]
    assert record["requests"][0]["body"].startswith("<?xml")


def test_wrap64_helper() -> None:
    assert wrap64(b"a" * 100).splitlines()[0] == base64.b64encode(b"a" * 48).decode()


def test_zip_package_is_served_as_is(tmp_path: Path) -> None:
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as archive:
        archive.writestr("HandlerManifest.json", "[]")
    (tmp_path / "ext.zip").write_bytes(payload.getvalue())
    (tmp_path / "s.yaml").write_text("username: a\nextensions:\n  - {name: Z.Ext, package: ext.zip, state: uninstall}\n")
    with Fabric(str(tmp_path / "s.yaml")) as fabric:
        assert get(f"{fabric.hostplugin_url}/storage/packages/Z.Ext__1.0.0.zip").content == payload.getvalue()
        assert 'state="uninstall"' in get(goal_state_urls(fabric)["ExtensionsConfig"], **WIRE).text
