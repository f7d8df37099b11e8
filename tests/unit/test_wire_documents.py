"""WireServer documents parsed from every fixture, reports rendered, hostile XML refused."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.fixtures import FIXTURES
from wire import decode_text
from wire.documents import parse_goal_state, parse_versions
from wire.errors import DocumentError
from wire.extensions_config import (
    is_on_hold,
    parse_artifacts_profile,
    parse_extensions_config,
    parse_manifest,
)
from wire.reports import HealthReport, health_report_xml, role_properties_xml
from wire.subdocuments import parse_certificate_file, parse_hosting_environment, parse_shared_config

WIRE = FIXTURES / "walinuxagent" / "wire"
HOSTGAPLUGIN = FIXTURES / "walinuxagent" / "hostgaplugin"


def read(path: Path) -> bytes:
    return path.read_bytes()


# -- versions and goal state ----------------------------------------------------------------

def test_versions_fixture_accepts_2012_11_30() -> None:
    versions = parse_versions(read(WIRE / "version_info.xml"))
    assert versions.preferred == "2012-11-30"
    assert versions.supported == ("2010-12-15", "2010-28-10")
    assert versions.accepts("2012-11-30")
    assert not versions.accepts("2099-01-01")


def test_versions_without_any_version_is_named() -> None:
    with pytest.raises(DocumentError, match="Versions.*Preferred/Version"):
        parse_versions(b"<Versions><Preferred/></Versions>")


def test_goal_state_fixture() -> None:
    state = parse_goal_state(read(WIRE / "goal_state.xml"))
    assert state.incarnation == "1"
    assert state.container_id == "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2"
    assert state.role_instance_id == "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0"
    assert state.role_config_name is not None and state.role_config_name.endswith("_canary.1.xml")
    assert state.hosting_environment_url is not None
    assert "type=hostingEnvironmentConfig&incarnation=1" in state.hosting_environment_url
    assert state.shared_config_url and "type=sharedConfig" in state.shared_config_url
    assert state.extensions_config_url and "type=extensionsConfig" in state.extensions_config_url
    assert state.full_config_url and "type=fullConfig" in state.full_config_url
    assert state.certificates_url and "comp=certificates" in state.certificates_url
    assert state.expected_state == "Started"
    assert state.remote_access_url is None


def test_goal_state_without_certificates() -> None:
    state = parse_goal_state(read(WIRE / "goal_state_no_certs.xml"))
    assert state.certificates_url is None
    assert state.extensions_config_url is not None


def test_goal_state_without_extensions() -> None:
    state = parse_goal_state(read(WIRE / "goal_state_no_ext.xml"))
    assert state.extensions_config_url is None
    assert state.role_instance_id is not None


def test_goal_state_without_role_instance_has_none() -> None:
    state = parse_goal_state(read(WIRE / "goal_state_noop.xml"))
    assert state.role_instance_id is None
    assert state.hosting_environment_url is None


def test_goal_state_remote_access() -> None:
    state = parse_goal_state(read(WIRE / "goal_state_remote_access.xml"))
    assert state.remote_access_url == "http://168.63.129.16:80/remoteaccessinfouri/"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("walinuxagent/**/*goal_state*.xml")) +
                         sorted(FIXTURES.glob("walinuxagent/**/GoalState*.xml")),
                         ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_goal_state_fixture_parses(path: Path) -> None:
    state = parse_goal_state(read(path))
    assert state.incarnation.isdigit()
    assert state.container_id


def test_goal_state_missing_container_id_is_named() -> None:
    text = read(WIRE / "goal_state.xml").replace(
        b"<ContainerId>c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2</ContainerId>", b"")
    with pytest.raises(DocumentError, match="GoalState: required field Container/ContainerId"):
        parse_goal_state(text)


def test_goal_state_bad_incarnation_is_named() -> None:
    text = read(WIRE / "goal_state.xml").replace(b"<Incarnation>1<", b"<Incarnation>x1<")
    with pytest.raises(DocumentError, match="Incarnation is 'x1'"):
        parse_goal_state(text)


def test_goal_state_wrong_root_is_named() -> None:
    with pytest.raises(DocumentError, match="GoalState: root element is <Versions>"):
        parse_goal_state(read(WIRE / "version_info.xml"))


# -- hosting environment, shared config -----------------------------------------------------

def test_hosting_environment_fixture() -> None:
    config = parse_hosting_environment(read(WIRE / "hosting_env.xml"))
    assert config.vm_name == "MachineRole_IN_0"
    assert config.role_name == "MachineRole"
    assert config.deployment_name == "db00a7755a5e4e8a8fe4b19bc3b330c3"


def test_hosting_environment_missing_incarnation_is_named() -> None:
    text = b'<HostingEnvironmentConfig><Deployment name="d"/></HostingEnvironmentConfig>'
    with pytest.raises(DocumentError,
                       match="HostingEnvironmentConfig: required element Incarnation"):
        parse_hosting_environment(text)


def test_hosting_environment_without_instance_is_named() -> None:
    text = b'<HostingEnvironmentConfig><Incarnation number="1"/></HostingEnvironmentConfig>'
    with pytest.raises(DocumentError, match="Incarnation has no instance attribute"):
        parse_hosting_environment(text)


SEQUENCES = FIXTURES / "walinuxagent"


@pytest.mark.parametrize("path", sorted(SEQUENCES.glob("*/**/HostingEnvironmentConfig*.xml")),
                         ids=lambda p: str(p.relative_to(FIXTURES)))
def test_modern_hosting_environment_has_only_the_vm_name(path: Path) -> None:
    config = parse_hosting_environment(read(path))
    assert config.vm_name == "_test-vm"
    assert config.role_name is None and config.deployment_name is None


@pytest.mark.parametrize("path", sorted(SEQUENCES.glob("*/**/SharedConfig*.xml")),
                         ids=lambda p: str(p.relative_to(FIXTURES)))
def test_sequence_shared_configs(path: Path) -> None:
    assert [i.id for i in parse_shared_config(read(path)).instances] == ["_test-vm"]


def test_shared_config_fixture() -> None:
    config = parse_shared_config(read(WIRE / "shared_config.xml"))
    assert config.deployment_name == "db00a7755a5e4e8a8fe4b19bc3b330c3"
    assert config.role_name == "MachineRole"
    assert [(i.id, i.address) for i in config.instances] == [("MachineRole_IN_0", "10.115.153.75")]
    assert config.rdma is None
    assert "<LoadBalancerSettings" in config.xml


def test_shared_config_rdma_addresses() -> None:
    text = (b'<SharedConfig><Instances><Instance id="i0" address="10.0.0.4" '
            b'rdmaIPv4Address="172.16.1.4" rdmaMacAddress="00155D33FF1D"/></Instances>'
            b"</SharedConfig>")
    rdma = parse_shared_config(text).rdma
    assert rdma is not None
    assert rdma.rdma_ipv4_address == "172.16.1.4"
    assert rdma.rdma_mac_address == "00:15:5D:33:FF:1D"


# -- certificates document ------------------------------------------------------------------

def test_certificate_file_fixture() -> None:
    document = parse_certificate_file(read(WIRE / "certs.xml"))
    assert document.format == "Pkcs7BlobWithPfxContents"
    assert document.is_pfx
    assert document.data is not None and document.data.startswith("MIIOgwYJKoZIhvcNAQcDoIIO")
    assert document.incarnation == "1"


def test_certificate_file_other_formats() -> None:
    not_pfx = parse_certificate_file(read(WIRE / "certs_format_not_pfx.xml"))
    assert not_pfx.format == "CertificatesNonPfxPackage" and not not_pfx.is_pfx
    unnamed = parse_certificate_file(read(WIRE / "certs_no_format_specified.xml"))
    assert unnamed.format is None and unnamed.is_pfx  # an empty Format is the PFX blob
    empty = parse_certificate_file(b"<CertificateFile><Format>Pkcs7BlobWithPfxContents</Format>"
                                   b"</CertificateFile>")
    assert empty.data is None


# -- extensions config ----------------------------------------------------------------------

EXT_CONFS = sorted([*WIRE.glob("ext_conf*.xml"), *(WIRE / "multi-config").glob("*.xml"),
                    *(WIRE / "invalid_config").glob("*.xml"), *HOSTGAPLUGIN.glob("ext_conf*.xml"),
                    *FIXTURES.glob("walinuxagent/*/**/ExtensionsConfig*.xml")])


@pytest.mark.parametrize("path", EXT_CONFS, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_extensions_config_fixture_parses(path: Path) -> None:
    config = parse_extensions_config(read(path))
    assert config.incarnation is not None
    for plugin in config.plugins:
        assert plugin.name and plugin.version
        assert plugin.state in ("enabled", "disabled", "uninstall")
        if plugin.invalid_reason is None:
            for settings in plugin.settings:
                assert settings.seq_no >= 0
    if "invalid_config" in path.parts:
        assert any(p.invalid_reason for p in config.plugins), "invalid fixture not flagged"


def test_extensions_config_single_plugin() -> None:
    config = parse_extensions_config(read(WIRE / "ext_conf.xml"))
    assert config.incarnation == "9"
    assert [f.name for f in config.ga_families] == ["Prod", "Test"]
    prod = config.ga_family("prod")
    assert prod is not None and prod.uris == ("http://mock-goal-state/manifest_of_ga.xml",)
    (plugin,) = config.plugins
    assert plugin.name == "OSTCExtensions.ExampleHandlerLinux"
    assert plugin.version == "1.0.0"
    assert plugin.state == "enabled"
    assert plugin.auto_upgrade is False and plugin.is_json is True
    assert plugin.location and plugin.location.endswith("asiaeast_manifest.xml")
    assert plugin.failover_location and "hknprdstr04" in plugin.failover_location
    assert plugin.encoded_signature and plugin.encoded_signature.startswith("MIInEAYJ")
    assert plugin.manifest_uris == (plugin.location, plugin.failover_location)
    assert not plugin.is_multi_config and plugin.invalid_reason is None
    (settings,) = plugin.settings
    assert settings.name is None and settings.seq_no == 0
    assert settings.protected_settings_cert_thumbprint == "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9"
    assert settings.protected_settings == "MIICWgYJK"
    assert settings.public_settings == {"foo": "bar"}
    assert config.status_blob_type == "BlockBlob"
    assert config.status_upload_blob and "sig=hfRh7gzUE7sUtYwke78IOlZOrTRCYvkec4hGZ9zZzXo" in (
        config.status_upload_blob)
    assert config.in_svd_seq_no == "10"


def test_extensions_config_additional_locations() -> None:
    (plugin,) = parse_extensions_config(read(WIRE / "ext_conf_additional_locations.xml")).plugins
    assert plugin.manifest_uris == (
        "http://mock-goal-state/location/1/manifest.xml",
        "http://mock-goal-state/failoverlocation/2/manifest.xml",
        "http://mock-goal-state/additionalLocation/3/manifest.xml",
        "http://mock-goal-state/additionalLocation/4/manifest.xml")


def test_extensions_config_dependencies() -> None:
    plugins = parse_extensions_config(read(WIRE / "ext_conf_sequencing.xml")).plugins
    levels = {p.name: p.dependency_level for p in plugins}
    assert levels == {"OSTCExtensions.ExampleHandlerLinux": 2,
                      "OSTCExtensions.OtherExampleHandlerLinux": 1}
    first = plugins[0].settings[0]
    assert first.depends_on[0].handler == "OSTCExtensions.OtherExampleHandlerLinux"


def test_extensions_config_multi_config_with_dependencies() -> None:
    config = parse_extensions_config(
        read(WIRE / "multi-config" / "ext_conf_with_multi_config_dependencies.xml"))
    handler = config.plugins[0]
    assert handler.is_multi_config
    by_name = {s.name: s for s in handler.settings}
    assert set(by_name) == {"firstExtension", "secondExtension", "thirdExtension"}
    assert by_name["firstExtension"].seq_no == 2
    assert by_name["thirdExtension"].seq_no == 1
    assert by_name["secondExtension"].dependency_level == 2
    assert by_name["thirdExtension"].dependency_level == 3
    assert by_name["firstExtension"].dependency_level == 0
    assert ("OSTCExtensions.ExampleHandlerLinux", "firstExtension") in [
        (d.handler, d.extension) for d in by_name["thirdExtension"].depends_on]
    assert by_name["firstExtension"].public_settings == {"message": "Enabling firstExtension"}
    powershell = config.plugins[1]
    assert not powershell.is_multi_config and powershell.dependency_level == 1
    assert config.in_vm_artifacts_profile_blob and ".vmSettings?" in (
        config.in_vm_artifacts_profile_blob)


def test_extensions_config_disabled_multi_config_states() -> None:
    config = parse_extensions_config(
        read(WIRE / "multi-config" / "ext_conf_mc_disabled_extensions.xml"))
    states = {s.name: s.state for s in config.plugins[0].settings}
    assert "disabled" in states.values() or "uninstall" in states.values()


@pytest.mark.parametrize(("name", "reason"), [
    ("ext_conf_multiple_depends_on_for_single_handler.xml", "more than one DependsOn"),
    ("ext_conf_multiple_runtime_settings_same_plugin.xml", "2 RuntimeSettings"),
    ("ext_conf_multiple_settings_for_same_handler.xml", "2 PluginSettings"),
    ("ext_conf_plugin_settings_version_mismatch.xml", "not the requested 1.0.0"),
    ("ext_conf_single_and_multi_config_settings_same_plugin.xml", "both RuntimeSettings"),
])
def test_invalid_handler_settings_are_flagged_not_fatal(name: str, reason: str) -> None:
    config = parse_extensions_config(read(WIRE / "invalid_config" / name))
    flagged = [p for p in config.plugins if p.invalid_reason]
    assert flagged and reason in (flagged[0].invalid_reason or "")
    assert flagged[0].settings == ()


def test_invalid_handler_does_not_spoil_valid_one() -> None:
    plugins = parse_extensions_config(read(WIRE / "ext_conf_invalid_and_valid_handlers.xml")).plugins
    assert plugins[0].invalid_reason is not None
    assert plugins[1].invalid_reason is None and len(plugins[1].settings) == 1


def test_extensions_config_settings_names_match_case_insensitively() -> None:
    plugins = parse_extensions_config(read(WIRE / "ext_conf_settings_case_mismatch.xml")).plugins
    assert all(len(p.settings) == 1 for p in plugins)


def test_extensions_config_page_blob_and_no_plugins() -> None:
    config = parse_extensions_config(read(WIRE / "ext_conf_no_extensions-page_blob.xml"))
    assert config.plugins == ()
    assert config.status_blob_type == "PageBlob"
    assert config.status_upload_blob == "http://sas_url"


def test_extensions_config_invalid_blob_type_defaults_to_block_blob() -> None:
    config = parse_extensions_config(read(HOSTGAPLUGIN / "ext_conf-invalid_blob_type.xml"))
    assert config.status_blob_type == "BlockBlob"


def test_extensions_config_rsm_family_and_required_features() -> None:
    family = parse_extensions_config(read(WIRE / "ext_conf_rsm_version.xml")).ga_family("Prod")
    assert family is not None
    assert (family.version, family.is_version_from_rsm,
            family.is_vm_enabled_for_rsm_upgrades) == ("9.9.9.10", True, True)
    features = parse_extensions_config(read(WIRE / "ext_conf_required_features.xml"))
    assert features.required_features == (("TestRequiredFeature1", None),
                                          ("TestRequiredFeature2", None),
                                          ("TestRequiredFeature3", "3.0"))


def test_extensions_config_empty_artifacts_profile_blob_is_none() -> None:
    config = parse_extensions_config(read(WIRE / "ext_conf_in_vm_empty_artifacts_profile.xml"))
    assert config.in_vm_artifacts_profile_blob is None


def test_extensions_config_no_settings_and_no_public() -> None:
    (plugin,) = parse_extensions_config(read(WIRE / "ext_conf_no_settings.xml")).plugins
    assert plugin.settings == ()
    (plugin,) = parse_extensions_config(read(WIRE / "ext_conf_no_public.xml")).plugins
    assert plugin.settings[0].public_settings is None
    assert plugin.settings[0].protected_settings == "MIICWgYJK"


def test_extensions_config_bad_state_is_named() -> None:
    with pytest.raises(DocumentError, match="Plugin X has state='broken'"):
        parse_extensions_config(b'<Extensions><Plugins><Plugin name="X" version="1" '
                                b'state="broken"/></Plugins></Extensions>')


def test_extensions_config_settings_not_json_flags_the_handler() -> None:
    config = parse_extensions_config(
        b'<Extensions><Plugins><Plugin name="X" version="1"/></Plugins><PluginSettings>'
        b'<Plugin name="X" version="1"><RuntimeSettings seqNo="3">{oops</RuntimeSettings>'
        b"</Plugin></PluginSettings></Extensions>")
    assert "not JSON" in (config.plugins[0].invalid_reason or "")


def test_artifacts_profile() -> None:
    profile = parse_artifacts_profile((WIRE / "in_vm_artifacts_profile.json").read_text())
    assert isinstance(is_on_hold(profile), bool)
    assert is_on_hold({"onHold": True}) and is_on_hold({"onHold": "True"})
    assert not is_on_hold({})
    with pytest.raises(DocumentError, match="InVMArtifactsProfile"):
        parse_artifacts_profile("[1]")


# -- manifests ------------------------------------------------------------------------------

MANIFESTS = sorted(p for p in WIRE.glob("*manifest*.xml") if not p.name.startswith("ext_conf"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_fixture_parses(path: Path) -> None:
    manifest = parse_manifest(read(path))
    assert manifest.versions


def test_manifest_fixture() -> None:
    manifest = parse_manifest(read(WIRE / "manifest.xml"))
    public = [v.version for v in manifest.versions if not v.internal]
    internal = [v.version for v in manifest.versions if v.internal]
    assert public[:3] == ["1.0.0", "1.1.0", "1.1.1"] and "4.1.0.0" in public
    assert internal == ["1.3.0", "2.3.0", "2.4.0"]
    entry = manifest.find("1.0.0")
    assert entry is not None
    assert entry.uris == ("http://mock-goal-state/foo.bar/zar/OSTCExtensions.ExampleHandlerLinux__1.0.0",)
    found = manifest.find("2.1.0")
    assert found is not None and found.disallow_major_version_upgrade


def test_manifest_version_without_number_is_named() -> None:
    with pytest.raises(DocumentError, match="PluginVersionManifest: <Plugin> has no Version"):
        parse_manifest(b"<PluginVersionManifest><Plugins><Plugin><Uris/></Plugin></Plugins>"
                       b"</PluginVersionManifest>")


# -- hostile input --------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<GoalState><Incarnation>&lol2;</Incarnation></GoalState>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY ext SYSTEM "file:///etc/passwd">]>
<GoalState><Incarnation>&ext;</Incarnation></GoalState>"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY,
                                  b'<!DOCTYPE GoalState><GoalState/>'])
def test_dtd_and_entities_are_refused(text: bytes) -> None:
    with pytest.raises(DocumentError, match="GoalState: refused"):
        parse_goal_state(text)


def test_not_xml_is_named() -> None:
    with pytest.raises(DocumentError, match="ExtensionsConfig: not well-formed XML"):
        parse_extensions_config(b"<Extensions><Plugins>")


def test_huge_document_is_refused_before_parsing() -> None:
    text = b"<GoalState>" + b" " * (17 * 1024 * 1024) + b"</GoalState>"
    with pytest.raises(DocumentError, match="larger than"):
        parse_goal_state(text)


# -- reports --------------------------------------------------------------------------------

def _health(xml: str) -> ET.Element:
    assert xml.startswith('<?xml version="1.0" encoding="utf-8"?>')
    return ET.fromstring(xml.split("?>", 1)[1])


def test_ready_report() -> None:
    root = _health(health_report_xml("3", "cid", "iid", HealthReport.ready()))
    assert root.tag == "Health"
    assert root.findtext("GoalStateIncarnation") == "3"
    assert root.findtext("Container/ContainerId") == "cid"
    role = root.find("Container/RoleInstanceList/Role")
    assert role is not None
    assert role.findtext("InstanceId") == "iid"
    assert role.findtext("Health/State") == "Ready"
    assert role.find("Health/Details") is None


def test_provisioning_report() -> None:
    root = _health(health_report_xml("1", "c", "i", HealthReport.provisioning("Starting")))
    assert root.findtext(".//Health/State") == "NotReady"
    assert root.findtext(".//Details/SubStatus") == "Provisioning"
    assert root.findtext(".//Details/Description") == "Starting"


def test_failed_report_escapes_and_bounds_the_description() -> None:
    reason = "useradd <azure&user> failed: \"bad\" 'name' " + "é" * 5000
    xml = health_report_xml("1", "c", "i", HealthReport.failed(reason))
    root = _health(xml)
    assert root.findtext(".//Details/SubStatus") == "ProvisioningFailed"
    description = root.findtext(".//Details/Description") or ""
    assert description.startswith("useradd <azure&user> failed")
    escaped = xml.split("<Description>")[1].split("</Description>")[0]
    assert len(escaped.encode()) <= 4096
    assert "&lt;azure&amp;user&gt;" in escaped


def test_role_properties_report() -> None:
    xml = role_properties_xml("cid", "iid", {"CertificateThumbprint": "AB\"CD"})
    root = ET.fromstring(xml.split("?>", 1)[1])
    assert root.tag == "RoleProperties"
    assert root.findtext("Container/ContainerId") == "cid"
    assert root.findtext("Container/RoleInstances/RoleInstance/Id") == "iid"
    prop = root.find(".//Properties/Property")
    assert prop is not None
    assert prop.attrib == {"name": "CertificateThumbprint", "value": 'AB"CD'}


@pytest.mark.parametrize("data", [b"<a>\xc3\xa9</a>", b"\xef\xbb\xbf<a>\xc3\xa9</a>",
                                  b"<a>\xff\xef\xbb\xbf</a>", b"", b"\xef\xbb\xbf"])
def test_platform_text_decodes_as_utf_8_sig(data: bytes) -> None:
    # A BOM is dropped only at the start; bad bytes become U+FFFD, as the codec does.
    assert decode_text(data) == data.decode("utf-8-sig", errors="replace")


# What XML 1.0 allows: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF].
_NOT_XML_1_0 = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\ud800", "\udcff",
                "\ufffe", "\uffff"]


def test_every_character_outside_xml_1_0_and_only_those_is_replaced() -> None:
    """Checked over every code point against the Char production itself."""
    from wire.reports import REPLACEMENT, xml_chars

    def allowed(code: int) -> bool:
        return (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
                or 0x10000 <= code <= 0x10FFFF)

    every = "".join(map(chr, range(0x110000)))
    expected = "".join(char if allowed(ord(char)) else REPLACEMENT for char in every)
    assert xml_chars(every) == expected


def test_failed_report_with_control_characters_is_valid_xml_1_0() -> None:
    """A custom-data script's stderr with ANSI colours and stray bytes (surrogateescape)."""
    reason = ("custom data failed: \x1b[31merror\x1b[0m\tat line 2\r\nbad byte \udcff "
              + "".join(_NOT_XML_1_0) + " end \U0001f600")
    body = health_report_xml("1", "c", "i", HealthReport.failed(reason)).encode()
    # The platform's parser (expat) rejects the whole report on one invalid character.
    description = _health(body.decode()).findtext(".//Details/Description") or ""
    assert "\x1b" not in description and "\ufffd[31merror\ufffd[0m" in description
    assert not any(char in description for char in _NOT_XML_1_0)
    assert "\tat line 2" in description and "\r\n" in body.decode()  # allowed: kept
    assert description.endswith(" end \U0001f600")


