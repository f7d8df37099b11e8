"""The platform's documents, rendered from a scenario and parsed from the agent.

Formats follow PLATFORM.md and the fixtures under ../shared/fixtures: element
names, namespaces and attribute spellings are the platform's, written out here
as text so that what the fabric serves is easy to compare with a fixture.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from defusedxml import ElementTree

from fabric.certs import wrap64
from fabric.keys import thumbprint
from fabric.scenario import Extension, ExtensionConfig, Scenario

PROTOCOL_VERSION = "2012-11-30"
HOSTGAPLUGIN_VERSION = "1.0.8.159"
PLATFORM_ADDRESS = "168.63.129.16"
OVF_NS = "http://schemas.dmtf.org/ovf/environment/1"
WA_NS = "http://schemas.microsoft.com/windowsazure"


def _text(value: object) -> str:
    return escape(str(value))


def _bool(value: bool) -> str:
    return "true" if value else "false"


# --- provisioning media ------------------------------------------------------


def render_ovf(scenario: Scenario) -> str:
    """ovf-env.xml for the scenario, in the layout of the platform's (fixtures ovf-env*.xml)."""
    s = scenario
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<Environment xmlns="{OVF_NS}" xmlns:oe="{OVF_NS}" xmlns:wa="{WA_NS}"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">',
        "    <wa:ProvisioningSection>",
        "      <wa:Version>1.0</wa:Version>",
        f'      <LinuxProvisioningConfigurationSet xmlns="{WA_NS}"'
        ' xmlns:i="http://www.w3.org/2001/XMLSchema-instance">',
        "        <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>",
        f"        <HostName>{_text(s.hostname)}</HostName>",
        f"        <UserName>{_text(s.username)}</UserName>",
    ]
    if s.password is not None:
        lines.append(f"        <UserPassword>{_text(s.password)}</UserPassword>")
    lines.append(
        "        <DisableSshPasswordAuthentication>"
        f"{_bool(s.disable_ssh_password_authentication)}</DisableSshPasswordAuthentication>"
    )
    if s.ssh_keys or s.key_pairs:
        lines.append("        <SSH>")
        if s.ssh_keys:
            lines.append("          <PublicKeys>")
            for index, key in enumerate(s.ssh_keys):
                path = key.path or s.home_path(".ssh/authorized_keys")
                lines.append("            <PublicKey>")
                if key.as_certificate:
                    # Only the thumbprint: the key comes from <Fingerprint>.crt.
                    fingerprint = thumbprint(s.ssh_key_certificate(index))
                    lines.append(f"              <Fingerprint>{fingerprint}</Fingerprint>")
                    lines.append(f"              <Path>{_text(path)}</Path>")
                else:
                    lines.append(f"              <Path>{_text(path)}</Path>")
                    lines.append(f"              <Value>{_text(s.ssh_public_key(index))}</Value>")
                lines.append("            </PublicKey>")
            lines.append("          </PublicKeys>")
        if s.key_pairs:
            lines.append("          <KeyPairs>")
            for index, pair in enumerate(s.key_pairs):
                path = pair.path or s.home_path(".ssh/id_rsa")
                lines.append("            <KeyPair>")
                lines.append(
                    f"              <Fingerprint>{thumbprint(s.key_pair_certificate(index))}</Fingerprint>"
                )
                lines.append(f"              <Path>{_text(path)}</Path>")
                lines.append("            </KeyPair>")
            lines.append("          </KeyPairs>")
        lines.append("        </SSH>")
    if s.custom_data is not None:
        encoded = base64.b64encode(s.custom_data.encode()).decode()
        lines.append(f"        <CustomData>{encoded}</CustomData>")
    lines += [
        "      </LinuxProvisioningConfigurationSet>",
        "    </wa:ProvisioningSection>",
        "    <wa:PlatformSettingsSection>",
        "      <wa:Version>1.0</wa:Version>",
        "      <wa:PlatformSettings>",
        "        <wa:KmsServerHostname>kms.core.windows.net</wa:KmsServerHostname>",
        f"        <wa:ProvisionGuestAgent>{_bool(s.provision_guest_agent)}</wa:ProvisionGuestAgent>",
        '        <wa:GuestAgentPackageName xsi:nil="true"/>',
        "        <wa:RetainWindowsPEPassInUnattend>true</wa:RetainWindowsPEPassInUnattend>",
        "        <wa:RetainOfflineServicingPassInUnattend>true</wa:RetainOfflineServicingPassInUnattend>",
        "        <wa:PreprovisionedVm>false</wa:PreprovisionedVm>",
        "      </wa:PlatformSettings>",
        "    </wa:PlatformSettingsSection>",
        "</Environment>",
    ]
    return "\n".join(lines) + "\n"


