"""The control channel: what the fabric serves changes while it runs (fabric on 127.0.0.1, no root)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from defusedxml import ElementTree

from fabric import Fabric, default_scenario, parse_scenario
from fabric.cli import main as fabric_cli
from fabric.control import ControlError, parse_address, send

WIRE = {"x-ms-version": "2012-11-30"}
TIMEOUT = 10


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    with Fabric(default_scenario(), control="127.0.0.1:0") as f:
        yield f


def control(fabric: Fabric, **request: Any) -> dict[str, Any]:
    """One request over the HTTP control channel."""
    assert fabric.control_url is not None
    return send(fabric.control_url, request)


def goal_state(fabric: Fabric) -> tuple[int, dict[str, str]]:
    text = requests.get(f"{fabric.wire_url}/machine/?comp=goalstate", headers=WIRE, timeout=TIMEOUT).text
    incarnation = int(re.search(r"<Incarnation>(\d+)</Incarnation>", text).group(1))  # type: ignore[union-attr]
    urls = {tag: url.replace("&amp;", "&") for tag, url in re.findall(r"<(\w+)>(http[^<]+)</\1>", text)}
    return incarnation, urls


def extensions_config(fabric: Fabric) -> Any:
    _, urls = goal_state(fabric)
    response = requests.get(urls["ExtensionsConfig"], headers=WIRE, timeout=TIMEOUT)
    assert response.status_code == 200
    return ElementTree.fromstring(response.text)


def runtime_settings(plugin_settings: Any) -> dict[str, Any]:
    text = plugin_settings.find("RuntimeSettings").text
    settings: dict[str, Any] = json.loads(text)["runtimeSettings"][0]["handlerSettings"]
    return settings


def vm_settings(fabric: Fabric, etag: str | None = None) -> requests.Response:
    headers = {"If-None-Match": etag} if etag else {}
    return requests.get(f"{fabric.hostplugin_url}/vmSettings", headers=headers, timeout=TIMEOUT)


# --- incarnation ----------------------------------------------------------------------------------


def test_new_incarnation_over_http(fabric: Fabric) -> None:
    before, urls = goal_state(fabric)
    answer = control(fabric, action="new-incarnation")
    after, _ = goal_state(fabric)
    assert answer["ok"] and answer["result"] == after == before + 1
    assert answer["state"]["incarnation"] == after
    assert requests.get(urls["HostingEnvironmentConfig"], headers=WIRE, timeout=TIMEOUT).status_code == 410
    assert [p["what"] for p in fabric.record.published()] == ["start", "incarnation"]


def test_get_control_is_the_state(fabric: Fabric) -> None:
    assert fabric.control_url is not None
    state = requests.get(f"{fabric.control_url}/control", timeout=TIMEOUT).json()["state"]
    assert state["incarnation"] == 1 and state["hostname"] == "demo-vm" and state["vm_settings"] is True
    assert state["extensions"][0]["name"] == "Fabric.Demo.NoOp"
    record = requests.get(f"{fabric.control_url}/control/record", timeout=TIMEOUT).json()
    assert set(record) >= {"requests", "status_blobs", "published"}


# --- extensions -----------------------------------------------------------------------------------


def test_changed_settings_bump_seq_no(fabric: Fabric) -> None:
    control(fabric, action="set-extension", name="Fabric.Demo.NoOp", public_settings={"greeting": "bye"})
    plugin = extensions_config(fabric).find("PluginSettings/Plugin")
    assert plugin.find("RuntimeSettings").get("seqNo") == "1"
    assert runtime_settings(plugin)["publicSettings"] == {"greeting": "bye"}
    assert "protectedSettings" in runtime_settings(plugin)  # still there, encrypted


def test_version_state_seq_no_and_dependencies(fabric: Fabric) -> None:
    control(fabric, action="set-extension", name="Other.Handler", version="2.1.0",
            public_settings={"a": 1}, dependency_level=1)
    control(fabric, action="set-extension", name="Fabric.Demo.NoOp", version="1.1.0", state="disabled",
            seq_no=7, dependency_level=2, depends_on=["Other.Handler"])
    root = extensions_config(fabric)
    plugins = {p.get("name"): p for p in root.find("Plugins")}
    assert plugins["Fabric.Demo.NoOp"].get("version") == "1.1.0"
    assert plugins["Fabric.Demo.NoOp"].get("state") == "disabled"
    assert plugins["Other.Handler"].get("version") == "2.1.0"
    settings = {p.get("name"): p for p in root.find("PluginSettings")}
    noop = settings["Fabric.Demo.NoOp"]
    assert noop.find("RuntimeSettings").get("seqNo") == "7"
    depends = noop.find("DependsOn")
    assert depends.get("dependencyLevel") == "2"
    assert [d.get("handler") for d in depends] == ["Other.Handler"]
    # The manifest lists both versions; each package is served.
    manifest = requests.get(plugins["Fabric.Demo.NoOp"].get("location"), timeout=TIMEOUT).text
    assert "<Version>1.0.0</Version>" in manifest and "<Version>1.1.0</Version>" in manifest
    for uri in re.findall(r"<Uri>([^<]+)</Uri>", manifest):
        assert requests.get(uri, timeout=TIMEOUT).status_code == 200
    # vmSettings says the same.
    entries = {e["name"]: e for e in vm_settings(fabric).json()["extensionGoalStates"]}
    assert entries["Fabric.Demo.NoOp"]["dependsOn"] == [
        {"dependsOnExtension": [{"handler": "Other.Handler"}], "dependencyLevel": 2}]
    assert entries["Fabric.Demo.NoOp"]["settingsSeqNo"] == 7
    assert entries["Fabric.Demo.NoOp"]["state"] == "disabled"


def test_multi_config(fabric: Fabric) -> None:
    control(fabric, action="set-extension", name="Multi.Handler", multi_config=[
        {"name": "first", "seq_no": 2, "public_settings": {"n": 1}},
        {"name": "second", "seq_no": 5, "state": "disabled", "protected_settings": {"s": 2},
         "dependency_level": 1, "depends_on": ["Multi.Handler/first"]},
    ])
    root = extensions_config(fabric)
    assert root.find("RequiredFeatures/RequiredFeature/Name").text == "MultipleExtensionsPerHandler"
    plugin = [p for p in root.find("PluginSettings") if p.get("name") == "Multi.Handler"][0]
    configs = plugin.findall("ExtensionRuntimeSettings")
    assert [(c.get("name"), c.get("seqNo"), c.get("state")) for c in configs] == [
        ("first", "2", "enabled"), ("second", "5", "disabled")]
    second = json.loads(configs[1].text)["runtimeSettings"][0]["handlerSettings"]
    assert second["protectedSettingsCertThumbprint"] in fabric.goal_state_thumbprints()
    depends = plugin.find("DependsOn")
    assert (depends.get("name"), depends.get("dependencyLevel")) == ("second", "1")
    assert [(d.get("extension"), d.get("handler")) for d in depends] == [("first", "Multi.Handler")]
    document = vm_settings(fabric).json()
    assert document["requiredFeatures"] == [{"name": "MultipleExtensionsPerHandler"}]
    entry = [e for e in document["extensionGoalStates"] if e["name"] == "Multi.Handler"][0]
    assert entry["isMultiConfig"] is True
    assert [(s["extensionName"], s["seqNo"], s["extensionState"]) for s in entry["settings"]] == [
        ("first", 2, "enabled"), ("second", 5, "disabled")]
    assert entry["dependsOn"][0]["name"] == "second"


def test_remove_extension(fabric: Fabric) -> None:
    control(fabric, action="remove-extension", name="Fabric.Demo.NoOp")
    assert len(extensions_config(fabric).find("Plugins")) == 0
    assert vm_settings(fabric).json()["extensionGoalStates"] == []


# --- certificates and hostname ------------------------------------------------------------------


def test_add_and_remove_certificates(fabric: Fabric) -> None:
    before = fabric.goal_state_thumbprints()
    answer = control(fabric, action="add-certificate", name="rotated")
    assert answer["result"] == 2
    added = [t for t in answer["state"]["thumbprints"] if t not in before]
    assert len(added) == 1 and fabric.goal_state_thumbprints() == answer["state"]["thumbprints"]
    answer = control(fabric, action="remove-certificate", name="rotated")
    assert answer["result"] == 3 and answer["state"]["thumbprints"] == before


def test_a_certificate_in_use_stays() -> None:
    scenario = parse_scenario("""