def test_bounded_description_stays_valid_with_control_characters() -> None:
    xml = health_report_xml("1", "c", "i", HealthReport.failed("\x1b" * 10000))
    escaped = xml.split("<Description>")[1].split("</Description>")[0]
    assert len(escaped.encode()) <= 4096
    assert (_health(xml).findtext(".//Details/Description") or "").strip("\ufffd") == ""


def test_role_properties_with_control_characters_are_valid_xml_1_0() -> None:
    value = "A\x1bB\x00C\ud800D\tE\nF"
    xml = role_properties_xml("c\x01", "i\x02", {"Note\x0b": value})
    root = ET.fromstring(xml.split("?>", 1)[1].encode())
    found = root.find("Container/RoleInstances/RoleInstance/Properties/Property")
    assert found is not None
    assert found.get("name") == "Note\ufffd"
    # Attribute values keep tab and newline only as character references.
    assert found.get("value") == "A\ufffdB\ufffdC\ufffdD\tE\nF"
    assert root.findtext("Container/ContainerId") == "c\ufffd"


def test_fabric_refuses_what_xml_1_0_does_not_allow_and_accepts_the_agents_report() -> None:
    """The emulator parses as the platform does: one control character rejects the report."""
    from fabric.documents import parse_health, parse_role_properties

    reason = "script said \x1b[1mno\x1b[0m \udcff"
    raw = (b"<Health><Container><RoleInstanceList><Role><Health><State>NotReady</State>"
           b"<Details><Description>\x1b[1mno</Description></Details></Health></Role>"
           b"</RoleInstanceList></Container></Health>")
    with pytest.raises(Exception, match="not well-formed"):
        parse_health(raw)
    with pytest.raises(Exception, match="invalid character"):
        parse_health(raw.replace(b"\x1b", b"&#27;"))
    with pytest.raises(Exception, match="not well-formed"):
        parse_health(raw.replace(b"\x1b", "\uffff".encode()))
    report = parse_health(health_report_xml("1", "c", "i", HealthReport.failed(reason)).encode())
    assert report["description"] == "script said \ufffd[1mno\ufffd[0m \ufffd"
    properties = parse_role_properties(role_properties_xml("c", "i", {"x": "\x07"}).encode())
    assert properties["properties"] == {"x": "\ufffd"}


