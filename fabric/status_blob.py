"""The aggregate status blob v1.1: what its shape must be, as the platform reads it.

PLATFORM.md section 8, and what waagent 2.7.3 builds (vm_status_to_v1 and the
functions it calls in azurelinuxagent/common/protocol/wire.py). One function,
`problems`, returns everything wrong with a blob as readable lines; the fabric
records them with the blob and never refuses an upload for them (the platform
takes what it gets).

Shape checked:

    {"version": "1.1", "timestampUTC": "YYYY-MM-DDTHH:MM:SSZ",
     "guestOSInfo": {"computerName", "osName", "osVersion", "version"},      (strings)
     "supportedFeatures": [{"Key", "Value"}, ...],                           (optional)
     "aggregateStatus": {
        "guestAgentStatus": {"version", "status": Ready|NotReady,
                             "formattedMessage": {"lang", "message"},
                             "updateStatus"?: {"expectedVersion", "status", "code", "formattedMessage"}},
        "handlerAggregateStatus": [
            {"handlerVersion", "handlerName", "status": Ready|NotReady|Installing|Unresponsive,
             "code": int, "useExactVersion": bool, "formattedMessage"?: {"lang", "message"},
             "runtimeSettingsStatus"?: {"settingsStatus": {"status": {...}, "version", "timestampUTC"},
                                        "sequenceNumber": int, "extensionName"?: str}}],
        "vmArtifactsAggregateStatus"?: {"goalStateAggregateStatus": {
            "formattedMessage", "timestampUTC", "inSvdSeqNo", "status": Success|Failed|..., "code"}}}}

vmArtifactsAggregateStatus may be missing: waagent leaves it out until it has processed
a goal state. Keys the platform does not know are not problems.
"""

from __future__ import annotations

import re
from typing import Any

VERSION = "1.1"
AGENT_STATUSES = ("Ready", "NotReady")
HANDLER_STATUSES = ("Ready", "NotReady", "Installing", "Unresponsive")
EXTENSION_STATUSES = ("transitioning", "warning", "error", "success")
GOAL_STATE_STATUSES = ("Success", "Failed", "Initialize", "Transitioning")
UPDATE_STATUSES = ("Success", "Transitioning", "Error", "Unknown")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def problems(blob: Any) -> list[str]:
    """What is wrong with a decoded status blob, one line each naming the key path; [] if nothing."""
    found: list[str] = []
    check = _Checker(found)
    if not isinstance(blob, dict):
        return [f"the status blob is a {_kind(blob)}, not a JSON object"]
    if check.key(blob, "version", "", str) and blob["version"] != VERSION:
        found.append(f"version: {blob['version']!r}, expected {VERSION!r}")
    check.timestamp(blob, "timestampUTC", "")
    info = check.key(blob, "guestOSInfo", "", dict)
    if info:
        for name in ("computerName", "osName", "osVersion", "version"):
            check.key(blob["guestOSInfo"], name, "guestOSInfo", str)
    if "supportedFeatures" in blob:
        features = blob["supportedFeatures"]
        if not isinstance(features, list):
            found.append(f"supportedFeatures: a {_kind(features)}, expected a list of {{Key, Value}}")
        else:
            for i, feature in enumerate(features):
                where = f"supportedFeatures[{i}]"
                if check.is_object(feature, where):
                    check.key(feature, "Key", where, str)
                    check.key(feature, "Value", where, str)
    if check.key(blob, "aggregateStatus", "", dict):
        _aggregate(blob["aggregateStatus"], check)
    for misplaced in ("handlerAggregateStatus", "vmArtifactsAggregateStatus", "guestAgentStatus"):
        if misplaced in blob:
            found.append(f"{misplaced}: at the top level; it belongs inside aggregateStatus")
    return found


def _aggregate(aggregate: dict[str, Any], check: _Checker) -> None:
    where = "aggregateStatus"
    if check.key(aggregate, "guestAgentStatus", where, dict):
        agent = aggregate["guestAgentStatus"]
        where_agent = f"{where}.guestAgentStatus"
        check.key(agent, "version", where_agent, str)
        check.choice(agent, "status", where_agent, AGENT_STATUSES)
        check.message(agent, "formattedMessage", where_agent)
        if "updateStatus" in agent and check.key(agent, "updateStatus", where_agent, dict):
            update = agent["updateStatus"]
            where_update = f"{where_agent}.updateStatus"
            check.key(update, "expectedVersion", where_update, str)
            check.choice(update, "status", where_update, UPDATE_STATUSES)
            check.key(update, "code", where_update, int)
            check.message(update, "formattedMessage", where_update)
    if check.key(aggregate, "handlerAggregateStatus", where, list):
        for i, handler in enumerate(aggregate["handlerAggregateStatus"]):
            _handler(handler, f"{where}.handlerAggregateStatus[{i}]", check)
    if "vmArtifactsAggregateStatus" in aggregate and check.key(aggregate, "vmArtifactsAggregateStatus", where, dict):
        artifacts = aggregate["vmArtifactsAggregateStatus"]
        where_artifacts = f"{where}.vmArtifactsAggregateStatus"
        if check.key(artifacts, "goalStateAggregateStatus", where_artifacts, dict):
            goal_state = artifacts["goalStateAggregateStatus"]
            where_gs = f"{where_artifacts}.goalStateAggregateStatus"
            check.message(goal_state, "formattedMessage", where_gs)
            check.timestamp(goal_state, "timestampUTC", where_gs)
            check.key(goal_state, "inSvdSeqNo", where_gs, (str, int))
            check.choice(goal_state, "status", where_gs, GOAL_STATE_STATUSES)
            check.key(goal_state, "code", where_gs, int)


