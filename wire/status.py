"""The aggregate status blob, v1.1 (PLATFORM.md section 8): what the platform shows as the
VM agent's and its extensions' state.

Pure: `status_blob` builds the JSON document from records; the daemon uploads it
(HostGAPlugin `PUT /status`, or straight to the blob) every loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

STATUS_VERSION = "1.1"
LANG = "en-US"
# What waagent says of a goal state it handled (the portal shows it).
GOAL_STATE_DONE = "GoalState executed successfully"
# What this agent supports, as the platform asks for it (`supportedFeatures`).
SUPPORTED_FEATURES: tuple[tuple[str, str], ...] = (
    ("MultipleExtensionsPerHandler", "1.0"),
    ("FastTrack", "1.0"),
)


def utc_stamp(when: float | None = None) -> str:
    """`2026-12-06T20:00:00Z`, the blob's time format."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def formatted(message: str) -> dict[str, str]:
    return {"lang": LANG, "message": message}


class GuestOSInfo(NamedTuple):
    """`guestOSInfo`: the VM's name and system as the agent sees them."""

    computer_name: str
    os_name: str
    os_version: str
    agent_version: str


class ExtensionStatus(NamedTuple):
    """One extension's status file, as the handler wrote it (the first element)."""

    sequence_number: int
    status: Mapping[str, Any]  # {"name", "operation", "status", "code", "formattedMessage"...}
    name: str | None = None  # multi-config: the extension's name
    timestamp: str | None = None


class HandlerStatus(NamedTuple):
    """One handler in `handlerAggregateStatus`."""

    name: str
    version: str
    status: str  # Ready, NotReady, Installing, Unresponsive
    code: int = 0
    message: str | None = None
    extension: ExtensionStatus | None = None
    multi_config: bool = False


class GoalStateStatus(NamedTuple):
    """`vmArtifactsAggregateStatus.goalStateAggregateStatus`: how the agent handled the
    extensions goal state it was given."""

    in_svd_seq_no: str
    status: str = "Success"  # or Failed
    code: int = 0
    message: str = GOAL_STATE_DONE
    processed: float | None = None


def _message(value: Any) -> dict[str, Any]:
    """A `formattedMessage` as given, or made from its text."""
    if isinstance(value, Mapping):
        return {"lang": value.get("lang", LANG), "message": value.get("message")}
    return {"lang": LANG, "message": value}


def settings_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """An extension's `settingsStatus.status` laid out as waagent 2.7.3's `ext_status_to_v1`
    does, whatever else the handler's status file held: always these six keys
    (`configurationAppliedTime` null when the handler gave none), `substatus` only when it
    has entries, each {name, status, code, formattedMessage}."""
    found: dict[str, Any] = {
        "name": status.get("name"),
        "configurationAppliedTime": status.get("configurationAppliedTime"),
        "operation": status.get("operation"),
        "status": status.get("status"),
        "code": status.get("code", 0),
        "formattedMessage": _message(status.get("formattedMessage")),
    }
    substatus = [{"name": sub.get("name"), "status": sub.get("status"),
                  "code": sub.get("code", 0), "formattedMessage": _message(sub.get("formattedMessage"))}
                 for sub in status.get("substatus") or () if isinstance(sub, Mapping)]
    if substatus:
        found["substatus"] = substatus
    return found


def handler_status(handler: HandlerStatus) -> dict[str, Any]:
    found: dict[str, Any] = {"handlerVersion": handler.version, "handlerName": handler.name,
                             "status": handler.status, "code": handler.code,
                             "useExactVersion": True}
    if handler.message is not None:
        found["formattedMessage"] = formatted(handler.message)
    ext = handler.extension
    if ext is not None:
        settings: dict[str, Any] = {"status": settings_status(ext.status), "version": 1.0,
                                    "timestampUTC": ext.timestamp or utc_stamp()}
        found["runtimeSettingsStatus"] = {"settingsStatus": settings,
                                          "sequenceNumber": ext.sequence_number}
        if handler.multi_config and ext.name is not None:
            found["runtimeSettingsStatus"]["extensionName"] = ext.name
    return found


def status_blob(*, os_info: GuestOSInfo, agent_status: str = "Ready",
                agent_message: str = "Guest Agent is running",
                handlers: Sequence[HandlerStatus] = (),
                goal_state: GoalStateStatus | None = None,
                features: Sequence[tuple[str, str]] = SUPPORTED_FEATURES,
                now: float | None = None) -> dict[str, Any]:
    """The status blob document, as WALinuxAgent's `vm_status_to_v1` lays it out."""
    aggregate: dict[str, Any] = {
        "guestAgentStatus": {"version": os_info.agent_version, "status": agent_status,
                             "formattedMessage": formatted(agent_message)},
        "handlerAggregateStatus": [handler_status(h) for h in handlers],
    }
    if goal_state is not None:
        aggregate["vmArtifactsAggregateStatus"] = {"goalStateAggregateStatus": {
            "formattedMessage": formatted(goal_state.message),
            "timestampUTC": utc_stamp(goal_state.processed),
            "inSvdSeqNo": goal_state.in_svd_seq_no,
            "status": goal_state.status,
            "code": goal_state.code,
        }}
    blob: dict[str, Any] = {
        "version": STATUS_VERSION,
        "timestampUTC": utc_stamp(now),
        "aggregateStatus": aggregate,
        "guestOSInfo": {"computerName": os_info.computer_name, "osName": os_info.os_name,
                        "osVersion": os_info.os_version, "version": os_info.agent_version},
    }
    if features:
        blob["supportedFeatures"] = [{"Key": key, "Value": value} for key, value in features]
    return blob


def encode(blob: Mapping[str, Any]) -> bytes:
    """The bytes uploaded: compact JSON."""
    return json.dumps(blob, separators=(",", ":")).encode()
