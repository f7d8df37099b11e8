"""WireServer documents: versions, goal state and its sub-documents, and the reports we send.

Parsers are pure functions from text to named tuples; a malformed document
raises DocumentError naming the document and the field. ExtensionsConfig and the
extension manifests live in `wire.extensions_config`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from wire.errors import DocumentError
from wire.xmldoc import (
    attribute,
    children,
    find,
    parse_xml,
    required_attribute,
    required_element,
    required_text,
    text_at,
)

WIRE_PROTOCOL_VERSION = "2012-11-30"
PFX_FORMAT = "Pkcs7BlobWithPfxContents"
MAX_HEALTH_DESCRIPTION_BYTES = 4096


def escape(text: str) -> str:
    """Text safe inside an XML element (xml.sax.saxutils pulls in urllib.request: 20 ms)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quoteattr(text: str) -> str:
    """A double-quoted XML attribute value."""
    return '"' + escape(text).replace('"', "&quot;").replace("\n", "&#10;") + '"'


# -- versions -------------------------------------------------------------------------------

class Versions(NamedTuple):
    """`GET /?comp=versions`: the preferred protocol version and the others supported."""

    preferred: str | None
    supported: tuple[str, ...]

    def accepts(self, version: str) -> bool:
        """True when the server speaks this protocol version."""
        return version == self.preferred or version in self.supported


def parse_versions(text: str | bytes) -> Versions:
    """Parse the versions document."""
    doc = "Versions"
    root = parse_xml(text, doc)
    if root.tag != "Versions":
        raise DocumentError(doc, f"root element is <{root.tag}>, expected <Versions>")
    preferred = text_at(root, "Preferred/Version")
    supported_element = find(root, "Supported")
    supported = tuple(
        version.text.strip() for version in
        (children(supported_element, "Version") if supported_element is not None else [])
        if version.text and version.text.strip())
    if preferred is None and not supported:
        raise DocumentError(doc, "neither Preferred/Version nor Supported/Version is present")
    return Versions(preferred, supported)


# -- goal state -----------------------------------------------------------------------------

class GoalState(NamedTuple):
    """`GET /machine/?comp=goalstate`. URLs are as the platform wrote them (not rewritten).

    `role_instance_id` is None while the platform has not placed the role yet: the
    client retries such a goal state.
    """

    incarnation: str
    container_id: str
    role_instance_id: str | None
    role_config_name: str | None
    hosting_environment_url: str | None
    shared_config_url: str | None
    extensions_config_url: str | None
    full_config_url: str | None
    certificates_url: str | None
    remote_access_url: str | None
    expected_state: str | None
    xml: str


def parse_goal_state(text: str | bytes) -> GoalState:
    """Parse a goal state."""
    doc = "GoalState"
    root = parse_xml(text, doc)
    if root.tag != "GoalState":
        raise DocumentError(doc, f"root element is <{root.tag}>, expected <GoalState>")
    incarnation = required_text(root, "Incarnation", doc)
    if not incarnation.isdigit():
        raise DocumentError(doc, f"field Incarnation is {incarnation!r}, not a number")
    container_id = required_text(root, "Container/ContainerId", doc)
    role = find(root, "Container/RoleInstanceList/RoleInstance")
    instance_id = config_name = None
    urls: dict[str, str | None] = {}
    if role is not None:
        instance_id = required_text(role, "InstanceId", doc)
        for name in ("HostingEnvironmentConfig", "SharedConfig", "ExtensionsConfig",
                     "FullConfig", "Certificates", "ConfigName"):
            urls[name] = text_at(role, f"Configuration/{name}")
        config_name = urls["ConfigName"]
    raw = text if isinstance(text, str) else text.decode("utf-8-sig", errors="replace")
    return GoalState(
        incarnation=incarnation,
        container_id=container_id,
        role_instance_id=instance_id,
        role_config_name=config_name,
        hosting_environment_url=urls.get("HostingEnvironmentConfig"),
        shared_config_url=urls.get("SharedConfig"),
        extensions_config_url=urls.get("ExtensionsConfig"),
        full_config_url=urls.get("FullConfig"),
        certificates_url=urls.get("Certificates"),
        remote_access_url=text_at(root, "Container/RemoteAccessInfo"),
        expected_state=text_at(root, "Machine/ExpectedState"),
        xml=raw,
    )


# -- hosting environment and shared config --------------------------------------------------

class HostingEnvironmentConfig(NamedTuple):
    """The VM's names as the platform knows them."""

    vm_name: str
    role_name: str | None  # older platforms only
    deployment_name: str | None  # older platforms only
    xml: str


def parse_hosting_environment(text: str | bytes) -> HostingEnvironmentConfig:
    """Parse HostingEnvironmentConfig: VM name (`Incarnation@instance`), role, deployment."""
    doc = "HostingEnvironmentConfig"
    root = parse_xml(text, doc)
    if root.tag != doc:
        raise DocumentError(doc, f"root element is <{root.tag}>, expected <{doc}>")
    incarnation = required_element(root, "Incarnation", doc)
    role = find(root, "Role")
    deployment = find(root, "Deployment")
    raw = text if isinstance(text, str) else text.decode("utf-8-sig", errors="replace")
    return HostingEnvironmentConfig(
        vm_name=required_attribute(incarnation, "instance", doc, "Incarnation"),
        role_name=attribute(role, "name") if role is not None else None,
        deployment_name=attribute(deployment, "name") if deployment is not None else None,
        xml=raw,
    )


class SharedConfigInstance(NamedTuple):
    """One `Instances/Instance` of SharedConfig."""

    id: str
    address: str | None
    rdma_ipv4_address: str | None
    rdma_mac_address: str | None  # colon-separated, as `ip link` shows it