# -- JSON documents: depth and size bounded -------------------------------------------------

def _nested(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


@pytest.mark.parametrize("levels", [150, 100_000])
def test_deep_json_is_a_document_error(levels: int) -> None:
    from wire import parse_json

    with pytest.raises(DocumentError, match=r"^Thing: .*nested deeper than \d+ levels"):
        parse_json(_nested(levels), "Thing")
    with pytest.raises(DocumentError, match=r"^Thing: .*nested deeper"):
        parse_json(("[" * levels + "]" * levels).encode(), "Thing")


def test_json_within_bounds_and_errors_named() -> None:
    from wire import MAX_JSON_DEPTH, parse_json

    assert parse_json(_nested(MAX_JSON_DEPTH - 1), "Thing")
    assert parse_json(b'\xef\xbb\xbf{"a": [1, {"b": null}]}', "Thing") == {"a": [1, {"b": None}]}
    with pytest.raises(DocumentError, match="^Thing: not JSON"):
        parse_json("{", "Thing")
    with pytest.raises(DocumentError, match="^Thing: not JSON"):
        parse_json(b"\xff\xfe\xff", "Thing")
    with pytest.raises(DocumentError, match="^Thing: 11 bytes is larger than the 10 bytes"):
        parse_json(b'"123456789"', "Thing", max_bytes=10)


def test_deep_artifacts_profile_is_a_document_error() -> None:
    with pytest.raises(DocumentError, match="^InVMArtifactsProfile: .*nested deeper"):
        parse_artifacts_profile("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("levels", [150, 100_000])
def test_deep_handler_settings_flag_that_handler_only(levels: int) -> None:
    """Settings are per handler: too deep, that handler is invalid, the others still run."""
    text = read(WIRE / "ext_conf_invalid_and_valid_handlers.xml").decode()
    valid = parse_extensions_config(text).plugins[1]
    body = valid.settings[0].settings_json
    assert body is not None and body in text
    deep = '{"runtimeSettings":[{"handlerSettings":{"publicSettings":' + _nested(levels) + "}}]}"
    plugins = parse_extensions_config(text.replace(body, deep)).plugins
    assert plugins[1].name == valid.name and plugins[1].settings == ()
    assert "nested deeper" in (plugins[1].invalid_reason or "")
    assert valid.name in (plugins[1].invalid_reason or "")
