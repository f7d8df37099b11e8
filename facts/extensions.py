"""What extension handlers tell the agent: their manifest, status files and heartbeat.

Read-only parsers of the files a handler package or a running handler writes
(PLATFORM.md section 8), with waagent 2.7.3's tolerance where real handlers rely on it:
booleans written as strings ("true"), `version` and `code` written as JSON strings,
a UTF-8 byte order mark. Their input is the handler's, hence untrusted: sizes are
capped as waagent caps them, and a malformed status file becomes an error status that
names the problem (what the platform shows the user), never an exception in the agent.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from system.errors import AgentError

# waagent's ExtensionErrorCodes that these parsers produce.
CODE_SUCCESS = 0
CODE_UNKNOWN_FAILURE = -1
CODE_MANIFEST_NOT_FOUND = 1002
CODE_MANIFEST_INVALID = 1003
CODE_STATUS_INVALID = 1012

STATUS_VALUES = ("transitioning", "warning", "error", "success")

# waagent's caps on status files (exthandlers.py): over MAX_STATUS_FILE_CHARS the message
# is cut to MAX_STATUS_MESSAGE_CHARS, substatus names and messages to
# MAX_SUBSTATUS_FIELD_CHARS, and substatus entries kept while the total stays under the cap.
MAX_STATUS_FILE_CHARS = 128 * 1024
MAX_STATUS_MESSAGE_CHARS = 1024
MAX_SUBSTATUS_FIELD_CHARS = 10 * 1024
TRUNCATED_SUFFIX = " ... [TRUNCATED]"
# A status file larger than this is not read at all: a handler cannot make the agent
# hold gigabytes (waagent reads any size, then cuts).
MAX_STATUS_READ_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_HEARTBEAT_BYTES = 64 * 1024

# A heartbeat file not touched for longer than this means the handler hangs.
HEARTBEAT_MAX_AGE = 600.0

UPDATE_WITH_INSTALL = "UpdateWithInstall"

_COMMANDS = {
    "install_command": "installCommand",
    "uninstall_command": "uninstallCommand",
    "update_command": "updateCommand",
    "enable_command": "enableCommand",
    "disable_command": "disableCommand",
}


class ExtensionError(AgentError):
    """A handler's file cannot be used; `code` is waagent's error code for the status."""

    def __init__(self, message: str, *, code: int = CODE_UNKNOWN_FAILURE,
                 source: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.source = source


class HandlerManifest(NamedTuple):
    """HandlerManifest.json: the handler's commands and how it wants to be updated.

    Commands are the manifest's shell command lines, as written (relative to the handler
    directory; a leading `/` is stripped when they run). `resource_limits` is the raw
    `resourceLimits` object (system.handler_command reads the fields it applies).
    `warnings` lists values that were ignored (a boolean written as neither true nor false).
    """

    name: str
    version: str
    install_command: str
    uninstall_command: str
    update_command: str
    enable_command: str
    disable_command: str
    report_heartbeat: bool = False
    update_mode: str = UPDATE_WITH_INSTALL
    continue_on_update_failure: bool = False
    supports_multiple_extensions: bool = False
    resource_limits: Mapping[str, Any] | None = None
    source: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def update_with_install(self) -> bool:
        """True when `install` runs after `update` (waagent: updateMode absent or
        UpdateWithInstall, any case)."""
        return self.update_mode.lower() == UPDATE_WITH_INSTALL.lower()


def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


def _version_text(value: object) -> str:
    """A version as text: handlers write `1.0` as a JSON number as often as a string."""
    if isinstance(value, bool) or value is None:
        return ""
    return str(value)


def parse_handler_manifest(text: str, *, source: str) -> HandlerManifest:
    """Parse HandlerManifest.json (the first element of its list); ExtensionError naming
    `source` and the field when it cannot be used."""
    def bad(why: str, code: int = CODE_MANIFEST_INVALID) -> ExtensionError:
        return ExtensionError(f"handler manifest {source}: {why}; the handler package is "
                              "broken: ask its publisher for a fixed version", code=code,
                              source=source)

    if len(text) > MAX_MANIFEST_BYTES:
        raise bad(f"it is {len(text)} characters long, over the {MAX_MANIFEST_BYTES} limit")
    try:
        data = json.loads(_strip_bom(text))
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deep
        raise bad(f"not valid JSON ({err})") from None
    if not isinstance(data, list) or not data:
        raise bad("expected a JSON list holding one object, found "
                  f"{type(data).__name__ if data != [] else 'an empty list'}")
    entry = data[0]
    if not isinstance(entry, dict):
        raise bad(f"its first element is a {type(entry).__name__}, not an object")
    manifest = entry.get("handlerManifest")
    if not isinstance(manifest, dict):
        raise bad('"handlerManifest" is missing or not an object')

    commands: dict[str, str] = {}
    for field, key in _COMMANDS.items():
        value = manifest.get(key)
        if not isinstance(value, str) or not value.strip():
            raise bad(f'"handlerManifest.{key}" is missing or not a command line')
        commands[field] = value

    warnings: list[str] = []

    def flag(key: str) -> bool:
        # As waagent: true or a string "true" (any case) is true; anything else, false.
        value = manifest.get(key, False)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        warnings.append(f"handlerManifest.{key}={value!r} is not true or false: "
                        "taken as false")
        return False

    update_mode = manifest.get("updateMode")
    if update_mode is None:
        update_mode = UPDATE_WITH_INSTALL
    elif not isinstance(update_mode, str):
        raise bad(f'"handlerManifest.updateMode" is {update_mode!r}, not a string '
                  "(UpdateWithInstall or UpdateWithoutInstall)")
    limits = entry.get("resourceLimits")
    if limits is not None and not isinstance(limits, dict):
        raise bad(f'"resourceLimits" is a {type(limits).__name__}, not an object')
    name = entry.get("name")
    return HandlerManifest(
        name=name if isinstance(name, str) else "",
        version=_version_text(entry.get("version")),
        **commands,
        report_heartbeat=flag("reportHeartbeat"),
        update_mode=update_mode,
        continue_on_update_failure=flag("continueOnUpdateFailure"),
        supports_multiple_extensions=flag("supportsMultipleExtensions"),
        resource_limits=limits,
        source=source,
        warnings=tuple(warnings),
    )


def read_handler_manifest(path: Path) -> HandlerManifest:
    """HandlerManifest.json from a handler directory (ExtensionError 1002 when absent)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ExtensionError(f"handler manifest {path} not found: the package holds no "
                             "HandlerManifest.json at its top", code=CODE_MANIFEST_NOT_FOUND,
                             source=str(path)) from None
    return parse_handler_manifest(raw.decode("utf-8", errors="replace"), source=str(path))