class SharedConfig(NamedTuple):
    """SharedConfig, kept raw for the few consumers, with the fields they read."""

    deployment_name: str | None
    role_name: str | None
    instances: tuple[SharedConfigInstance, ...]
    xml: str

    @property
    def rdma(self) -> SharedConfigInstance | None:
        """The first instance that carries RDMA addresses (OS.EnableRDMA), if any."""
        return next((i for i in self.instances if i.rdma_ipv4_address), None)


def parse_shared_config(text: str | bytes) -> SharedConfig:
    """Parse SharedConfig."""
    doc = "SharedConfig"
    root = parse_xml(text, doc)
    if root.tag != doc:
        raise DocumentError(doc, f"root element is <{root.tag}>, expected <{doc}>")
    deployment = find(root, "Deployment")
    role = find(root, "Role")
    instances = []
    for element in root.iter():
        if element.tag != "Instance":
            continue
        mac = attribute(element, "rdmaMacAddress")
        if mac and ":" not in mac:
            mac = ":".join(mac[i:i + 2] for i in range(0, len(mac), 2))
        instances.append(SharedConfigInstance(
            id=required_attribute(element, "id", doc, "Instance"),
            address=attribute(element, "address"),
            rdma_ipv4_address=attribute(element, "rdmaIPv4Address"),
            rdma_mac_address=mac,
        ))
    raw = text if isinstance(text, str) else text.decode("utf-8-sig", errors="replace")
    return SharedConfig(
        deployment_name=attribute(deployment, "name") if deployment is not None else None,
        role_name=attribute(role, "name") if role is not None else None,
        instances=tuple(instances),
        xml=raw,
    )


# -- certificates document ------------------------------------------------------------------

class CertificateFile(NamedTuple):
    """The Certificates document: its format and the base64 CMS blob (None when absent)."""

    format: str | None
    data: str | None
    incarnation: str | None

    @property
    def is_pfx(self) -> bool:
        """True unless another format is named: an empty Format is PFX, as the platform sends."""
        return self.format is None or self.format == PFX_FORMAT


def parse_certificate_file(text: str | bytes) -> CertificateFile:
    """Parse the Certificates document (decryption is `wire.certs`' job)."""
    doc = "Certificates"
    root = parse_xml(text, doc)
    if root.tag != "CertificateFile":
        raise DocumentError(doc, f"root element is <{root.tag}>, expected <CertificateFile>")
    return CertificateFile(text_at(root, "Format"), text_at(root, "Data"),
                           text_at(root, "Incarnation"))


# -- reports --------------------------------------------------------------------------------

HealthState = Literal["Ready", "NotReady"]
HealthSubStatus = Literal["Provisioning", "ProvisioningFailed"]


class HealthReport(NamedTuple):
    """What `POST /machine?comp=health` says: Ready, or NotReady with a sub-status."""

    state: HealthState
    substatus: HealthSubStatus | None = None
    description: str | None = None

    @classmethod
    def ready(cls) -> HealthReport:
        """The VM is provisioned and the agent is running."""
        return cls("Ready")

    @classmethod
    def provisioning(cls, description: str = "Provisioning") -> HealthReport:
        """Provisioning is under way."""
        return cls("NotReady", "Provisioning", description)

    @classmethod
    def failed(cls, reason: str) -> HealthReport:
        """Provisioning failed; the reason reaches the platform (and the operator)."""
        return cls("NotReady", "ProvisioningFailed", reason)


def _truncated_escape(text: str, limit: int) -> str:
    """XML-escaped text cut (at a character boundary) so the escaped form fits `limit` bytes."""
    escaped = escape(text)
    if len(escaped.encode()) <= limit:
        return escaped
    low, high = 0, len(text)
    while low < high:  # the longest prefix whose escaped form fits
        middle = (low + high + 1) // 2
        if len(escape(text[:middle]).encode()) <= limit:
            low = middle
        else:
            high = middle - 1
    return escape(text[:low])


def health_report_xml(incarnation: str, container_id: str, role_instance_id: str,
                      report: HealthReport) -> str:
    """The health report document (PLATFORM.md section 2), description escaped and bounded."""
    details = ""
    if report.state != "Ready" and report.substatus:
        description = _truncated_escape(report.description or "", MAX_HEALTH_DESCRIPTION_BYTES)
        details = (f"<Details><SubStatus>{report.substatus}</SubStatus>"
                   f"<Description>{description}</Description></Details>")
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
        f"<GoalStateIncarnation>{escape(incarnation)}</GoalStateIncarnation>"
        f"<Container><ContainerId>{escape(container_id)}</ContainerId>"
        f"<RoleInstanceList><Role><InstanceId>{escape(role_instance_id)}</InstanceId>"
        f"<Health><State>{report.state}</State>{details}</Health>"
        "</Role></RoleInstanceList></Container></Health>"
    )


def role_properties_xml(container_id: str, role_instance_id: str,
                        properties: dict[str, str]) -> str:
    """The role properties document, e.g. {"CertificateThumbprint": <ssh host key thumb>}."""
    items = "".join(f"<Property name={quoteattr(name)} value={quoteattr(value)}/>"
                    for name, value in properties.items())
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<RoleProperties>'
        f"<Container><ContainerId>{escape(container_id)}</ContainerId>"
        f"<RoleInstances><RoleInstance><Id>{escape(role_instance_id)}</Id>"
        f"<Properties>{items}</Properties>"
        "</RoleInstance></RoleInstances></Container></RoleProperties>"
    )