def _handler(handler: Any, where: str, check: _Checker) -> None:
    if not check.is_object(handler, where):
        return
    check.key(handler, "handlerVersion", where, str)
    check.key(handler, "handlerName", where, str)
    check.choice(handler, "status", where, HANDLER_STATUSES)
    check.key(handler, "code", where, int)
    check.key(handler, "useExactVersion", where, bool)
    if "formattedMessage" in handler:
        check.message(handler, "formattedMessage", where)
    if "runtimeSettingsStatus" not in handler or not check.key(handler, "runtimeSettingsStatus", where, dict):
        return
    runtime = handler["runtimeSettingsStatus"]
    where_rt = f"{where}.runtimeSettingsStatus"
    check.key(runtime, "sequenceNumber", where_rt, int)
    if "extensionName" in runtime:
        check.key(runtime, "extensionName", where_rt, str)
    if check.key(runtime, "settingsStatus", where_rt, dict):
        settings = runtime["settingsStatus"]
        where_st = f"{where_rt}.settingsStatus"
        check.timestamp(settings, "timestampUTC", where_st)
        check.key(settings, "version", where_st, (str, int, float))
        if check.key(settings, "status", where_st, dict):
            status = settings["status"]
            where_s = f"{where_st}.status"
            check.key(status, "name", where_s, (str, type(None)))
            check.key(status, "operation", where_s, (str, type(None)))
            check.choice(status, "status", where_s, EXTENSION_STATUSES)
            check.key(status, "code", where_s, (int, str))
            check.message(status, "formattedMessage", where_s, nullable=True)
            if "substatus" in status and check.key(status, "substatus", where_s, list):
                for i, sub in enumerate(status["substatus"]):
                    where_sub = f"{where_s}.substatus[{i}]"
                    if check.is_object(sub, where_sub):
                        check.key(sub, "name", where_sub, (str, type(None)))
                        check.choice(sub, "status", where_sub, EXTENSION_STATUSES)
                        check.key(sub, "code", where_sub, (int, str))
                        check.message(sub, "formattedMessage", where_sub, nullable=True)


def _kind(value: Any) -> str:
    names = {dict: "JSON object", list: "list", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _path(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


class _Checker:
    """Appends a line to `found` for each check that fails; each check says whether it passed."""

    def __init__(self, found: list[str]) -> None:
        self.found = found

    def is_object(self, value: Any, where: str) -> bool:
        if isinstance(value, dict):
            return True
        self.found.append(f"{where}: a {_kind(value)}, expected a JSON object")
        return False

    def key(self, parent: dict[str, Any], name: str, where: str, kind: type | tuple[type, ...]) -> bool:
        path = _path(where, name)
        if name not in parent:
            self.found.append(f"{path}: missing")
            return False
        value = parent[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # JSON true/false are not numbers here, though Python's bool is an int.
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            wanted = " or ".join(_kind(k()) if k is not type(None) else "null" for k in kinds)
            self.found.append(f"{path}: a {_kind(value)} ({value!r:.60}), expected a {wanted}")
        return ok

    def choice(self, parent: dict[str, Any], name: str, where: str, allowed: tuple[str, ...]) -> bool:
        if not self.key(parent, name, where, str):
            return False
        if parent[name] not in allowed:
            self.found.append(f"{_path(where, name)}: {parent[name]!r}, expected one of {', '.join(allowed)}")
            return False
        return True

    def message(self, parent: dict[str, Any], name: str, where: str, nullable: bool = False) -> None:
        """{"lang", "message"}; nullable: the message may be null (waagent's extension statuses)."""
        if self.key(parent, name, where, dict):
            path = _path(where, name)
            self.key(parent[name], "lang", path, str)
            self.key(parent[name], "message", path, (str, type(None)) if nullable else str)

    def timestamp(self, parent: dict[str, Any], name: str, where: str) -> None:
        if self.key(parent, name, where, str) and not _TIMESTAMP.match(parent[name]):
            self.found.append(f"{_path(where, name)}: {parent[name]!r} is not a UTC time like 2024-01-31T12:00:00Z")