# --- WireServer ----------------------------------------------------------------


def versions_xml() -> str:
    """GET /?comp=versions (fixture wire/version_info.xml)."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        "<Versions>\n"
        "  <Preferred>\n"
        f"    <Version>{PROTOCOL_VERSION}</Version>\n"
        "  </Preferred>\n"
        "  <Supported>\n"
        f"    <Version>{PROTOCOL_VERSION}</Version>\n"
        "    <Version>2010-12-15</Version>\n"
        "    <Version>2010-28-10</Version>\n"
        "  </Supported>\n"
        "</Versions>\n"
    )


@dataclass(frozen=True)
class Urls:
    """Where the fabric is reachable: documents it serves point here."""

    wire: str  # http://host:port
    hostplugin: str
    imds: str

    @property
    def storage(self) -> str:
        """The fabric's blob storage (artifacts, status blob), on the HostGAPlugin port."""
        return f"{self.hostplugin}/storage"


def config_url(urls: Urls, scenario: Scenario, kind: str, incarnation: int) -> str:
    """A sub-document URL as in the platform's goal state (comp=config&type=...)."""
    return (
        f"{urls.wire}/machine/{scenario.container_id}/{scenario.instance_id}"
        f"?comp=config&type={kind}&incarnation={incarnation}"
    )


def certificates_url(urls: Urls, scenario: Scenario, incarnation: int) -> str:
    """The Certificates URL of the goal state."""
    return (
        f"{urls.wire}/machine/{scenario.container_id}/{scenario.instance_id}"
        f"?comp=certificates&incarnation={incarnation}"
    )


def config_name(scenario: Scenario, incarnation: int) -> str:
    """ConfigName: the platform's role configuration file name."""
    return f"{scenario.container_id}.0.{scenario.container_id}.0.{scenario.hostname}.{incarnation}.xml"


def goal_state_xml(scenario: Scenario, incarnation: int, urls: Urls, with_certificates: bool) -> str:
    """GET /machine/?comp=goalstate (fixture wire/goal_state.xml)."""
    s = scenario
    amp = "&amp;"

    def url(value: str) -> str:
        return value.replace("&", amp)

    certificates = (
        f"          <Certificates>{url(certificates_url(urls, s, incarnation))}</Certificates>\n"
        if with_certificates
        else ""
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        ' xsi:noNamespaceSchemaLocation="goalstate10.xsd">\n'
        "  <Version>2010-12-15</Version>\n"
        f"  <Incarnation>{incarnation}</Incarnation>\n"
        "  <Machine>\n"
        "    <ExpectedState>Started</ExpectedState>\n"
        "    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>\n"
        "    <LBProbePorts>\n"
        "      <Port>16001</Port>\n"
        "    </LBProbePorts>\n"
        "    <ExpectHealthReport>FALSE</ExpectHealthReport>\n"
        "  </Machine>\n"
        "  <Container>\n"
        f"    <ContainerId>{_text(s.container_id)}</ContainerId>\n"
        "    <RoleInstanceList>\n"
        "      <RoleInstance>\n"
        f"        <InstanceId>{_text(s.instance_id)}</InstanceId>\n"
        "        <State>Started</State>\n"
        "        <Configuration>\n"
        f"          <HostingEnvironmentConfig>{url(config_url(urls, s, 'hostingEnvironmentConfig', incarnation))}</HostingEnvironmentConfig>\n"
        f"          <SharedConfig>{url(config_url(urls, s, 'sharedConfig', incarnation))}</SharedConfig>\n"
        f"          <ExtensionsConfig>{url(config_url(urls, s, 'extensionsConfig', incarnation))}</ExtensionsConfig>\n"
        f"          <FullConfig>{url(config_url(urls, s, 'fullConfig', incarnation))}</FullConfig>\n"
        f"{certificates}"
        f"          <ConfigName>{_text(config_name(s, incarnation))}</ConfigName>\n"
        "        </Configuration>\n"
        "      </RoleInstance>\n"
        "    </RoleInstanceList>\n"
        "  </Container>\n"
        "</GoalState>\n"
    )


