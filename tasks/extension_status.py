"""The handlers' part of the status blob, read from their files: each handler's
config/HandlerStatus and HandlerState, its heartbeat (Unresponsive after 600 s), and the
status file its extension wrote (`status/<seq>.status`); and goalStateAggregateStatus.
The daemon (graph/daemon.py) puts them in the blob it uploads every loop, through a
StatusParts, which reads the files again only when one of them changed."""

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from facts import store
from graph.context import Context
from tasks.extensions import (
    FACTS,
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
    status_path,
    stored_goal_state,
)

if TYPE_CHECKING:
    from wire.status import GoalStateStatus
    from wire.status import HandlerStatus as BlobHandlerStatus

# A file changed this recently may change again unseen within its time stamps' granularity
# (the racy-git rule): what was read from it is not reused.
SETTLED_NS = 2_000_000_000


class Parts(NamedTuple):
    """The handlers' part of one loop's status blob."""

    handlers: "list[BlobHandlerStatus]"
    goal_state: "GoalStateStatus | None"


class Reads:
    """The files a build of Parts read; `reusable` is False when the parts also depend on
    the time (a heartbeat's age) or on a directory listing."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.reusable = True


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class StatusParts:
    """The daemon's handlers' part of the blob, built again only when a file it was read
    from, or a directory holding one (a file created, removed or renamed), has changed
    since: an idle loop then stats a few files instead of reading and parsing them. The
    paths are kept from one build to the next: made anew each loop, their parts would be
    interned anew each time (CPython's interned-string table grows with that)."""

    def __init__(self) -> None:
        self._last: _Built | None = None

    def get(self, ctx: Context, in_svd_seq_no: str) -> Parts:
        key = (ctx.lib_dir, ctx.conf.flag("Extensions.Enabled"), in_svd_seq_no)
        last = self._last
        if last is not None and last.reusable and last.key == key and \
                [_signature(path) for path in last.paths] == last.signatures:
            return last.parts
        reads = Reads()
        parts = read_parts(ctx, in_svd_seq_no, reads=reads)
        paths = [*reads.files, *dict.fromkeys(path.parent for path in reads.files)]
        signatures = [_signature(path) for path in paths]
        recent = time.time_ns() - SETTLED_NS
        settled = all(sig is None or max(sig[2], sig[3]) < recent for sig in signatures)
        self._last = _Built(key, paths, signatures, parts, reads.reusable and settled)
        return parts


class _Built(NamedTuple):
    key: Any  # what else the parts depend on
    paths: list[Path]  # the files read and their directories
    signatures: list[tuple[int, int, int, int] | None]  # of the paths, after the build
    parts: Parts
    reusable: bool


def read_parts(ctx: Context, in_svd_seq_no: str, now: float | None = None,
               reads: Reads | None = None) -> Parts:
    """The handlers' statuses and goalStateAggregateStatus, the stored goal state read
    once for both; `reads` collects the files read."""
    reads = reads or Reads()
    reads.files.append(store.facts_path(ctx.root, ctx.conf, FACTS))
    facts = stored_goal_state(ctx)
    return Parts(_handler_statuses(ctx, facts, time.time() if now is None else now, reads),
                 _goal_state_status(ctx, facts, in_svd_seq_no))


def goal_state_status(ctx: Context, in_svd_seq_no: str) -> Any:
    """`goalStateAggregateStatus` of the last extensions goal state processed (a
    wire.status.GoalStateStatus): Failed 2001 for unsupported required features; None
    when none was processed yet (all on hold), as waagent leaves it out then."""
    return _goal_state_status(ctx, stored_goal_state(ctx), in_svd_seq_no)


def _goal_state_status(ctx: Context, facts: Mapping[str, Any] | None,
                       in_svd_seq_no: str) -> Any:
    from wire.status import GoalStateStatus

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
    return _handler_statuses(ctx, stored_goal_state(ctx), time.time() if now is None else now,
                             Reads())


def _handler_statuses(ctx: Context, facts: Mapping[str, Any] | None, now: float,
                      reads: Reads) -> "list[BlobHandlerStatus]":
    if not facts or not facts.get("id"):
        return []
    found: list[BlobHandlerStatus] = []
    # A goal state failed for unsupported features: the handlers on disk, as waagent does.
    if facts.get("unsupported_features"):
        reads.reusable = False
        handlers = handlers_from_disk(ctx)
    else:
        handlers = handlers_of(facts)
    for handler in handlers:
        try:
            found += _statuses_of(ctx, handler, now, reads)
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


def _statuses_of(ctx: Context, handler: Handler, now: float,
                 reads: Reads) -> "list[BlobHandlerStatus]":
    from facts.extensions import ExtensionError, heartbeat, read_handler_manifest
    from wire.status import ExtensionStatus, HandlerStatus

    directory = handler_dir(ctx, handler.name, handler.version)
    status_file, state_file = directory / "config/HandlerStatus", directory / "config/HandlerState"
    manifest_file = directory / "HandlerManifest.json"
    reads.files += [status_file, state_file, manifest_file]
    try:
        raw = status_file.read_bytes() if status_file.is_file() else None
    except (FileNotFoundError, NotADirectoryError):
        raw = None
    if raw is None:
        return []
    try:
        stored = json.loads(raw.decode())
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
            manifest = read_handler_manifest(manifest_file)
            if manifest.report_heartbeat:
                reads.reusable = False  # the heartbeat's age moves with the clock
                beat = heartbeat(directory / "heartbeat.log", now)
                base = base._replace(status=beat.status)
        except ExtensionError as err:
            base = base._replace(message=str(err), code=err.code)
    result = []
    for settings in handler.settings:
        if handler.multi_config and settings.state == "disabled":
            enabled_file = directory / "config" / f"{settings.name}.HandlerState"
            reads.files.append(enabled_file)
            if not extension_enabled(enabled_file):
                continue
        reads.files.append(status_path(ctx, handler, settings))
        file_status = extension_status(ctx, handler, settings)
        body: dict[str, Any] = {
            "name": file_status.name or (settings.name if handler.multi_config else handler.name),
            "operation": file_status.operation or "Enable",
            # as the handler wrote it, as waagent 2.7.3 reports it ("0" stays a string)
            "status": file_status.status, "code": file_status.code if file_status.written_code
            is None else file_status.written_code,
            "formattedMessage": {"lang": "en-US", "message": file_status.message},
        }
        if file_status.substatus:
            body["substatus"] = [
                {"name": sub.name, "status": sub.status, "code": sub.code,
                 "formattedMessage": {"lang": "en-US", "message": sub.message}}
                for sub in file_status.substatus]
        result.append(base._replace(extension=ExtensionStatus(
            settings.seq_no, body, name=settings.name, timestamp=file_status.timestamp_utc)))
    return result or [base]
