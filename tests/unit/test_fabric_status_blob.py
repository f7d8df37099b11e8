"""The status blob v1.1 shape check: a right blob has no problems, each wrong part is named."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fabric.status_blob import problems
from tests.support.fixtures import FIXTURES

WALINUXAGENT = FIXTURES / "walinuxagent"


def good_blob() -> dict[str, Any]:
    """A status blob as PLATFORM.md section 8 describes it, with one handler in each form."""
    return {
        "version": "1.1",
        "timestampUTC": "2024-05-01T10:00:00Z",
        "guestOSInfo": {"computerName": "demo-vm", "osName": "debian", "osVersion": "12",
                        "version": "2.7.3"},
        "supportedFeatures": [{"Key": "MultipleExtensionsPerHandler", "Value": "1.0"},
                              {"Key": "FastTrack", "Value": "1.0"}],
        "aggregateStatus": {
            "guestAgentStatus": {
                "version": "2.7.3", "status": "Ready",
                "formattedMessage": {"lang": "en-US", "message": "Guest Agent is running"},
                "updateStatus": {"expectedVersion": "2.7.3", "status": "Success", "code": 0,
                                 "formattedMessage": {"lang": "en-US", "message": ""}},
            },
            "handlerAggregateStatus": [
                {"handlerVersion": "1.0.0", "handlerName": "Fabric.Demo.NoOp", "status": "Ready",
                 "code": 0, "useExactVersion": True,
                 "formattedMessage": {"lang": "en-US", "message": "Plugin enabled"},
                 "runtimeSettingsStatus": {
                     "settingsStatus": {
                         "status": {"name": "Fabric.Demo.NoOp", "configurationAppliedTime": None,
                                    "operation": "Enable", "status": "success", "code": 0,
                                    "formattedMessage": {"lang": "en-US", "message": "done"},
                                    "substatus": [{"name": "step", "status": "success", "code": 0,
                                                   "formattedMessage": {"lang": "en-US", "message": ""}}]},
                         "version": 1.0, "timestampUTC": "2024-05-01T10:00:00Z"},
                     "sequenceNumber": 0}},
                {"handlerVersion": "1.0.0", "handlerName": "Multi.Config", "status": "NotReady",
                 "code": 1009, "useExactVersion": True,
                 "runtimeSettingsStatus": {
                     "settingsStatus": {
                         "status": {"name": "first", "operation": "Enable", "status": "error",
                                    "code": 1009, "formattedMessage": {"lang": "en-US", "message": "x"}},
                         "version": 1.0, "timestampUTC": "2024-05-01T10:00:00Z"},
                     "sequenceNumber": 3, "extensionName": "first"}},
                {"handlerVersion": "2.0", "handlerName": "Not.Installed", "status": "NotReady",
                 "code": 0, "useExactVersion": True},
            ],
            "vmArtifactsAggregateStatus": {"goalStateAggregateStatus": {
                "formattedMessage": {"lang": "en-US", "message": "GoalState executed successfully"},
                "timestampUTC": "2024-05-01T09:59:58Z", "inSvdSeqNo": "1", "status": "Success", "code": 0}},
        },
    }


def test_a_right_blob_has_no_problems() -> None:
    assert problems(good_blob()) == []


def test_optional_parts_may_be_missing() -> None:
    blob = good_blob()
    del blob["supportedFeatures"]
    del blob["aggregateStatus"]["vmArtifactsAggregateStatus"]  # waagent: before its first goal state
    del blob["aggregateStatus"]["guestAgentStatus"]["updateStatus"]
    blob["aggregateStatus"]["handlerAggregateStatus"] = []
    assert problems(blob) == []


def test_unknown_keys_are_not_problems() -> None:
    blob = good_blob()
    blob["somethingNew"] = 1
    blob["aggregateStatus"]["guestAgentStatus"]["extra"] = {}
    assert problems(blob) == []


def edited(path: str, value: Any) -> dict[str, Any]:
    """good_blob() with the value at a dotted path (list indexes as numbers) replaced; ... deletes."""
    blob = good_blob()
    *parents, last = path.split(".")
    node: Any = blob
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return blob


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("version", "1.0", "version: '1.0', expected '1.1'"),
    ("version", ..., "version: missing"),
    ("timestampUTC", "yesterday", "timestampUTC: 'yesterday' is not a UTC time"),
    ("guestOSInfo", ..., "guestOSInfo: missing"),
    ("guestOSInfo.osVersion", 12, "guestOSInfo.osVersion: a number (12), expected a string"),
    ("guestOSInfo.computerName", ..., "guestOSInfo.computerName: missing"),
    ("supportedFeatures", {"Key": "FastTrack"}, "supportedFeatures: a JSON object, expected a list"),
    ("supportedFeatures.0.Value", ..., "supportedFeatures[0].Value: missing"),
    ("aggregateStatus", ..., "aggregateStatus: missing"),
    ("aggregateStatus.guestAgentStatus.status", "Running",
     "aggregateStatus.guestAgentStatus.status: 'Running', expected one of Ready, NotReady"),
    ("aggregateStatus.guestAgentStatus.formattedMessage", "hello",
     "aggregateStatus.guestAgentStatus.formattedMessage: a string ('hello'), expected a JSON object"),
    ("aggregateStatus.guestAgentStatus.formattedMessage.lang", ...,
     "aggregateStatus.guestAgentStatus.formattedMessage.lang: missing"),
    ("aggregateStatus.guestAgentStatus.updateStatus.expectedVersion", ...,
     "aggregateStatus.guestAgentStatus.updateStatus.expectedVersion: missing"),
    ("aggregateStatus.handlerAggregateStatus", ..., "aggregateStatus.handlerAggregateStatus: missing"),
    ("aggregateStatus.handlerAggregateStatus.0.code", "0",
     "aggregateStatus.handlerAggregateStatus[0].code: a string ('0'), expected a number"),
    ("aggregateStatus.handlerAggregateStatus.0.useExactVersion", "true",
     "aggregateStatus.handlerAggregateStatus[0].useExactVersion: a string ('true'), expected a boolean"),
    ("aggregateStatus.handlerAggregateStatus.0.status", "success",
     "aggregateStatus.handlerAggregateStatus[0].status: 'success', expected one of Ready, NotReady"),
    ("aggregateStatus.handlerAggregateStatus.0.handlerName", ...,
     "aggregateStatus.handlerAggregateStatus[0].handlerName: missing"),
    ("aggregateStatus.handlerAggregateStatus.0.runtimeSettingsStatus.sequenceNumber", ...,
     "aggregateStatus.handlerAggregateStatus[0].runtimeSettingsStatus.sequenceNumber: missing"),
    ("aggregateStatus.handlerAggregateStatus.1.runtimeSettingsStatus.extensionName", 7,
     "aggregateStatus.handlerAggregateStatus[1].runtimeSettingsStatus.extensionName: a number"),
    ("aggregateStatus.handlerAggregateStatus.0.runtimeSettingsStatus.settingsStatus.status.status", "Ready",
     "settingsStatus.status.status: 'Ready', expected one of transitioning, warning, error, success"),
    ("aggregateStatus.vmArtifactsAggregateStatus.goalStateAggregateStatus.inSvdSeqNo", ...,
     "aggregateStatus.vmArtifactsAggregateStatus.goalStateAggregateStatus.inSvdSeqNo: missing"),
    ("aggregateStatus.vmArtifactsAggregateStatus.goalStateAggregateStatus.status", "Ready",
     "goalStateAggregateStatus.status: 'Ready', expected one of Success, Failed"),
    ("aggregateStatus.vmArtifactsAggregateStatus", {}, "vmArtifactsAggregateStatus.goalStateAggregateStatus: missing"),
])
def test_each_problem_is_named(path: str, value: Any, expected: str) -> None:
    found = problems(edited(path, value))
    assert any(expected in line for line in found), found
    assert len(found) == 1, found


def test_handler_status_at_the_top_level_is_misplaced() -> None:
    """The mistake PLATFORM.md section 8 was corrected for: the lists belong in aggregateStatus."""
    blob = good_blob()
    aggregate = blob["aggregateStatus"]
    blob["handlerAggregateStatus"] = aggregate.pop("handlerAggregateStatus")
    blob["vmArtifactsAggregateStatus"] = aggregate.pop("vmArtifactsAggregateStatus")
    found = problems(blob)
    assert "aggregateStatus.handlerAggregateStatus: missing" in found
    assert "handlerAggregateStatus: at the top level; it belongs inside aggregateStatus" in found
    assert "vmArtifactsAggregateStatus: at the top level; it belongs inside aggregateStatus" in found


@pytest.mark.parametrize(("blob", "kind"), [(None, "null"), ([], "list"), ("text", "string"), (3, "number")])
def test_not_an_object(blob: Any, kind: str) -> None:
    assert problems(blob) == [f"the status blob is a {kind}, not a JSON object"]


def test_every_problem_at_once() -> None:
    blob = good_blob()
    blob["version"] = 1.1
    blob["guestOSInfo"] = {}
    blob["aggregateStatus"]["handlerAggregateStatus"][0] = "Ready"
    found = problems(blob)
    assert "version: a number (1.1), expected a string" in found
    assert len([p for p in found if p.startswith("guestOSInfo.")]) == 4
    assert "aggregateStatus.handlerAggregateStatus[0]: a string, expected a JSON object" in found


# Runs under the system Python, where Debian's waagent 2.7.3 is installed as the parity reference.
WAAGENT_BLOB = """
import json
from azurelinuxagent.common.protocol import restapi, wire
gs = restapi.GoalStateAggregateStatus(seq_no="1", status="Success", message="GoalState executed successfully", code=0)
status = restapi.VMStatus(status="Ready", message="Guest Agent is running", gs_aggregate_status=gs)
handler = restapi.ExtHandlerStatus(name="Fabric.Demo.NoOp", version="1.0.0", status="Ready", message="Plugin enabled")
ext = restapi.ExtensionStatus(name="Fabric.Demo.NoOp", operation="Enable", status="success", seq_no=0, code=0, message="ok")
sub = restapi.ExtensionSubStatus()
sub.name, sub.status, sub.code, sub.message = "step", "success", 0, "fine"
ext.substatusList.append(sub)
handler.extension_status = ext
status.vmAgent.extensionHandlers.append(handler)
bare = restapi.ExtHandlerStatus(name="Not.Installed", version="2.0", status="NotReady")
status.vmAgent.extensionHandlers.append(bare)
print(json.dumps(wire.vm_status_to_v1(status)))
"""


def test_a_status_blob_built_by_waagent_2_7_3() -> None:
    """waagent's own vm_status_to_v1 (Debian's waagent 2.7.3, the parity reference) passes."""
    python = "/usr/bin/python3"
    if not Path(python).exists() or subprocess.run([python, "-c", "import azurelinuxagent"],
                                                   capture_output=True, timeout=60).returncode:
        pytest.skip("Debian's waagent (azurelinuxagent for /usr/bin/python3) is not installed")
    done = subprocess.run([python, "-c", WAAGENT_BLOB], capture_output=True, text=True, timeout=60, check=True)
    blob = json.loads(done.stdout)
    assert blob["aggregateStatus"]["handlerAggregateStatus"][0]["runtimeSettingsStatus"]["sequenceNumber"] == 0
    assert problems(blob) == []
    del blob["aggregateStatus"]["guestAgentStatus"]["version"]
    assert problems(blob) == ["aggregateStatus.guestAgentStatus.version: missing"]


def test_fixture_extension_status_in_settings_status() -> None:
    """An extension's status file (fixture ext/sample-status.json, from a real handler) in
    settingsStatus: string codes and versions pass; its substatus formattedMessage null is
    named, since waagent rebuilds every formattedMessage as an object before uploading."""
    path = WALINUXAGENT / "ext" / "sample-status.json"
    handler_status = json.loads(path.read_text())[0]
    blob = good_blob()
    entry = blob["aggregateStatus"]["handlerAggregateStatus"][0]
    entry["runtimeSettingsStatus"]["settingsStatus"] = copy.deepcopy(handler_status)
    assert problems(blob) == [
        "aggregateStatus.handlerAggregateStatus[0].runtimeSettingsStatus.settingsStatus.status"
        ".substatus[0].formattedMessage: a null (None), expected a JSON object"]


def test_null_messages_of_extensions_pass() -> None:
    """waagent sends {"lang": "en-US", "message": null} for an extension status without a message."""
    blob = good_blob()
    settings = blob["aggregateStatus"]["handlerAggregateStatus"][0]["runtimeSettingsStatus"]["settingsStatus"]
    settings["status"]["formattedMessage"]["message"] = None
    settings["status"]["substatus"][0]["formattedMessage"]["message"] = None
    assert problems(blob) == []
    blob["aggregateStatus"]["guestAgentStatus"]["formattedMessage"]["message"] = None
    assert problems(blob) == ["aggregateStatus.guestAgentStatus.formattedMessage.message: a null (None), "
                              "expected a string"]