def _role_guid(scenario: Scenario, what: str) -> str:
    digest = hashlib.sha256(f"{scenario.seed}:{what}".encode()).hexdigest()
    return f"{{{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}}}"


def hosting_env_xml(scenario: Scenario, incarnation: int) -> str:
    """HostingEnvironmentConfig: VM name is Incarnation@instance (fixture wire/hosting_env.xml)."""
    s = scenario
    deployment = s.container_id.replace("-", "")
    return (
        f'<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="{incarnation}">\n'
        "  <StoredCertificates />\n"
        f'  <Deployment name="{deployment}" guid="{{{s.container_id}}}" incarnation="{incarnation}">\n'
        f'    <Service name="{_text(s.hostname)}Service" guid="{{00000000-0000-0000-0000-000000000000}}" />\n'
        f'    <ServiceInstance name="{deployment}.0" guid="{_role_guid(s, "service")}" />\n'
        "  </Deployment>\n"
        f'  <Incarnation number="{incarnation}" instance={quoteattr(s.hostname)} guid="{_role_guid(s, "incarnation")}" />\n'
        f'  <Role guid="{_role_guid(s, "role")}" name={quoteattr(s.hostname)} hostingEnvironmentVersion="1"'
        ' software="" softwareType="ApplicationPackage" entryPoint="" parameters="" settleTimeSeconds="10" />\n'
        '  <HostingEnvironmentSettings name="full" runtime="rd_fabric_stable.runtimePackage_1.0.0.8.zip">\n'
        '    <CAS mode="full" />\n'
        '    <PrivilegeLevel mode="max" />\n'
        "    <AdditionalProperties><CgiHandlers></CgiHandlers></AdditionalProperties>\n"
        "  </HostingEnvironmentSettings>\n"
        "  <ApplicationSettings />\n"
        "  <ResourceReferences>\n"
        '    <Resource name="DiagnosticStore" type="directory" request="Microsoft.Cis.Fabric.Controller.Descriptions.ServiceDescription.Data.Policy"'
        f' sticky="true" size="1" path="{deployment}.{_text(s.hostname)}.DiagnosticStore\\" disableQuota="false" />\n'
        "  </ResourceReferences>\n"
        "</HostingEnvironmentConfig>\n"
    )


