"""What extension handlers write: HandlerManifest.json, status files and heartbeat files
(facts/extensions.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facts.extensions import (
    ExtensionError,
    heartbeat,
    parse_handler_manifest,
    parse_status,
    read_status_file,
)
from tests.campaigns.harness import campaign, holds
from tests.campaigns.strategies import (
    JSON_TOKENS,
    fixture_files,
    json_text,
    json_values,
    mutated,
    mutations_of,
    shaped,
    tricky_text,
)

pytestmark = pytest.mark.campaign

COMMAND = st.one_of(st.sampled_from(["bin/install.sh", "/bin/enable.sh", " ", ""]), tricky_text())
FLAG = st.one_of(st.booleans(), st.sampled_from(["true", "False", "yes"]))
HANDLER_MANIFEST = st.lists(shaped({
    "version": st.one_of(st.floats(), VERSIONS := st.sampled_from(["1.0", "1", ""])),
    "name": tricky_text(),
    "handlerManifest": shaped({
        "installCommand": COMMAND, "uninstallCommand": COMMAND, "updateCommand": COMMAND,
        "enableCommand": COMMAND, "disableCommand": COMMAND, "rebootAfterInstall": FLAG,
        "reportHeartbeat": FLAG, "updateMode": st.sampled_from(["UpdateWithInstall",
                                                                "UpdateWithoutInstall", "x"]),
        "continueOnUpdateFailure": FLAG, "supportsMultipleExtensions": FLAG}),
    "resourceLimits": shaped({"cpuQuotaPercentage": st.integers(), "memoryQuotaInMB":
                              json_values(3)})}), max_size=2)

CODE = st.one_of(st.integers(), st.floats(), st.sampled_from(["0", " 1 ", "x", "²", "9" * 5000]))
MESSAGE = shaped({"lang": st.just("en-US"), "message": tricky_text()})
STATUS_VALUE = st.sampled_from(["transitioning", "warning", "error", "success", "x"])
STATUS = st.lists(shaped({
    "version": VERSIONS, "timestampUTC": tricky_text(),
    "status": shaped({"name": tricky_text(), "operation": tricky_text(),
                      "configurationAppliedTime": tricky_text(), "status": STATUS_VALUE,
                      "code": CODE, "formattedMessage": MESSAGE,
                      "substatus": st.lists(shaped({"name": tricky_text(), "status": STATUS_VALUE,
                                                    "code": CODE, "formattedMessage": MESSAGE}),
                                            max_size=3)})}), max_size=2)
HEARTBEAT = st.lists(shaped({"version": VERSIONS, "heartbeat": shaped({
    "status": STATUS_VALUE, "code": CODE, "formattedMessage": MESSAGE,
    "message": tricky_text()})}), max_size=2)


def _json_inputs(grammar: st.SearchStrategy[object], *patterns: str) -> st.SearchStrategy[bytes]:
    built = grammar.map(json_text).flatmap(lambda d: mutated(d, JSON_TOKENS, 2))
    return st.one_of(built, mutations_of(fixture_files(*patterns), JSON_TOKENS))


@campaign(1.5)
@given(_json_inputs(HANDLER_MANIFEST, "walinuxagent/ext/handler_manifest/*.json",
                    "walinuxagent/ext/sample_ext-1.3.0/HandlerManifest.json"))
def test_handler_manifest(data: bytes) -> None:
    # As read_handler_manifest decodes the file.
    text = data.decode("utf-8", errors="replace")
    holds("HandlerManifest.json", lambda: parse_handler_manifest(text, source="x"),
          (ExtensionError,), size=len(data))


@campaign(1.5)
@given(_json_inputs(STATUS, "walinuxagent/ext/sample-status*.json"))
def test_status_file(data: bytes) -> None:
    # As read_status_file decodes the file; a malformed one is an error status, never raises.
    text = data.decode("utf-8", errors="backslashreplace")
    status = holds("extension status", lambda: parse_status(text, handler="Ext.A-1.0"),
                   size=len(data))
    assert status.status in ("transitioning", "warning", "error", "success")


@campaign(0.3)
@given(_json_inputs(STATUS, "walinuxagent/ext/sample-status*.json"))
def test_status_file_read(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("status", numbered=True) / "0.status"
    path.write_bytes(data)
    holds("extension status", lambda: read_status_file(path, handler="Ext.A-1.0", retries=0),
          size=len(data))


@campaign(1)
@given(_json_inputs(HEARTBEAT, "walinuxagent/ext/sample-status.json"))
def test_heartbeat(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path: Path = tmp_path_factory.mktemp("heartbeat", numbered=True) / "heartbeat.log"
    path.write_bytes(data)
    now = time.time()
    os.utime(path, (now, now))
    holds("extension status", lambda: heartbeat(path, now), (ExtensionError,), size=len(data))
