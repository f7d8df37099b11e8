"""The documents the agent sends the WireServer: health reports and role properties."""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

MAX_HEALTH_DESCRIPTION_BYTES = 4096

# Every character XML 1.0 does not allow, not even as a character reference: its Char
# production keeps tab, LF, CR and U+0020 up, without the surrogates, U+FFFE and U+FFFF.
# Such text comes from commands' output (ANSI colours in a script's stderr, bytes decoded
# with surrogateescape); one of them makes the platform reject the whole report. Written as
# the forbidden set: the negated allowed set compiles into a 64K-entry table at import.
_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
REPLACEMENT = "\ufffd"


def xml_chars(text: str) -> str:
    """Text with each character XML 1.0 does not allow replaced by U+FFFD."""
    return _NOT_XML_CHAR.sub(REPLACEMENT, text)


def escape(text: str) -> str:
    """Text safe inside an XML 1.0 element, whatever it holds.

    (xml.sax.saxutils pulls in urllib.request, and leaves control characters.)
    """
    return xml_chars(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quoteattr(text: str) -> str:
    """A double-quoted XML attribute value; tab, LF and CR as references so they survive
    attribute-value normalisation."""
    return ('"' + escape(text).replace('"', "&quot;").replace("\t", "&#9;")
            .replace("\n", "&#10;").replace("\r", "&#13;") + '"')


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
