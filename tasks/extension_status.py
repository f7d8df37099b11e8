"""The handlers' part of the status blob, read from their files every loop: each handler's
config/HandlerStatus and HandlerState, its heartbeat (Unresponsive after 600 s), and the
status file its extension wrote (`status/<seq>.status`); and goalStateAggregateStatus.
The daemon (graph/daemon.py) puts them in the blob it uploads."""

import json
import re
import time
from typing import TYPE_CHECKING, Any

from graph.context import Context
from tasks.extensions import (
    NOT_INSTALLED,
    Handler,
    Settings,
    extension_enabled,
    extension_status,
    handler_dir,
    handler_state,
    handlers_of,
    handlers_on_disk,
    installed_version,
    processed_status,
    read_small,
    stored_goal_state,
)

if TYPE_CHECKING:
    from wire.status import HandlerStatus as BlobHandlerStatus


def goal_state_status(ctx: Context, in_svd_seq_no: str) -> Any:
    """`goalStateAggregateStatus` of the last extensions goal state processed (a
    wire.status.GoalStateStatus): Failed 2001 for unsupported required features; None
    when none was processed yet (all on hold), as waagent leaves it out then."""
    from wire.status import GoalStateStatus

    facts = stored_goal_state(ctx)
    if not facts or not facts.get("id") or not ctx.conf.flag("Extensions.Enabled"):
        return GoalStateStatus(in_svd_seq_no=in_svd_seq_no)
    processed = facts.get("processed")
    if processed is None and facts.get("unsupported_features"):  # stored before "processed"
        processed = processed_status(facts["unsupported_features"],
                                     str(facts.get("incarnation") or in_svd_seq_no))
    if processed is None:
        return None if facts.get("on_hold") else GoalStateStatus(in_svd_seq_no=in_svd_seq_no)
    return GoalStateStatus(in_svd_seq_no=in_svd_seq_no, status=str(processed["status"]),
                           code=int(processed["code"]), message=str(processed["message"]))


def handler_statuses(ctx: Context, now: float | None = None) -> "list[BlobHandlerStatus]":
    """The handlers of the stored goal state as the status blob reports them: each
    handler's HandlerStatus, its heartbeat (Unresponsive after 600 s), and its status file."""
    facts = stored_goal_state(ctx)
    if not facts or not facts.get("id"):
        return []
    found: list[BlobHandlerStatus] = []
    # A goal state failed for unsupported features: the handlers on disk, as waagent does.
    handlers = handlers_from_disk(ctx) if facts.get("unsupported_features") \
        else handlers_of(facts)
    for handler in handlers:
        try:
            found += _statuses_of(ctx, handler, time.time() if now is None else now)
        except Exception as err:  # noqa: BLE001 - one handler's files must not stop the blob
            from wire.status import HandlerStatus

            found.append(HandlerStatus(handler.name, handler.version, "NotReady", -1,
                                       f"status not readable: {err}"))
    return found


def handlers_from_disk(ctx: Context) -> list[Handler]:
    """The handlers installed in Lib.Dir, their extensions and sequence numbers found from
    their settings files (`<ext>.<seq>.settings` makes a handler multi-config)."""
    found = []
    for name, versions in handlers_on_disk(ctx).items():
        version = installed_version(ctx, name) or versions[-1]
        extensions: dict[str, int] = {}
        single = 0
        for path in (handler_dir(ctx, name, version) / "config").glob("*.settings"):
            multi = re.fullmatch(r"(\w+)\.(\d+)\.settings", path.name)
            if multi:
                extensions[multi[1]] = max(extensions.get(multi[1], 0), int(multi[2]))
            elif path.name.split(".")[0].isdigit():
                single = max(single, int(path.name.split(".")[0]))
        settings = tuple(Settings(ext, seq, "enabled", None, None, None, 0)
                         for ext, seq in sorted(extensions.items())) if extensions else (
            Settings(None, single, "enabled", None, None, None, 0),)
        found.append(Handler(name, version, "enabled", (), bool(extensions), 0, None, settings))
    return found


def _statuses_of(ctx: Context, handler: Handler, now: float) -> "list[BlobHandlerStatus]":
    from facts.extensions import ExtensionError, heartbeat, read_handler_manifest
    from wire.status import ExtensionStatus, HandlerStatus

    directory = handler_dir(ctx, handler.name, handler.version)
    raw = read_small(directory / "config/HandlerStatus") if (
        directory / "config/HandlerStatus").is_file() else None
    if raw is None:
        return []
    try:
        stored = json.loads((directory / "config/HandlerStatus").read_text())
    except ValueError as err:
        stored = {"status": "NotReady", "code": -1,
                  "message": f"config/HandlerStatus is not JSON: {err}"}
    status = str(stored.get("status") or "NotReady")
    code = int(stored.get("code") or 0)
    message = stored.get("message")
    state = handler_state(ctx, handler.name, handler.version)
    base = HandlerStatus(handler.name, handler.version, status, code, message,
                         multi_config=handler.multi_config)
    if state == NOT_INSTALLED and not handler.multi_config:
        return [base]
    if state != NOT_INSTALLED:
        try:
            manifest = read_handler_manifest(directory / "HandlerManifest.json")
            if manifest.report_heartbeat:
                beat = heartbeat(directory / "heartbeat.log", now)
                base = base._replace(status=beat.status)
        except ExtensionError as err:
            base = base._replace(message=str(err), code=err.code)
    result = []
    for settings in handler.settings:
        if handler.multi_config and settings.state == "disabled" and not extension_enabled(
                directory / "config" / f"{settings.name}.HandlerState"):
            continue
        file_status = extension_status(ctx, handler, settings)
        body: dict[str, Any] = {
            "name": file_status.name or (settings.name if handler.multi_config else handler.name),
            "operation": file_status.operation or "Enable",
            # as the handler wrote it, as waagent 2.7.3 reports it ("0" stays a string)
            "status": file_status.status, "code": file_status.code if file_status.written_code
            is None else file_status.written_code,
            "formattedMessage": {"lang": "en-US", "message": file_status.message or ""},
        }
        if file_status.substatus:
            body["substatus"] = [
                {"name": sub.name, "status": sub.status, "code": sub.code,
                 "formattedMessage": {"lang": "en-US", "message": sub.message or ""}}
                for sub in file_status.substatus]
        result.append(base._replace(extension=ExtensionStatus(
            settings.seq_no, body, name=settings.name, timestamp=file_status.timestamp_utc)))
    return result or [base]