username: u
certificates: [{name: ext-cert}]
extensions: [{name: A.B, protected_settings: {x: 1}, certificate: ext-cert}]
""")
    with Fabric(scenario, control="0") as fabric:
        with pytest.raises(ControlError, match="encrypts the protected settings of A.B"):
            control(fabric, action="remove-certificate", name="ext-cert")
        assert fabric.incarnation == 1


def test_set_hostname(fabric: Fabric) -> None:
    control(fabric, action="set-hostname", hostname="renamed-vm")
    _, urls = goal_state(fabric)
    hosting = requests.get(urls["HostingEnvironmentConfig"], headers=WIRE, timeout=TIMEOUT).text
    assert 'instance="renamed-vm"' in hosting
    name = requests.get(f"{fabric.imds_url}/metadata/instance/compute/name?api-version=2021-02-01&format=text",
                        headers={"Metadata": "true"}, timeout=TIMEOUT).text
    assert name == "renamed-vm"
    assert vm_settings(fabric).json()["inVMMetadata"]["vmName"] == "renamed-vm"


# --- FastTrack ------------------------------------------------------------------------------------


def test_fast_track_changes_only_vm_settings(fabric: Fabric) -> None:
    first = vm_settings(fabric)
    etag = first.headers["ETag"]
    assert vm_settings(fabric, etag).status_code == 304
    config_before = ElementTree.tostring(extensions_config(fabric))
    answer = control(fabric, action="set-extension", name="Fabric.Demo.NoOp", public_settings={"x": 2},
                     fast_track=True)
    assert answer["result"] == answer["state"]["etag"] != etag
    assert answer["state"]["incarnation"] == 1  # the WireServer's goal state did not move
    changed = vm_settings(fabric, etag)
    assert changed.status_code == 200 and changed.headers["ETag"] == answer["result"]
    document = changed.json()
    assert document["extensionsLastModifiedTickCount"] > first.json()["extensionsLastModifiedTickCount"]
    assert document["extensionGoalStatesSource"] == "FastTrack"
    goal = document["extensionGoalStates"][0]
    assert json.loads(goal["settings"][0]["publicSettings"]) == {"x": 2} and goal["settingsSeqNo"] == 1
    assert vm_settings(fabric, answer["result"]).status_code == 304
    assert ElementTree.tostring(extensions_config(fabric)) == config_before
    # A later incarnation is newer than the FastTrack goal state, and carries its change.
    control(fabric, action="new-incarnation")
    created = extensions_config(fabric).find("InVMGoalStateMetaData").get("createdOnTicks")
    assert int(created) > document["extensionsLastModifiedTickCount"]
    assert runtime_settings(extensions_config(fabric).find("PluginSettings/Plugin"))["publicSettings"] == {"x": 2}


def test_fast_track_republish_and_on_off(fabric: Fabric) -> None:
    etag = vm_settings(fabric).headers["ETag"]
    new = control(fabric, action="fast-track")["result"]
    assert new != etag and vm_settings(fabric, etag).status_code == 200
    control(fabric, action="vm-settings", enabled=False)
    assert vm_settings(fabric).status_code == 404
    control(fabric, action="vm-settings", enabled=True)
    assert vm_settings(fabric, new).status_code == 304


def test_fast_track_cannot_bring_a_certificate() -> None:
    with Fabric(parse_scenario("username: u\n"), control="0") as fabric:
        with pytest.raises(ControlError, match="not delivered yet"):
            control(fabric, action="set-extension", name="A.B", protected_settings={"x": 1}, fast_track=True)
        assert fabric.state()["extensions"] == []  # refused as a whole
        control(fabric, action="set-extension", name="A.B", protected_settings={"x": 1})
        control(fabric, action="set-extension", name="A.B", protected_settings={"x": 2}, fast_track=True)


# --- HostGAPlugin ---------------------------------------------------------------------------------


def test_hostplugin_disappears_and_returns(fabric: Fabric) -> None:
    control(fabric, action="hostplugin", available=False)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fabric.hostplugin_url}/versions", timeout=TIMEOUT)
    # The storage on the same port still takes the direct status upload.
    url = f"{fabric.hostplugin_url}/storage/status/vm.status"
    put = requests.put(url, data=b"{}", headers={"x-ms-blob-type": "BlockBlob"}, timeout=TIMEOUT)
    assert put.status_code == 201
    control(fabric, action="hostplugin", available=False, status=503)
    assert requests.get(f"{fabric.hostplugin_url}/vmSettings", timeout=TIMEOUT).status_code == 503
    control(fabric, action="hostplugin", available=True)
    assert requests.get(f"{fabric.hostplugin_url}/versions", timeout=TIMEOUT).status_code == 200
    assert fabric.record.requests(route="hgap.versions")[0]["status"] is None  # the dropped one


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("request_", "message"), [
    ({"action": "reboot"}, "unknown action 'reboot'"),
    ({"action": "set-extension"}, "missing name"),
    ({"action": "set-extension", "name": "A.B", "colour": "red"}, "unknown colour"),
    ({"action": "set-extension", "name": "A.B", "state": "on"}, "expected one of enabled, disabled, uninstall"),
    ({"action": "set-extension", "name": "A.B", "seq_no": "x"}, "expected an integer"),
    ({"action": "remove-extension", "name": "Nope"}, "no extension named 'Nope'"),
    ({"action": "vm-settings", "enabled": "yes"}, "must be true or false"),
    ({"action": "fault", "route": "nowhere"}, "unknown route"),
    ({"action": "add-certificate", "name": "bad", "cert_pem": "junk"}, "certificate 'bad'"),
])
def test_bad_requests_are_400_and_change_nothing(fabric: Fabric, request_: dict[str, Any], message: str) -> None:
    assert fabric.control_url is not None
    response = requests.post(f"{fabric.control_url}/control", json=request_, timeout=TIMEOUT)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert fabric.incarnation == 1 and len(fabric.state()["extensions"]) == 1


def test_body_must_be_json(fabric: Fabric) -> None:
    assert fabric.control_url is not None
    assert requests.post(f"{fabric.control_url}/control", data=b"{", timeout=TIMEOUT).status_code == 400


def test_control_binds_loopback_only_unless_allowed() -> None:
    assert parse_address("8081") == ("127.0.0.1", 8081)
    assert parse_address("[::1]:8081") == ("::1", 8081)
    with pytest.raises(ControlError, match="not a loopback address"):
        parse_address("192.0.2.1:8081")
    assert parse_address("192.0.2.1:8081", allow_remote=True) == ("192.0.2.1", 8081)
    with pytest.raises(ControlError, match="not a loopback address"):
        Fabric(control="0.0.0.0:0")


def test_python_methods_without_the_channel() -> None:
    with Fabric() as fabric:
        assert fabric.control_url is None
        assert fabric.control({"action": "new-incarnation"})["result"] == 2
        assert fabric.set_extension("Fabric.Demo.NoOp", public_settings={"k": 1}) == 3
        etag = fabric.set_extension("Fabric.Demo.NoOp", seq_no=9, fast_track=True)
        assert isinstance(etag, str) and fabric.goal_state.etag == etag
        assert fabric.set_hostname("other") == 4
        fabric.set_hostplugin(False)
        assert not fabric.hostplugin_available


def test_cli_control_client(fabric: Fabric, capsys: pytest.CaptureFixture[str]) -> None:
    assert fabric.control_url is not None
    assert fabric_cli(["control", fabric.control_url, "set-extension", "name=Fabric.Demo.NoOp",
                       'public_settings={"from": "cli"}', "state=disabled"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["result"] == 2 and answer["state"]["extensions"][0]["state"] == "disabled"
    port = fabric.control_url.rsplit(":", 1)[1]
    assert fabric_cli(["control", port, '{"action": "new-incarnation"}']) == 0
    assert json.loads(capsys.readouterr().out)["result"] == 3
    assert fabric_cli(["control", port, "remove-extension", "name=Nope"]) == 1
    assert "no extension named 'Nope'" in capsys.readouterr().err


# --- IMDS on the WireServer address --------------------------------------------------------------


def test_imds_on_the_wire_server_port(fabric: Fabric) -> None:
    url = f"{fabric.wire_url}/metadata/instance/compute?api-version=2021-02-01"
    compute = requests.get(url, headers={"Metadata": "true"}, timeout=TIMEOUT).json()
    assert compute["vmId"] == fabric.scenario.vm_id  # type: ignore[union-attr]
    assert requests.get(url, timeout=TIMEOUT).status_code == 400  # no Metadata header
    assert fabric.record.requests(route="imds", server="wire")


# --- status blobs ---------------------------------------------------------------------------------


def status_put(fabric: Fabric, blob: Any) -> requests.Response:
    content = (json.dumps(blob) if not isinstance(blob, bytes) else blob.decode()).encode()
    body = {"requestUri": f"{fabric.hostplugin_url}/storage/status/vm.status?sig=x",
            "headers": [{"headerName": "x-ms-blob-type", "headerValue": "BlockBlob"}],
            "content": base64.b64encode(content).decode()}
    return requests.put(f"{fabric.hostplugin_url}/status", json=body, timeout=TIMEOUT)


def test_status_blobs_are_recorded_with_their_problems(fabric: Fabric) -> None:
    from tests.unit.test_fabric_status_blob import good_blob

    assert status_put(fabric, good_blob()).status_code == 200
    broken = good_blob()
    del broken["guestOSInfo"]
    assert status_put(fabric, broken).status_code == 200  # the platform takes what it gets
    assert status_put(fabric, b"not json").status_code == 200
    blobs = fabric.record.status_blobs()
    assert [b["problems"] for b in blobs] == [[], ["guestOSInfo: missing"], ["the status blob is not JSON"]]
    assert blobs[0]["time"] <= blobs[1]["time"] <= blobs[2]["time"]
    assert fabric.record.status_blob_problems() == ["#1: guestOSInfo: missing", "#2: the status blob is not JSON"]
    assert fabric.record.wait_for_status_blobs(3, timeout=0)


# --- timeline -------------------------------------------------------------------------------------


def test_timeline_after_status_uploads_and_seconds() -> None:
    scenario = parse_scenario("""
