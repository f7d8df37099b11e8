"""The platform documents the fabric renders, checked against the fixtures' shapes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from xml.etree import ElementTree

from fabric import default_scenario, parse_scenario, render_ovf
from fabric import documents as d
from fabric.keys import thumbprint

OVF = "{http://schemas.dmtf.org/ovf/environment/1}"
WA = "{http://schemas.microsoft.com/windowsazure}"
URLS = d.Urls("http://127.0.0.1:1001", "http://127.0.0.1:1002", "http://127.0.0.1:1003")


def paths(element: ElementTree.Element, prefix: str = "") -> set[str]:
    here = f"{prefix}/{element.tag}"
    out = {here}
    for child in element:
        out |= paths(child, here)
    return out


def test_ovf_has_the_platform_layout(fixtures: Path) -> None:
    ours = ElementTree.fromstring(render_ovf(default_scenario()))
    theirs = ElementTree.fromstring((fixtures / "walinuxagent/ovf-env.xml").read_text())
    assert paths(ours) == paths(theirs)  # same elements, same namespaces, same nesting


def test_ovf_values() -> None:
    s = default_scenario()
    root = ElementTree.fromstring(render_ovf(s))
    config = root.find(f"{WA}ProvisioningSection/{WA}LinuxProvisioningConfigurationSet")
    assert config is not None
    assert config.findtext(f"{WA}HostName") == "demo-vm"
    assert config.findtext(f"{WA}UserName") == "azureuser"
    assert config.findtext(f"{WA}UserPassword") == s.password
    assert config.findtext(f"{WA}DisableSshPasswordAuthentication") == "false"
    assert base64.b64decode(config.findtext(f"{WA}CustomData") or "").decode() == s.custom_data
    keys = config.findall(f"{WA}SSH/{WA}PublicKeys/{WA}PublicKey")
    assert keys[0].findtext(f"{WA}Value") == s.ssh_public_key(0)
    assert keys[0].findtext(f"{WA}Path") == "$HOME/azureuser/.ssh/authorized_keys"
    # By certificate: fingerprint and path only.
    assert keys[1].find(f"{WA}Value") is None
    assert keys[1].findtext(f"{WA}Fingerprint") == thumbprint(s.ssh_key_certificate(1))
    pair = config.find(f"{WA}SSH/{WA}KeyPairs/{WA}KeyPair")
    assert pair is not None and pair.findtext(f"{WA}Fingerprint") == thumbprint(s.key_pair_certificate(0))
    settings = root.find(f"{WA}PlatformSettingsSection/{WA}PlatformSettings")
    assert settings is not None and settings.findtext(f"{WA}ProvisionGuestAgent") == "true"


def test_ovf_leaves_out_what_is_not_given() -> None:
    root = ElementTree.fromstring(render_ovf(parse_scenario("username: a\nprovision_guest_agent: false\n")))
    config = root.find(f"{WA}ProvisioningSection/{WA}LinuxProvisioningConfigurationSet")
    assert config is not None
    for absent in ("UserPassword", "CustomData", "SSH"):
        assert config.find(f"{WA}{absent}") is None
    assert "<wa:ProvisionGuestAgent>false<" in render_ovf(parse_scenario("username: a\nprovision_guest_agent: false\n"))


def test_ovf_escapes_xml() -> None:
    text = render_ovf(parse_scenario("username: a\npassword: 'a<b&c'\n"))
    assert ElementTree.fromstring(text).iter(f"{WA}UserPassword").__next__().text == "a<b&c"


def test_goal_state_urls_point_at_the_fabric(fixtures: Path) -> None:
    s = default_scenario()
    root = ElementTree.fromstring(d.goal_state_xml(s, 3, URLS, True))
    theirs = ElementTree.fromstring((fixtures / "walinuxagent/wire/goal_state.xml").read_text())
    assert paths(root) - {"/GoalState/Machine/StopRolesDeadlineHint", "/GoalState/Machine/ExpectHealthReport"} == paths(theirs)
    assert root.findtext("Incarnation") == "3"
    config = root.find("Container/RoleInstanceList/RoleInstance/Configuration")
    assert config is not None
    for child in config:
        if child.tag != "ConfigName":
            assert (child.text or "").startswith(URLS.wire + "/machine/"), child.tag
            assert "incarnation=3" in (child.text or "")
    assert "<Certificates>" not in d.goal_state_xml(s, 3, URLS, False)


def test_hosting_env_and_shared_config_parse() -> None:
    s = default_scenario()
    env = ElementTree.fromstring(d.hosting_env_xml(s, 2))
    assert env.find("Incarnation").get("instance") == "demo-vm"  # type: ignore[union-attr]
    assert env.find("Role").get("name") == "demo-vm"  # type: ignore[union-attr]
    shared = ElementTree.fromstring(d.shared_config_xml(s, 2))
    assert shared.get("goalStateIncarnation") == "2"


def test_extensions_config_settings_and_urls() -> None:
    s = default_scenario()
    root = ElementTree.fromstring(d.extensions_config_xml(s, 4, URLS, {"Fabric.Demo.NoOp": ("THUMB", "CMS")}))
    plugin = root.find("Plugins/Plugin")
    assert plugin is not None and plugin.get("state") == "enabled"
    assert plugin.get("location") == d.manifest_url(URLS, s.extensions[0])
    runtime = root.find("PluginSettings/Plugin/RuntimeSettings")
    assert runtime is not None and runtime.get("seqNo") == "0"
    handler = json.loads(runtime.text or "")["runtimeSettings"][0]["handlerSettings"]
    assert handler == {"protectedSettingsCertThumbprint": "THUMB", "protectedSettings": "CMS",
                       "publicSettings": {"greeting": "hello"}}
    blob = root.find("StatusUploadBlob")
    assert blob is not None and blob.get("statusBlobType") == "BlockBlob"
    assert (blob.text or "").startswith(URLS.storage + "/status/")


def test_vm_settings_matches_extensions_config() -> None:
    s = default_scenario()
    settings = d.vm_settings(s, 4, URLS, {})
    assert settings["extensionGoalStatesSource"] == "FastTrack"
    goal = settings["extensionGoalStates"][0]
    assert (goal["name"], goal["version"], goal["settingsSeqNo"]) == ("Fabric.Demo.NoOp", "1.0.0", 0)
    assert json.loads(goal["settings"][0]["publicSettings"]) == {"greeting": "hello"}


def test_manifest_and_certificates_documents() -> None:
    manifest = ElementTree.fromstring(d.manifest_xml([("1.0.0", "http://x/p.zip")]))
    assert manifest.findtext("Plugins/Plugin/Version") == "1.0.0"
    assert manifest.findtext("Plugins/Plugin/Uris/Uri") == "http://x/p.zip"
    empty = ElementTree.fromstring(d.certificates_xml(1, None))
    assert empty.find("Data") is None and empty.find("Format") is None
    full = d.certificates_xml(1, b"x" * 200)
    data = ElementTree.fromstring(full).findtext("Data") or ""
    assert all(len(line) <= 64 for line in data.splitlines())
    assert base64.b64decode(data) == b"x" * 200


def test_imds_document_and_overrides() -> None:
    s = parse_scenario("username: a\nhostname: h\ncustom_data: hi\nimds: {compute: {zone: '2', osProfile: {computerName: other}}}\n")
    compute = d.imds_instance(s)["compute"]
    assert compute["vmId"] == s.vm_id and compute["name"] == "h"
    assert compute["osProfile"] == {"adminUsername": "a", "computerName": "other", "disablePasswordAuthentication": "false"}
    assert compute["zone"] == "2"
    assert base64.b64decode(compute["userData"]) == b"hi"


def test_parse_health_in_the_agents_format() -> None:
    body = (
        b'<?xml version="1.0" encoding="utf-8"?><Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        b' xmlns:xsd="http://www.w3.org/2001/XMLSchema"><GoalStateIncarnation>1</GoalStateIncarnation>'
        b"<Container><ContainerId>c</ContainerId><RoleInstanceList><Role><InstanceId>i</InstanceId>"
        b"<Health><State>NotReady</State><Details><SubStatus>ProvisioningFailed</SubStatus>"
        b"<Description>bad &amp; worse</Description></Details></Health></Role></RoleInstanceList>"
        b"</Container></Health>"
    )
    assert d.parse_health(body) == {"incarnation": "1", "container_id": "c", "instance_id": "i",
                                    "state": "NotReady", "substatus": "ProvisioningFailed",
                                    "description": "bad & worse"}


def test_rewrite_platform_urls(fixtures: Path) -> None:
    text = (fixtures / "walinuxagent/wire/goal_state.xml").read_text()
    out = d.rewrite_platform_urls(text, URLS)
    assert "168.63.129.16" not in out
    assert out == text.replace("http://168.63.129.16:80", URLS.wire)
    conf = (fixtures / "walinuxagent/wire/ext_conf.xml").read_text()
    out = d.rewrite_platform_urls(conf, URLS)
    assert "mock-goal-state/" not in out.replace("/_/mock-goal-state/", "")
    assert f"{URLS.storage}/_/test.blob.core.windows.net/vhds/" in out
    assert d.rewrite_platform_urls("<a>http://sas_url</a>", URLS) == f"<a>{URLS.storage}/_/sas_url</a>"