def shared_config_xml(scenario: Scenario, incarnation: int) -> str:
    """SharedConfig (fixture wire/shared_config.xml), one instance: this VM."""
    s = scenario
    deployment = s.container_id.replace("-", "")
    return (
        f'<SharedConfig version="1.0.0.0" goalStateIncarnation="{incarnation}">\n'
        f'  <Deployment name="{deployment}" guid="{{{s.container_id}}}" incarnation="{incarnation}">\n'
        f'    <Service name="{_text(s.hostname)}Service" guid="{{00000000-0000-0000-0000-000000000000}}" />\n'
        f'    <ServiceInstance name="{deployment}.0" guid="{_role_guid(s, "service")}" />\n'
        "  </Deployment>\n"
        f'  <Incarnation number="{incarnation}" instance={quoteattr(s.hostname)} guid="{_role_guid(s, "incarnation")}" />\n'
        f'  <Role guid="{_role_guid(s, "role")}" name={quoteattr(s.hostname)} settleTimeSeconds="10" />\n'
        '  <LoadBalancerSettings timeoutSeconds="0" waitLoadBalancerProbeCount="8">\n'
        "    <Probes>\n"
        f"      <Probe name={quoteattr(s.hostname)} />\n"
        "    </Probes>\n"
        "  </LoadBalancerSettings>\n"
        "  <OutputEndpoints />\n"
        "  <Instances>\n"
        f'    <Instance id={quoteattr(s.hostname)} address="10.0.0.4">\n'
        '      <FaultDomains randomId="0" updateId="0" updateCount="0" />\n'
        "      <InputEndpoints />\n"
        "    </Instance>\n"
        "  </Instances>\n"
        "</SharedConfig>\n"
    )


def manifest_url(urls: Urls, ext: Extension) -> str:
    """Where the extension's PluginVersionManifest lives in the fabric's storage."""
    return f"{urls.storage}/manifests/{ext.name}_manifest.xml"


def package_url(urls: Urls, ext: Extension) -> str:
    """Where the extension's zip lives in the fabric's storage."""
    return f"{urls.storage}/packages/{ext.name}__{ext.version}.zip"


def ga_manifest_url(urls: Urls, family: str = "Prod") -> str:
    """The agent family manifest: the scenario's `ga_family.versions` (none by default)."""
    return f"{urls.storage}/manifests/WALinuxAgent_{family}_manifest.xml"


def agent_package_url(urls: Urls, version: str) -> str:
    """Where an agent version's zip lives in the fabric's storage."""
    return f"{urls.storage}/agents/WALinuxAgent-{version}.zip"


def _ga_family_xml(scenario: Scenario, urls: Urls) -> str:
    family = scenario.ga_family
    optional = "".join(
        f"      <{tag}>{_text(str(value).lower() if isinstance(value, bool) else value)}</{tag}>\n"
        for tag, value in (("Version", family.version), ("IsVersionFromRSM", family.is_version_from_rsm),
                           ("IsVMEnabledForRSMUpgrades", family.is_vm_enabled_for_rsm_upgrades))
        if value is not None)
    return (
        "    <GAFamily>\n"
        f"      <Name>{_text(family.name)}</Name>\n"
        f"{optional}"
        "      <Uris>\n"
        f"        <Uri>{_text(ga_manifest_url(urls, family.name))}</Uri>\n"
        "      </Uris>\n"
        "    </GAFamily>\n"
    )


def _ga_family_json(scenario: Scenario, urls: Urls) -> dict[str, Any]:
    family = scenario.ga_family
    found: dict[str, Any] = {"name": family.name, "uris": [ga_manifest_url(urls, family.name)]}
    for key, value in (("version", family.version), ("isVersionFromRSM", family.is_version_from_rsm),
                       ("isVMEnabledForRSMUpgrades", family.is_vm_enabled_for_rsm_upgrades)):
        if value is not None:
            found[key] = value
    return found


ARTIFACTS_PROFILE = "artifacts/profile.json"  # in storage: {"onHold": ...}


def artifacts_profile_url(urls: Urls) -> str:
    """The InVMArtifactsProfileBlob (served while the scenario's on_hold is not None)."""
    return f"{urls.storage}/{ARTIFACTS_PROFILE}?sr=b&sp=r&sig=fabric"


def status_blob_url(urls: Urls, scenario: Scenario) -> str:
    """The status blob SAS URL the agent uploads its aggregate status to."""
    return f"{urls.storage}/status/{scenario.vm_id}.status?sr=b&sp=rw&se=9999-01-01&sk=key1&sv=2014-02-14&sig=fabric"


