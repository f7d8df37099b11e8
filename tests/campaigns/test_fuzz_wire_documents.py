"""WireServer and HostGAPlugin documents: wire/xmldoc.py, wire/documents.py,
wire/subdocuments.py, wire/extensions_config.py, wire/extensions_goal_state.py, and the
version choices made from manifests (wire/artifacts.py, graph/update.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graph.update import choose_version
from tests.campaigns.harness import campaign, holds
from tests.campaigns.strategies import (
    JSON_TOKENS,
    XML_TOKENS,
    fixture_files,
    json_text,
    json_values,
    leaf,
    mutated,
    mutations_of,
    node,
    shaped,
    tricky_text,
    xml_document,
)
from wire import parse_json
from wire.artifacts import pick_version
from wire.documents import parse_goal_state, parse_versions
from wire.errors import DocumentError
from wire.extensions_config import (
    GAFamily,
    is_on_hold,
    parse_artifacts_profile,
    parse_extensions_config,
    parse_manifest,
)
from wire.extensions_goal_state import choose, from_extensions_config, parse_vm_settings
from wire.subdocuments import (
    parse_certificate_file,
    parse_hosting_environment,
    parse_shared_config,
)

pytestmark = pytest.mark.campaign

NUMBERS = st.one_of(st.integers(-2, 10**6).map(str), tricky_text())
URL = st.sampled_from(["http://127.0.0.1/x?comp=config", "", "x", "http://[::1/"])

GOAL_STATE = node(
    Version=leaf(), Incarnation=leaf(text=NUMBERS),
    Machine=node(ExpectedState=leaf(), StopRolesDeadlineHint=leaf(),
                 LBProbePorts=node(Port=leaf()), ExpectHealthReport=leaf()),
    Container=node(
        ContainerId=leaf(),
        RoleInstanceList=node(RoleInstance=node(
            InstanceId=leaf(), State=leaf(),
            Configuration=node(HostingEnvironmentConfig=leaf(text=URL), SharedConfig=leaf(),
                               ExtensionsConfig=leaf(), FullConfig=leaf(),
                               Certificates=leaf(), ConfigName=leaf()))),
        RemoteAccessInfo=leaf()))
VERSIONS = node(Preferred=node(Version=leaf()), Supported=node(Version=leaf()))
HOSTING = node(StoredCertificates=node(StoredCertificateSettings=leaf("name", "certificateId")),
               Deployment=node("name", "guid", "incarnation", Service=leaf("name")),
               Incarnation=leaf("number", "instance", "guid"), Role=leaf("guid", "name"))
SHARED = node(Deployment=leaf("name", "guid"), Role=leaf("guid", "name"),
              Instances=node(Instance=node("id", "address", "rdmaIPv4Address",
                                           "rdmaMacAddress", InputEndpoints=leaf())))
CERTS = node(Version=leaf(), Incarnation=leaf(), Format=leaf(
    text=st.sampled_from(["Pkcs7BlobWithPfxContents", "", "x"])), Data=leaf())

NAMES = st.sampled_from(["Ext.A", "ext.a", "Ext.B", "Microsoft.OSTCExtensions.VMAccessForLinux"])
VERSIONS_TEXT = st.sampled_from(["1.0", "1.0.0", "1.0.1", "2.0", "1", "", "1.0-beta", "²",
                                 "1." + "9" * 5000, "1.0.٣"])
SETTINGS = st.one_of(
    st.just(""),
    shaped({"runtimeSettings": st.lists(shaped({"handlerSettings": shaped({
        "publicSettings": json_values(6), "protectedSettings": tricky_text(),
        "protectedSettingsCertThumbprint": tricky_text()})}), max_size=2)}).map(
        lambda value: json_text(value).decode()),
    tricky_text())
EXTENSIONS_CONFIG = node(
    "goalStateIncarnation",
    GuestAgentExtension=node(GAFamilies=node(GAFamily=node(
        Name=leaf(text=st.sampled_from(["Prod", "Test", ""])), Version=leaf(text=VERSIONS_TEXT),
        IsVersionFromRSM=leaf(), IsVMEnabledForRSMUpgrades=leaf(),
        Uris=node(Uri=leaf(text=URL))))),
    Plugins=node(Plugin=node("name", "version", "location", "failoverlocation", "autoUpgrade",
                             "runAsStartupTask", "isJson", "useExactVersion", "state",
                             "encodedSignature", "isMultiConfig",
                             additionalLocations=node(additionalLocation=leaf(text=URL)))),
    PluginSettings=node(Plugin=node(
        "name", "version",
        RuntimeSettings=leaf("seqNo", text=SETTINGS),
        ExtensionRuntimeSettings=leaf("name", "seqNo", "state", text=SETTINGS),
        DependsOn=node("name", "dependencyLevel",
                       DependsOnExtension=leaf("handler", "extension")))),
    StatusUploadBlob=leaf("statusBlobType", text=URL),
    InVMArtifactsProfileBlob=leaf(text=URL),
    RequiredFeatures=node(RequiredFeature=node(Name=leaf(), Value=leaf())),
    InVMGoalStateMetaData=leaf("inSvdSeqNo", "createdOnTicks", "activityId",
                               "correlationId"))
# Attribute values that line up names and versions across Plugins and PluginSettings.
EXT_ATTRIBUTES = st.one_of(NAMES, VERSIONS_TEXT, NUMBERS,
                           st.sampled_from(["enabled", "disabled", "uninstall", "PageBlob"]))
MANIFEST = node(Plugins=node(Plugin=node(Version=leaf(text=VERSIONS_TEXT),
                                         Uris=node(Uri=leaf(text=URL)),
                                         DisallowMajorVersionUpgrade=leaf())),
                InternalPlugins=node(Plugin=node(Version=leaf(text=VERSIONS_TEXT),
                                                 Uris=node(Uri=leaf(text=URL)))))


def _documents(name: str, grammar: Any, seeds: list[bytes],
               attribute_values: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[bytes]:
    built = xml_document(name, grammar, attribute_values=attribute_values).flatmap(
        lambda doc: mutated(doc, XML_TOKENS, max_ops=2))
    return st.one_of(built, mutations_of(seeds, XML_TOKENS))


def _check(parser: str, call: Callable[[], Any], data: bytes) -> Any:
    return holds(parser, call, (DocumentError,), size=len(data))


@campaign(1)
@given(_documents("GoalState", GOAL_STATE, fixture_files(
    "walinuxagent/wire/goal_state*.xml", "walinuxagent/hibernate/*/GoalState*.xml",
    "walinuxagent/tenant_certificate_rotation/*GoalState*")))
def test_goal_state(data: bytes) -> None:
    _check("goal state", lambda: parse_goal_state(data), data)


@campaign(0.5)
@given(_documents("Versions", VERSIONS, fixture_files("walinuxagent/wire/version_info.xml")))
def test_versions(data: bytes) -> None:
    _check("goal state", lambda: parse_versions(data), data)


@campaign(0.5)
@given(_documents("HostingEnvironmentConfig", HOSTING,
                  fixture_files("walinuxagent/wire/hosting_env.xml")))
def test_hosting_environment(data: bytes) -> None:
    _check("goal state", lambda: parse_hosting_environment(data), data)


@campaign(0.5)
@given(_documents("SharedConfig", SHARED, fixture_files("walinuxagent/wire/shared_config.xml")))
def test_shared_config(data: bytes) -> None:
    def parse() -> None:
        parse_shared_config(data).rdma  # noqa: B018 - the property reads the instances
    _check("goal state", parse, data)


@campaign(0.5)
@given(_documents("CertificateFile", CERTS, fixture_files("walinuxagent/wire/*certs*.xml")))
def test_certificates_document(data: bytes) -> None:
    _check("certificates document", lambda: parse_certificate_file(data).is_pfx, data)


def _extensions_config(data: bytes) -> None:
    config = parse_extensions_config(data)
    config.ga_family("Prod")
    for plugin in config.plugins:
        plugin.manifest_uris  # noqa: B018
    for family in config.ga_families:  # the self-update's choice from the agent family
        choose_version(family, [family.version or "", "9.9.9"], running="1.0.0",
                       base="1.0.0", blacklisted=())
    state = from_extensions_config(config, "1")
    state.unsupported_features  # noqa: B018
    choose([state, None], handled_ticks=5)


@campaign(2)
@given(_documents("Extensions", EXTENSIONS_CONFIG, fixture_files(
    "walinuxagent/wire/ext_conf*.xml", "walinuxagent/wire/multi-config/*.xml",
    "walinuxagent/wire/invalid_config/*.xml", "walinuxagent/hostgaplugin/ext_conf*.xml"),
    EXT_ATTRIBUTES))
def test_extensions_config(data: bytes) -> None:
    _check("ExtensionsConfig", lambda: _extensions_config(data), data)


def _manifest(data: bytes) -> None:
    manifest = parse_manifest(data)
    for requested in ("1.0", "1", "2.0.0", "", "1.0-beta"):
        pick_version(manifest, requested)
    for version in manifest.versions:
        pick_version(manifest, version.version)
        manifest.find(version.version)
    # An agent family's manifest: the self-update picks the newest version offered.
    choose_version(GAFamily("Prod", ()), [v.version for v in manifest.versions],
                   running="1.0.0", base="1.0.0", blacklisted=())


@campaign(1)
@given(_documents("PluginVersionManifest", MANIFEST, fixture_files(
    "walinuxagent/wire/manifest*.xml", "walinuxagent/wire/ga_manifest*.xml")))
def test_manifests(data: bytes) -> None:
    _check("manifests", lambda: _manifest(data), data)


SETTINGS_ENTRY = shaped({
    "publicSettings": st.one_of(json_values(6), json_values(6).map(lambda v: json_text(v).decode())),
    "protectedSettings": tricky_text(), "protectedSettingsCertThumbprint": tricky_text(),
    "seqNo": st.integers(-1, 5), "extensionName": NAMES,
    "extensionState": st.sampled_from(["enabled", "disabled", "x"])})
DEPENDS = shaped({"name": NAMES, "dependencyLevel": st.one_of(st.integers(-1, 5), NUMBERS),
                  "dependsOnExtension": st.lists(shaped({"handler": NAMES,
                                                         "extension": NAMES}), max_size=2)})
GOAL_STATE_ENTRY = shaped({
    "name": NAMES, "version": VERSIONS_TEXT, "location": URL, "failoverLocation": URL,
    "additionalLocations": st.lists(URL, max_size=2), "state": EXT_ATTRIBUTES,
    "autoUpgrade": st.booleans(), "isJson": st.booleans(), "isMultiConfig": st.booleans(),
    "encodedSignature": tricky_text(), "settingsSeqNo": st.integers(-1, 5),
    "settings": st.lists(SETTINGS_ENTRY, max_size=3), "dependsOn": st.lists(DEPENDS, max_size=2)})
VM_SETTINGS = shaped({
    "hostGAPluginVersion": VERSIONS_TEXT, "vmSettingsSchemaVersion": VERSIONS_TEXT,
    "activityId": tricky_text(), "correlationId": tricky_text(), "inSvdSeqNo": st.integers(),
    "extensionsLastModifiedTickCount": st.integers(), "extensionGoalStatesSource":
    st.sampled_from(["FastTrack", "Fabric", "x"]), "onHold": st.booleans(),
    "statusUploadBlob": shaped({"statusBlobType": EXT_ATTRIBUTES, "value": URL}),
    "inVMArtifactsProfileBlob": shaped({"value": URL}),
    "requiredFeatures": st.lists(shaped({"name": tricky_text()}), max_size=2),
    "gaFamilies": st.lists(shaped({"name": tricky_text(), "version": VERSIONS_TEXT,
                                   "uris": st.lists(URL, max_size=2)}), max_size=2),
    "extensionGoalStates": st.lists(GOAL_STATE_ENTRY, max_size=3)})


def _vm_settings(data: bytes) -> None:
    document = parse_json(data, "vmSettings")
    if not isinstance(document, dict):  # as HostPluginClient.vm_settings refuses it
        raise DocumentError("vmSettings", "not a JSON object")
    state = parse_vm_settings(document, "etag")
    if state is not None:
        state.unsupported_features  # noqa: B018
        choose([state, None], handled_ticks=5)


@campaign(2)
@given(st.one_of(VM_SETTINGS.map(json_text).flatmap(lambda d: mutated(d, JSON_TOKENS, 2)),
                 mutations_of(fixture_files("walinuxagent/hostgaplugin/vm_settings*.json"),
                              JSON_TOKENS)))
def test_vm_settings(data: bytes) -> None:
    _check("vmSettings", lambda: _vm_settings(data), data)


@campaign(0.5)
@given(st.one_of(shaped({"onHold": st.one_of(st.booleans(), tricky_text())}).map(json_text),
                 mutations_of(fixture_files("walinuxagent/wire/in_vm_artifacts_profile.json",
                                            "walinuxagent/hostgaplugin/in_vm_artifacts_profile.json"),
                              JSON_TOKENS)))
def test_artifacts_profile(data: bytes) -> None:
    _check("artifacts profile", lambda: is_on_hold(parse_artifacts_profile(data)), data)
