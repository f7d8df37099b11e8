"""The goal state's sub-documents: HostingEnvironmentConfig, SharedConfig, Certificates.

Fetched when the goal state changes (a no-op boot does not import this module). Parsers
are pure functions from text to named tuples; a malformed document raises DocumentError
naming the document and the field.
"""

from __future__ import annotations

from typing import NamedTuple

from wire import decode_text
from wire.errors import DocumentError
from wire.xmldoc import (
    attribute,
    find,
    parse_xml,
    required_attribute,
    required_element,
    text_at,
)

PFX_FORMAT = "Pkcs7BlobWithPfxContents"


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
    raw = text if isinstance(text, str) else decode_text(text)
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
    raw = text if isinstance(text, str) else decode_text(text)
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