# --- status files --------------------------------------------------------------------


class SubStatus(NamedTuple):
    """One entry of a status file's `substatus` list. `code` is as the handler wrote it
    (waagent neither checks nor converts it: a string "0" is reported as "0")."""

    name: str | None
    status: str
    code: Any
    message: str | None


class ExtensionStatusFile(NamedTuple):
    """What `status/<seq>.status` says, as the status blob reports it.

    `found` is False when the handler wrote no file yet (status transitioning, code 0:
    waagent's placeholder). A file that cannot be used gives status error, code 1012 (or
    -1 when unreadable) and a message naming the problem; `problem` holds it too.
    """

    name: str | None
    operation: str | None
    status: str
    code: int
    message: str | None
    substatus: tuple[SubStatus, ...] = ()
    configuration_applied_time: str | None = None
    timestamp_utc: str | None = None
    found: bool = True
    problem: str | None = None
    written_code: int | str | None = None  # `code` as the file has it (an int or its string)

    @property
    def terminal(self) -> bool:
        """success or error: what dependsOn waits for."""
        return self.status in ("success", "error")


class _Malformed(Exception):
    """A status file whose shape is wrong (waagent's StatusFileMalformed)."""


def _code(value: object, where: str) -> int:
    """A status code: an integer, or the string of one (real handlers write "0")."""
    if isinstance(value, bool):
        raise _Malformed(f"{where} is {value!r}, not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _Malformed(f"{where} is {value!r}, not an integer")


def _formatted_message(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is not an object")
    for key in ("lang", "message"):
        if key not in value:
            raise _Malformed(f"Missing {where}/{key} key")
    message = value["message"]
    return None if message is None else str(message)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _substatus(value: object) -> SubStatus:
    if not isinstance(value, dict):
        raise _Malformed("a substatus entry is not an object")
    if "status" not in value:
        raise _Malformed("Missing substatus/status key")
    status = value["status"]
    if status not in STATUS_VALUES:
        raise _Malformed(f"Invalid value {status!r} at substatus/status "
                         f"(one of {', '.join(STATUS_VALUES)})")
    return SubStatus(name=_text(value.get("name")), status=status, code=value.get("code", 0),
                     message=_formatted_message(value.get("formattedMessage"),
                                                "substatus/formattedMessage"))


def parse_status(text: str, *, handler: str) -> ExtensionStatusFile:
    """The status in a status file's text: the first element of its list, with waagent's
    caps applied; a malformed document gives an error status naming the problem."""
    try:
        data = json.loads(_strip_bom(text))
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deep
        message = (f"The status reported by the extension {handler} was in an incorrect "
                   f"format and the agent could not parse it correctly. Failed due to {err}")
        return _error_status(message, CODE_STATUS_INVALID, problem=f"not valid JSON: {err}")
    try:
        status = _status_of(data)
    except _Malformed as err:
        return _error_status(f"Could not get a valid status from the extension {handler}. "
                             f"Encountered the following error: Invalid status format by "
                             f"extension: {err}", CODE_STATUS_INVALID, problem=str(err))
    if len(text) > MAX_STATUS_FILE_CHARS:
        status = _capped(status)
    return status


def _status_of(data: object) -> ExtensionStatusFile:
    if not isinstance(data, list):
        raise _Malformed(f"the extension status must be an array, found {type(data).__name__}")
    if not data:
        return ExtensionStatusFile(None, None, "transitioning", CODE_SUCCESS, None,
                                   problem="the status file holds an empty list")
    first = data[0]
    if not isinstance(first, dict):
        raise _Malformed(f"the first status is a {type(first).__name__}, not an object")
    if "status" not in first:
        raise _Malformed("Missing status key")
    body = first["status"]
    if not isinstance(body, dict):
        raise _Malformed("status is not an object")
    if "status" not in body:
        raise _Malformed("Missing status/status key")
    value = body["status"]
    # waagent reports a status value it does not know as an error (the code stays).
    status = value if value in STATUS_VALUES else "error"
    substatus_list = body.get("substatus") or []  # some handlers write null
    if not isinstance(substatus_list, list):
        raise _Malformed("status/substatus is not a list")
    return ExtensionStatusFile(
        name=_text(body.get("name")),
        operation=_text(body.get("operation")),
        status=status,
        code=_code(body.get("code", 0), "status/code"),
        # waagent 2.7.3 reports the code as the handler wrote it ("0" stays a string)
        written_code=body.get("code", 0),
        message=_formatted_message(body.get("formattedMessage"), "status/formattedMessage"),
        substatus=tuple(_substatus(s) for s in substatus_list if s is not None),
        configuration_applied_time=_text(body.get("configurationAppliedTime")),
        timestamp_utc=_text(first.get("timestampUTC")),
    )


def _truncated(field: str | None, limit: int) -> tuple[str | None, int]:
    """waagent's _truncate_message: a field of `limit` characters or more is cut to
    `limit` and marked."""
    if field is None:
        return None, 0
    if len(field) >= limit:
        field = field[:limit] + TRUNCATED_SUFFIX
    return field, len(field)


def _capped(status: ExtensionStatusFile) -> ExtensionStatusFile:
    """A status from a file over 128 KB, cut down as waagent does."""
    message, size = _truncated(status.message, MAX_STATUS_MESSAGE_CHARS)
    kept: list[SubStatus] = []
    for sub in status.substatus:
        name, name_size = _truncated(sub.name, MAX_SUBSTATUS_FIELD_CHARS)
        text, text_size = _truncated(sub.message, MAX_SUBSTATUS_FIELD_CHARS)
        size += name_size + text_size
        if size > MAX_STATUS_FILE_CHARS:
            break
        kept.append(sub._replace(name=name, message=text))
    return status._replace(message=message, substatus=tuple(kept))


def _error_status(message: str, code: int, *, problem: str) -> ExtensionStatusFile:
    return ExtensionStatusFile(None, None, "error", code, message, problem=problem)


def read_status_file(path: Path, *, handler: str, retries: int = 2,
                     retry_delay: float = 0.5) -> ExtensionStatusFile:
    """The status a handler wrote at `path` (`<dir>/status/<seq>.status`).

    No file: transitioning, code 0, found=False. A file that is unreadable or malformed
    is read again up to `retries` times `retry_delay` apart (the handler may be writing
    it), then gives an error status that names the problem. `handler` names the handler
    in messages (`<Name>-<Version>`).
    """
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(retry_delay)
        status = _read_status_once(path, handler)
        if status.problem is None or not status.found or status.status != "error":
            return status
    return status


def _read_status_once(path: Path, handler: str) -> ExtensionStatusFile:
    try:
        with open(path, "rb") as handle:
            # read(n) allocates n bytes up front: ask for what the file holds (one more
            # byte shows a file still growing), never the 16 MB limit.
            size = os.fstat(handle.fileno()).st_size
            raw = handle.read(min(size, MAX_STATUS_READ_BYTES) + 1)
    except FileNotFoundError:
        return ExtensionStatusFile(
            None, None, "transitioning", CODE_SUCCESS,
            "This status is being reported by the Guest Agent since no status file was "
            f"reported by extension {handler}: Status file {path} does not exist",
            found=False)
    except OSError as err:
        return _error_status(f"We couldn't read any status for {handler} extension from "
                             f"{path}: {err.strerror}", CODE_UNKNOWN_FAILURE,
                             problem=f"cannot read {path}: {err.strerror}")
    if len(raw) > MAX_STATUS_READ_BYTES:
        return _error_status(f"The status file {path} of extension {handler} is over "
                             f"{MAX_STATUS_READ_BYTES} bytes: not read",
                             CODE_STATUS_INVALID, problem="status file too large to read")
    return parse_status(raw.decode("utf-8", errors="backslashreplace"), handler=handler)


# --- heartbeat -----------------------------------------------------------------------


class Heartbeat(NamedTuple):
    """The handler status a heartbeat file gives (reportHeartbeat handlers only)."""

    status: str
    code: int
    message: str | None


UNRESPONSIVE = Heartbeat("Unresponsive", -1, "Extension heartbeat is not responsive")


def heartbeat(path: Path, now: float) -> Heartbeat:
    """The heartbeat at `path` (`<dir>/heartbeat.log`): Unresponsive when not written for
    over 600 s before `now` (seconds since the epoch); ExtensionError when the file is
    absent or malformed (waagent reports that as the handler's status message)."""
    try:
        with open(path, "rb") as handle:
            mtime = Path(path).stat().st_mtime
            raw = handle.read(MAX_HEARTBEAT_BYTES + 1)
    except FileNotFoundError:
        raise ExtensionError(f"Failed to get heart beat file: {path} does not exist",
                             source=str(path)) from None
    except OSError as err:
        raise ExtensionError(f"Failed to get heartbeat file {path}: {err.strerror}",
                             source=str(path)) from None
    if int(now - mtime) > HEARTBEAT_MAX_AGE:
        return UNRESPONSIVE
    if len(raw) > MAX_HEARTBEAT_BYTES:
        raise ExtensionError(f"Malformed heartbeat file {path}: over {MAX_HEARTBEAT_BYTES} "
                             "bytes", source=str(path))
    try:
        data = json.loads(_strip_bom(raw.decode("utf-8", errors="replace")))
        beat = data[0]["heartbeat"]
        status = beat["status"]
        if not isinstance(status, str):
            raise TypeError("heartbeat.status is not a string")
        code = _code(beat.get("code", 0), "heartbeat.code")
        message = beat.get("formattedMessage", beat.get("message"))
        if isinstance(message, dict):
            message = message.get("message")
    except (ValueError, KeyError, IndexError, TypeError, RecursionError, _Malformed) as err:
        raise ExtensionError(f"Malformed heartbeat file {path}: {err}; expected "
                             '[{"version": ..., "heartbeat": {"status", "code", '
                             '"formattedMessage"}}]', source=str(path)) from None
    return Heartbeat(status, code, _text(message))