def handler_settings(ext: Extension | ExtensionConfig, protected: tuple[str, str] | None) -> dict[str, Any]:
    """The handlerSettings of one extension: public as an object, protected as CMS base64."""
    settings: dict[str, Any] = {}
    if protected is not None:
        settings["protectedSettingsCertThumbprint"] = protected[0]
        settings["protectedSettings"] = protected[1]
    if ext.public_settings is not None:
        settings["publicSettings"] = ext.public_settings
    return settings


def protected_key(ext: Extension, config: ExtensionConfig | None = None) -> str:
    """The key of an extension's (or a multi-config extension's) encrypted settings in `protected`."""
    return ext.name if config is None else f"{ext.name}/{config.name}"


def _depends_on_xml(level: int | None, depends_on: list[str], name: str | None) -> str:
    if level is None:
        return ""
    named = f" name={quoteattr(name)}" if name is not None else ""
    lines = [f'    <DependsOn dependencyLevel="{level}"{named}>']
    for target in depends_on:
        handler, _, extension = target.partition("/")
        ext_attr = f" extension={quoteattr(extension)}" if extension else ""
        lines.append(f"      <DependsOnExtension{ext_attr} handler={quoteattr(handler)} />")
    lines.append("    </DependsOn>\n")
    return "\n".join(lines)


def _depends_on_json(level: int, depends_on: list[str], name: str | None) -> dict[str, Any]:
    targets = []
    for target in depends_on:
        handler, _, extension = target.partition("/")
        targets.append({"extension": extension, "handler": handler} if extension else {"handler": handler})
    entry: dict[str, Any] = {"dependsOnExtension": targets, "dependencyLevel": level}
    if name is not None:
        entry["name"] = name
    return entry


def extensions_config_xml(
    scenario: Scenario,
    incarnation: int,
    urls: Urls,
    protected: dict[str, tuple[str, str]],
    created_ticks: int | None = None,
) -> str:
    """ExtensionsConfig (fixture wire/ext_conf.xml); protected maps protected_key -> (thumbprint, CMS base64).

    Multi-config handlers (fixture wire/multi-config/) carry one ExtensionRuntimeSettings per
    extension and make the document require MultipleExtensionsPerHandler. created_ticks is
    InVMGoalStateMetaData@createdOnTicks (default: from the incarnation).
    """
    s = scenario
    plugins = []
    settings = []
    for ext in s.extensions:
        location = manifest_url(urls, ext)
        plugins.append(
            f'  <Plugin name={quoteattr(ext.name)} version={quoteattr(ext.version)}'
            f' location={quoteattr(location)} config="" state="{ext.state}" autoUpgrade="false"'
            f' failoverlocation={quoteattr(location)} runAsStartupTask="false" isJson="true" useExactVersion="true" />'
        )
        body = ""
        if ext.multi_config:
            for config in ext.multi_config:
                body += _depends_on_xml(config.dependency_level, config.depends_on, config.name)
            for config in ext.multi_config:
                runtime = {"runtimeSettings": [{"handlerSettings": handler_settings(
                    config, protected.get(protected_key(ext, config)))}]}
                body += (f'    <ExtensionRuntimeSettings seqNo="{config.seq_no}" name={quoteattr(config.name)}'
                         f' state="{config.state}">{_text(json.dumps(runtime))}</ExtensionRuntimeSettings>\n')
        else:
            body += _depends_on_xml(ext.dependency_level, ext.depends_on, None)
            runtime = {"runtimeSettings": [{"handlerSettings": handler_settings(ext, protected.get(ext.name))}]}
            body += f'    <RuntimeSettings seqNo="{ext.seq_no}">{_text(json.dumps(runtime))}</RuntimeSettings>\n'
        settings.append(
            f"  <Plugin name={quoteattr(ext.name)} version={quoteattr(ext.version)}>\n"
            f"{body}"
            "  </Plugin>"
        )
    plugin_text = "\n".join(plugins)
    settings_text = "\n".join(settings)
    features = (["MultipleExtensionsPerHandler"] if any(ext.multi_config for ext in s.extensions) else []) \
        + list(s.required_features)
    required = ""
    if features:
        required = "<RequiredFeatures>\n" + "".join(
            f"  <RequiredFeature>\n    <Name>{_text(name)}</Name>\n  </RequiredFeature>\n" for name in features
        ) + "</RequiredFeatures>\n"
    profile = ""
    if s.on_hold is not None:
        profile = f"<InVMArtifactsProfileBlob>{_text(artifacts_profile_url(urls))}</InVMArtifactsProfileBlob>\n"
    created = ticks(incarnation) if created_ticks is None else created_ticks
    return (
        f'<Extensions version="1.0.0.0" goalStateIncarnation="{incarnation}">'
        '<GuestAgentExtension xmlns:i="http://www.w3.org/2001/XMLSchema-instance">\n'
        "  <GAFamilies>\n"
        f"{_ga_family_xml(s, urls)}"
        "  </GAFamilies>\n"
        "</GuestAgentExtension>\n"
        f"{required}"
        "<Plugins>\n"
        f"{plugin_text}\n"
        "</Plugins>\n"
        "<PluginSettings>\n"
        f"{settings_text}\n"
        "</PluginSettings>\n"
        f'<StatusUploadBlob statusBlobType="BlockBlob">{_text(status_blob_url(urls, s))}</StatusUploadBlob>\n'
        f"{profile}"
        f'<InVMGoalStateMetaData inSvdSeqNo="{incarnation}" createdOnTicks="{created}"'
        f' activityId="{_uuid(s, f"activity-{created}")}" correlationId="{_uuid(s, f"correlation-{created}")}" />\n'
        "</Extensions>\n"
    )


