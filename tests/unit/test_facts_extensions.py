"""facts/extensions.py against WALinuxAgent's fixtures: manifests, status files, heartbeat."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from facts.extensions import (
    CODE_STATUS_INVALID,
    MAX_STATUS_MESSAGE_CHARS,
    MAX_SUBSTATUS_FIELD_CHARS,
    TRUNCATED_SUFFIX,
    UNRESPONSIVE,
    ExtensionError,
    Heartbeat,
    heartbeat,
    parse_handler_manifest,
    parse_status,
    read_handler_manifest,
    read_status_file,
)


@pytest.fixture
def ext(fixtures: Path) -> Path:
    return fixtures / "walinuxagent" / "ext"


def manifest(ext: Path, name: str) -> object:
    path = ext / "handler_manifest" / name
    return parse_handler_manifest(path.read_text(), source=str(path))


# --- HandlerManifest.json ------------------------------------------------------------


def test_valid_manifest(ext: Path) -> None:
    m = manifest(ext, "valid_manifest.json")
    assert m == m._replace()  # a NamedTuple
    assert (m.name, m.version) == ("ExampleHandlerLinux", "1.0")
    assert (m.install_command, m.uninstall_command, m.update_command, m.enable_command,
            m.disable_command) == ("install_cmd", "uninstall_cmd", "update_cmd",
                                   "enable_cmd", "disable_cmd")
    assert m.report_heartbeat and m.continue_on_update_failure
    assert m.supports_multiple_extensions
    assert m.update_with_install and m.resource_limits is None and not m.warnings


def test_manifest_without_optional_fields_takes_waagents_defaults(ext: Path) -> None:
    m = manifest(ext, "manifest_no_optional_fields.json")
    assert not (m.report_heartbeat or m.continue_on_update_failure
                or m.supports_multiple_extensions)
    assert m.update_mode == "UpdateWithInstall" and m.update_with_install


def test_manifest_booleans_as_strings(ext: Path) -> None:
    m = manifest(ext, "manifest_boolean_fields_strings.json")
    assert m.report_heartbeat and m.continue_on_update_failure
    assert m.supports_multiple_extensions  # "True": any case
    m = manifest(ext, "manifest_boolean_fields_false.json")
    assert not (m.report_heartbeat or m.continue_on_update_failure
                or m.supports_multiple_extensions)
    assert not m.warnings


def test_manifest_invalid_booleans_are_false_with_a_warning(ext: Path) -> None:
    m = manifest(ext, "manifest_boolean_fields_invalid.json")
    assert not (m.report_heartbeat or m.continue_on_update_failure
                or m.supports_multiple_extensions)
    assert len(m.warnings) == 3 and "reportHeartbeat='invalid'" in m.warnings[0]


def test_sample_ext_manifest(ext: Path) -> None:
    m = read_handler_manifest(ext / "sample_ext-1.3.0" / "HandlerManifest.json")
    assert m.enable_command == "sample.py -enable" and not m.report_heartbeat


def test_update_mode_and_resource_limits() -> None:
    text = json.dumps([{"name": "A", "version": "2.0", "handlerManifest": {
        **{k: f"{k}.sh" for k in ("installCommand", "uninstallCommand", "updateCommand",
                                 "enableCommand", "disableCommand")},
        "updateMode": "updatewithoutinstall"},
        "resourceLimits": {"cpuQuota": 25, "memoryQuota": 256}}])
    m = parse_handler_manifest("\ufeff" + text, source="/x/HandlerManifest.json")
    assert not m.update_with_install
    assert m.resource_limits == {"cpuQuota": 25, "memoryQuota": 256}


@pytest.mark.parametrize(("text", "needle"), [
    ("{", "not valid JSON"),
    ("[]", "empty list"),
    ("{}", "expected a JSON list"),
    ('[{"name": "A"}]', '"handlerManifest" is missing'),
    ('[{"handlerManifest": {"installCommand": "i"}}]', "uninstallCommand"),
    ('[{"handlerManifest": {"installCommand": "i", "uninstallCommand": "u", '
     '"updateCommand": "u", "enableCommand": 3, "disableCommand": "d"}}]', "enableCommand"),
    ('[{"handlerManifest": {"installCommand": "i", "uninstallCommand": "u", '
     '"updateCommand": "u", "enableCommand": "e", "disableCommand": "d", '
     '"updateMode": 1}}]', "updateMode"),
    ('[{"handlerManifest": {"installCommand": "i", "uninstallCommand": "u", '
     '"updateCommand": "u", "enableCommand": "e", "disableCommand": "d"}, '
     '"resourceLimits": []}]', "resourceLimits"),
])
def test_bad_manifests_name_the_file_and_field(text: str, needle: str) -> None:
    with pytest.raises(ExtensionError) as err:
        parse_handler_manifest(text, source="/var/lib/waagent/A-1.0/HandlerManifest.json")
    assert "/var/lib/waagent/A-1.0/HandlerManifest.json" in str(err.value)
    assert needle in str(err.value) and err.value.code == 1003


def test_missing_manifest_is_1002(tmp_path: Path) -> None:
    with pytest.raises(ExtensionError) as err:
        read_handler_manifest(tmp_path / "HandlerManifest.json")
    assert err.value.code == 1002 and str(tmp_path) in str(err.value)


# --- status files --------------------------------------------------------------------


def test_sample_status(ext: Path) -> None:
    s = read_status_file(ext / "sample-status.json", handler="A-1.0")
    assert s.found and s.problem is None and s.terminal
    assert (s.status, s.code, s.name) == ("success", 1, "Microsoft.Azure.Extension.VMExtension")
    assert s.message is not None and s.message.startswith("Aenean semper")
    assert s.substatus and s.substatus[0].code == "0"  # as written, as waagent reports it
    assert s.substatus[0].message is None  # "formattedMessage": null


def test_status_over_128k_is_capped(ext: Path) -> None:
    path = ext / "sample-status-very-large.json"
    assert path.stat().st_size > 128 * 1024
    s = read_status_file(path, handler="A-1.0")
    assert s.status == "success" and s.problem is None
    assert s.message is not None and s.message.endswith(TRUNCATED_SUFFIX)
    assert len(s.message) == MAX_STATUS_MESSAGE_CHARS + len(TRUNCATED_SUFFIX)
    for sub in s.substatus:
        for field in (sub.name, sub.message):
            assert field is None or len(field) <= MAX_SUBSTATUS_FIELD_CHARS + len(
                TRUNCATED_SUFFIX)


@pytest.mark.parametrize("name", ["sample-status-invalid-json-format.json",
                                  "sample-status-invalid-format-emptykey-line7.json"])
def test_invalid_json_is_an_error_status(ext: Path, name: str) -> None:
    s = read_status_file(ext / name, handler="A-1.0", retries=0)
    assert (s.status, s.code, s.found) == ("error", CODE_STATUS_INVALID, True)
    assert s.message is not None and "A-1.0" in s.message and "incorrect format" in s.message
    assert s.problem is not None and "not valid JSON" in s.problem


def test_missing_status_key_is_an_error_status(ext: Path) -> None:
    s = read_status_file(ext / "sample-status-invalid-status-no-status-status-key.json",
                         handler="A-1.0", retries=0)
    assert (s.status, s.code) == ("error", CODE_STATUS_INVALID)
    assert s.message is not None and "Missing status/status key" in s.message


def test_no_status_file_is_transitioning(tmp_path: Path) -> None:
    s = read_status_file(tmp_path / "0.status", handler="A-1.0")
    assert (s.status, s.code, s.found) == ("transitioning", 0, False)
    assert not s.terminal and s.message is not None and "does not exist" in s.message


def status_text(**body: object) -> str:
    return json.dumps([{"version": "1.0", "timestampUTC": "2024-01-01T00:00:00Z",
                        "status": body}])


def test_strings_for_version_and_code_and_unknown_status() -> None:
    s = parse_status(status_text(name="x", operation="Enable", status="success", code="0",
                                 formattedMessage={"lang": "en-US", "message": "ok"}),
                     handler="A-1.0")
    assert (s.status, s.code, s.message, s.operation) == ("success", 0, "ok", "Enable")
    assert s.timestamp_utc == "2024-01-01T00:00:00Z"
    s = parse_status(status_text(status="finished", code=3), handler="A-1.0")
    assert (s.status, s.code, s.problem) == ("error", 3, None)


@pytest.mark.parametrize(("text", "needle"), [
    ('{"status": {}}', "must be an array"),
    ('["x"]', "not an object"),
    ('[{"version": "1.0"}]', "Missing status key"),
    (status_text(status="success", code="zero"), "status/code"),
    (status_text(status="success", formattedMessage={"message": "m"}),
     "formattedMessage/lang"),
    (status_text(status="success", substatus=[{"name": "n"}]), "substatus/status"),
    (status_text(status="success", substatus=[{"status": "bogus"}]), "bogus"),
])
def test_malformed_status_names_the_problem(text: str, needle: str) -> None:
    s = parse_status(text, handler="A-1.0")
    assert (s.status, s.code) == ("error", CODE_STATUS_INVALID)
    assert s.message is not None and needle in s.message and "A-1.0" in s.message


def test_null_substatus_and_empty_list() -> None:
    s = parse_status(status_text(status="warning", substatus=None), handler="A-1.0")
    assert s.status == "warning" and s.substatus == ()
    s = parse_status("[]", handler="A-1.0")
    assert s.status == "transitioning" and s.problem is not None


def test_a_status_being_written_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "1.status"
    path.write_text('[{"status": {"status": "succ')
    assert read_status_file(path, handler="A-1.0", retries=0).status == "error"

    calls = []
    real_sleep = time.sleep

    def finish_writing(seconds: float) -> None:
        calls.append(seconds)
        path.write_text(status_text(status="success", code=0))

    time.sleep = finish_writing  # type: ignore[assignment]
    try:
        s = read_status_file(path, handler="A-1.0", retries=2, retry_delay=0.01)
    finally:
        time.sleep = real_sleep
    assert s.status == "success" and calls == [0.01]


# --- heartbeat -----------------------------------------------------------------------


def write_heartbeat(path: Path, age: float, beat: object) -> float:
    path.write_text(json.dumps([{"version": 1.0, "heartbeat": beat}]))
    now = time.time()
    os.utime(path, (now - age, now - age))
    return now


def test_fresh_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat.log"
    now = write_heartbeat(path, 10, {"status": "ready", "code": "0",
                                     "formattedMessage": {"lang": "en-US", "message": "ok"}})
    assert heartbeat(path, now) == Heartbeat("ready", 0, "ok")


def test_stale_heartbeat_is_unresponsive(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat.log"
    now = write_heartbeat(path, 601, {"status": "ready", "code": 0})
    assert heartbeat(path, now) == UNRESPONSIVE
    assert heartbeat(path, now - 2).status == "ready"  # 599 s old


@pytest.mark.parametrize("content", ["not json", "[]", '[{"heartbeat": {}}]',
                                     '[{"heartbeat": {"status": "ready", "code": "x"}}]'])
def test_malformed_heartbeat(tmp_path: Path, content: str) -> None:
    path = tmp_path / "heartbeat.log"
    path.write_text(content)
    with pytest.raises(ExtensionError) as err:
        heartbeat(path, time.time())
    assert str(path) in str(err.value) and "Malformed heartbeat" in str(err.value)
    with pytest.raises(ExtensionError, match="does not exist"):
        heartbeat(tmp_path / "absent.log", time.time())


def test_a_small_status_file_is_read_without_a_large_buffer(tmp_path: Path) -> None:
    """The status blob reads every handler's status file each loop: a read sized by the
    16 MB cap (allocated before the file is read) would show in the daemon's memory."""
    import tracemalloc

    path = tmp_path / "0.status"
    path.write_text(json.dumps([{"version": 1.0, "status": {
        "status": "success", "code": 0,
        "formattedMessage": {"lang": "en-US", "message": "ok"}}}]))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        assert read_status_file(path, handler="A-1.0").status == "success"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