username: u
extensions: [{name: A.B}]
timeline:
  - {after_status_uploads: 2, do: {action: set-extension, name: A.B, public_settings: {step: 1}}}
  - {after_seconds: 0.2, do: {action: set-hostname, hostname: later}}
""")
    with Fabric(scenario) as fabric:
        assert fabric.record.wait_for(lambda r: r.published()[-1].get("what") == "incarnation", timeout=10)
        assert fabric.scenario is not None and fabric.scenario.hostname == "later"
        assert fabric.incarnation == 2
        for _ in range(2):
            status_put(fabric, {})
        assert fabric.record.wait_for(lambda r: len(r.published()) == 3, timeout=10)
        assert fabric.incarnation == 3
        assert fabric.scenario.extensions[0].public_settings == {"step": 1}


@pytest.mark.parametrize(("step", "message"), [
    ("{do: {action: new-incarnation}}", "give exactly one of after_seconds and after_status_uploads"),
    ("{after_seconds: 1, after_status_uploads: 1, do: {action: new-incarnation}}", "exactly one"),
    ("{after_seconds: 1, do: {action: explode}}", "unknown action 'explode'"),
])
def test_timeline_errors_name_the_step(step: str, message: str) -> None:
    from fabric import ScenarioError

    with pytest.raises(ScenarioError, match=message) as error:
        parse_scenario(f"username: u\ntimeline:\n  - {step}\n")
    assert error.value.line == 3