def ticks(generation: int) -> int:
    """A goal state's creation time in .NET ticks: 2024-01-01 plus one second a goal state."""
    return 638396640000000000 + generation * 10_000_000




def _uuid(scenario: Scenario, what: str) -> str:
    return _role_guid(scenario, what).strip("{}")


def certificates_xml(incarnation: int, envelope: bytes | None) -> str:
    """The certificates document; no <Data> (and no Format) when nothing is delivered."""
    body = ""
    if envelope is not None:
        body = (
            "  <Format>Pkcs7BlobWithPfxContents</Format>\n"
            f"  <Data>{wrap64(envelope)}</Data>\n"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<CertificateFile xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        ' xsi:noNamespaceSchemaLocation="certificates10.xsd">\n'
        f"  <Version>{PROTOCOL_VERSION}</Version>\n"
        f"  <Incarnation>{incarnation}</Incarnation>\n"
        f"{body}"
        "</CertificateFile>\n"
    )


def manifest_xml(versions: list[tuple[str, str]]) -> str:
    """PluginVersionManifest (fixture wire/manifest.xml): (version, package URL) pairs."""
    plugins = "".join(
        "    <Plugin>\n"
        f"      <Version>{_text(version)}</Version>\n"
        "      <Uris>\n"
        f"        <Uri>{_text(uri)}</Uri>\n"
        "      </Uris>\n"
        "    </Plugin>\n"
        for version, uri in versions
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<PluginVersionManifest xmlns:i="http://www.w3.org/2001/XMLSchema-instance">\n'
        "  <Plugins>\n"
        f"{plugins}"
        "  </Plugins>\n"
        "</PluginVersionManifest>\n"
    )


# --- HostGAPlugin ----------------------------------------------------------------


