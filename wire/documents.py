"""WireServer documents every boot reads: the protocol versions and the goal state.

Parsers are pure functions from text to named tuples; a malformed document
raises DocumentError naming the document and the field. What a changed goal state
brings is elsewhere, imported only then: its sub-documents in `wire.subdocuments`,
ExtensionsConfig and the manifests in `wire.extensions_config`; the reports the agent
sends are in `wire.reports`.
"""

from __future__ import annotations

from typing import NamedTuple

from wire import decode_text
from wire.errors import DocumentError
from wire.xmldoc import children, find, parse_xml, required_text, text_at

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
    raw = text if isinstance(text, str) else decode_text(text)
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