def hostplugin_versions_xml() -> str:
    """GET /versions on the HostGAPlugin."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        "<Versions>\n"
        "  <Preferred><Version>2015-09-01</Version></Preferred>\n"
        "  <Supported><Version>2015-09-01</Version><Version>2012-11-30</Version></Supported>\n"
        "</Versions>\n"
    )


def vm_settings(
    scenario: Scenario, incarnation: int, urls: Urls, protected: dict[str, tuple[str, str]],
    created_ticks: int | None = None,
) -> dict[str, Any]:
    """FastTrack vmSettings (fixture hostgaplugin/vm_settings.json) for the same extensions.

    created_ticks is extensionsLastModifiedTickCount (default: from the incarnation): the
    agent takes the newer of vmSettings and ExtensionsConfig by this creation time.
    """
    s = scenario
    goal_states = []
    for ext in s.extensions:
        entry: dict[str, Any] = {
            "name": ext.name,
            "version": ext.version,
            "location": manifest_url(urls, ext),
            "failoverlocation": manifest_url(urls, ext),
            "additionalLocations": [],
            "state": ext.state,
            "autoUpgrade": False,
            "runAsStartupTask": False,
            "isJson": True,
            "useExactVersion": True,
            "settingsSeqNo": ext.seq_no,
            "isMultiConfig": bool(ext.multi_config),
        }
        depends: list[dict[str, Any]] = []
        if ext.multi_config:
            entry["settings"] = []
            for config in ext.multi_config:
                handler = _json_public(handler_settings(config, protected.get(protected_key(ext, config))))
                handler.update({"seqNo": config.seq_no, "extensionName": config.name,
                                "extensionState": config.state})
                entry["settings"].append(handler)
                if config.dependency_level is not None:
                    depends.append(_depends_on_json(config.dependency_level, config.depends_on, config.name))
        else:
            handler = _json_public(handler_settings(ext, protected.get(ext.name)))
            entry["settings"] = [handler] if handler or ext.dependency_level is not None else []
            if ext.dependency_level is not None:
                depends.append(_depends_on_json(ext.dependency_level, ext.depends_on, None))
        if depends:
            entry["dependsOn"] = depends
        goal_states.append(entry)
    created = ticks(incarnation) if created_ticks is None else created_ticks
    required = [{"name": "MultipleExtensionsPerHandler"}] if any(e.multi_config for e in s.extensions) else []
    required += [{"name": name} for name in s.required_features]
    return {
        "hostGAPluginVersion": HOSTGAPLUGIN_VERSION,
        "vmSettingsSchemaVersion": "0.0",
        "activityId": _uuid(s, f"activity-{created}"),
        "correlationId": _uuid(s, f"correlation-{created}"),
        "inSvdSeqNo": incarnation,
        "extensionsLastModifiedTickCount": created,
        "extensionGoalStatesSource": "FastTrack",
        "onHold": bool(s.on_hold),
        "statusUploadBlob": {"statusBlobType": "BlockBlob", "value": status_blob_url(urls, s)},
        "inVMMetadata": {
            "subscriptionId": _uuid(s, "subscription"),
            "resourceGroupName": "fabric-rg",
            "vmName": s.hostname,
            "location": s.location,
            "vmId": s.vm_id,
            "vmSize": s.vm_size,
            "osType": "Linux",
        },
        "requiredFeatures": required,
        "gaFamilies": [_ga_family_json(s, urls)],
        "extensionGoalStates": goal_states,
    }


def _json_public(handler: dict[str, Any]) -> dict[str, Any]:
    # vmSettings carries publicSettings as a JSON string, unlike ExtensionsConfig.
    if "publicSettings" in handler:
        handler["publicSettings"] = json.dumps(handler["publicSettings"])
    return handler


# --- IMDS ---------------------------------------------------------------------------


def imds_instance(scenario: Scenario) -> dict[str, Any]:
    """GET /metadata/instance: compute (with the scenario's overrides merged in) and network."""
    s = scenario
    public_keys = [
        {"keyData": s.ssh_public_key(i) + "\n", "path": _expand_home(s, k.path or s.home_path(".ssh/authorized_keys"))}
        for i, k in enumerate(s.ssh_keys)
    ]
    user_data = base64.b64encode(s.custom_data.encode()).decode() if s.custom_data else ""
    compute: dict[str, Any] = {
        "azEnvironment": "AzurePublicCloud",
        "customData": "",
        "location": s.location,
        "name": s.hostname,
        "offer": "debian-12",
        "osProfile": {
            "adminUsername": s.username,
            "computerName": s.hostname,
            "disablePasswordAuthentication": _bool(s.disable_ssh_password_authentication),
        },
        "osType": "Linux",
        "platformFaultDomain": "0",
        "platformUpdateDomain": "0",
        "provider": "Microsoft.Compute",
        "publicKeys": public_keys,
        "publisher": "Debian",
        "resourceGroupName": "fabric-rg",
        "sku": "12",
        "subscriptionId": _uuid(s, "subscription"),
        "tags": "",
        "userData": user_data,
        "version": "latest",
        "vmId": s.vm_id,
        "vmSize": s.vm_size,
        "zone": "",
    }
    _merge(compute, s.imds.get("compute", {}) if "compute" in s.imds else s.imds)
    return {
        "compute": compute,
        "network": {
            "interface": [
                {
                    "ipv4": {
                        "ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": ""}],
                        "subnet": [{"address": "10.0.0.0", "prefix": "24"}],
                    },
                    "ipv6": {"ipAddress": []},
                    "macAddress": "000D3A000004",
                }
            ]
        },
    }


def _expand_home(scenario: Scenario, path: str) -> str:
    return path.replace(f"$HOME/{scenario.username}", f"/home/{scenario.username}")


def _merge(target: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


# --- parsing what the agent sends ---------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_text(root: Any, name: str) -> str | None:
    for element in root.iter():
        if _local(element.tag) == name:
            return str(element.text or "")
    return None


def parse_health(body: bytes) -> dict[str, Any]:
    """A health report: incarnation, container id, instance id, state, substatus, description."""
    root = ElementTree.fromstring(body)
    return {
        "incarnation": _find_text(root, "GoalStateIncarnation"),
        "container_id": _find_text(root, "ContainerId"),
        "instance_id": _find_text(root, "InstanceId"),
        "state": _find_text(root, "State"),
        "substatus": _find_text(root, "SubStatus"),
        "description": _find_text(root, "Description"),
    }


def parse_role_properties(body: bytes) -> dict[str, Any]:
    """Role properties: container id, instance id and the name -> value properties."""
    root = ElementTree.fromstring(body)
    properties = {
        str(e.get("name")): str(e.get("value"))
        for e in root.iter()
        if _local(e.tag) == "Property"
    }
    return {
        "container_id": _find_text(root, "ContainerId"),
        "instance_id": _find_text(root, "Id"),
        "properties": properties,
    }


# --- replaying fixture documents ---------------------------------------------------------------

_URL = re.compile(r"(https?)://([A-Za-z0-9._\-$]+(?::\d+)?)(?=[/?\"'<\s]|&amp;|$)")


_NAMESPACE_HOSTS = {"www.w3.org", "schemas.microsoft.com", "schemas.dmtf.org", "schemas.xmlsoap.org"}


def rewrite_platform_urls(text: str, urls: Urls) -> str:
    """Point every URL of a platform document at the fabric.

    http(s)://168.63.129.16[:80]/x -> <wire>/x; any other http(s)://host/x (blob
    storage, mock-goal-state, sas_url) -> <storage>/_/host/x, so that nothing the
    agent follows leaves the fabric.
    """

    def replace(match: re.Match[str]) -> str:
        host = match.group(2)
        if host in _NAMESPACE_HOSTS:
            return match.group(0)  # an XML namespace name, never fetched
        if host.split(":")[0] == PLATFORM_ADDRESS:
            return urls.wire
        return f"{urls.storage}/_/{host}"

    return _URL.sub(replace, text)
