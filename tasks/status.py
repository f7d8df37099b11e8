"""The status the daemon reports every loop (PLATFORM.md section 8).

The aggregate status blob says the agent is Ready, with its version, this VM's name and
system, and each extension handler's status. Without it the platform shows "VM agent
not ready" and no extension operation succeeds. It goes to the StatusUploadBlob that
ExtensionsConfig names: through the HostGAPlugin (`PUT /status`), else straight to the
blob. A copy of each new status is kept in `<Lib.Dir>/history/<goal state>/`.

Not a doit task: it is sent every loop, changed or not, as waagent does; the platform
takes a blob that stops arriving as an agent that stopped.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from graph.context import Context
from graph.version import AGENT_VERSION  # the running agent's: a downloaded one says its own
from system.errors import AgentError
from tasks import inputs

if TYPE_CHECKING:
    from wire.documents import GoalState
    from wire.extensions_config import ExtensionsConfig
    from wire.status import GoalStateStatus, GuestOSInfo, HandlerStatus

log = logging.getLogger("waagent.status")

HISTORY_DIR = "history"
STATUS_FILE = "waagent_status.json"
HISTORY_KEEP = 50  # goal states whose status copies are kept


class StatusTarget(NamedTuple):
    """Where this goal state's status goes, and what it acknowledges."""

    incarnation: str
    container_id: str
    role_config_name: str | None
    blob_url: str | None
    blob_type: str
    in_svd_seq_no: str


class StatusUploadFailed(AgentError):
    """Neither the HostGAPlugin nor the blob took the status."""


def status_target(state: GoalState, extensions: ExtensionsConfig | None) -> StatusTarget:
    """The upload target of a goal state and its ExtensionsConfig (no blob: nothing to
    upload to, as on a platform that asks for no status)."""
    return StatusTarget(
        incarnation=state.incarnation, container_id=state.container_id,
        role_config_name=state.role_config_name,
        blob_url=extensions.status_upload_blob if extensions else None,
        blob_type=extensions.status_blob_type if extensions else "BlockBlob",
        in_svd_seq_no=(extensions.in_svd_seq_no if extensions and extensions.in_svd_seq_no
                       else state.incarnation))


def fetch_status_target(ctx: Context, state: GoalState) -> StatusTarget:
    """The goal state's target, fetching its ExtensionsConfig."""
    return status_target(state, inputs.wireserver(ctx).extensions_config(state))


def os_info(ctx: Context) -> GuestOSInfo:
    """`guestOSInfo`: the running hostname, the distribution and this agent's version."""
    from wire.status import GuestOSInfo

    found = inputs.distro(ctx)
    name = socket.gethostname() if ctx.root.is_host else _static_hostname(ctx)
    return GuestOSInfo(computer_name=name, os_name=found.id, os_version=found.version,
                       agent_version=AGENT_VERSION)


def _static_hostname(ctx: Context) -> str:
    try:
        return ctx.root.follow("etc/hostname").read_text().strip()
    except OSError:
        return ""


def build_status(ctx: Context, target: StatusTarget,
                 handlers: Sequence[HandlerStatus] = (),
                 update_status: Mapping[str, Any] | None = None, *,
                 goal_state: GoalStateStatus | None | Literal["success"] = "success",
                 guest_os: GuestOSInfo | None = None) -> dict[str, Any]:
    """The status blob document for this loop; `update_status` is the agent update's
    `guestAgentStatus.updateStatus` (graph/update.py), while the platform pins a version.
    `goal_state` is the extensions goal state's `goalStateAggregateStatus`
    (tasks.extension_status.goal_state_status: Failed 2001 for unsupported features; None leaves
    it out); by default a Success for the target's goal state. `guest_os`: `os_info` as
    the caller read it already."""
    from wire.status import GoalStateStatus, status_blob

    if goal_state == "success":
        goal_state = GoalStateStatus(in_svd_seq_no=target.in_svd_seq_no)
    blob = status_blob(os_info=guest_os or os_info(ctx), handlers=handlers,
                       goal_state=goal_state)
    if update_status is not None:
        blob["aggregateStatus"]["guestAgentStatus"]["updateStatus"] = dict(update_status)
    return blob


def hostplugin(ctx: Context, target: StatusTarget) -> Any:
    """The HostGAPlugin client for this goal state: `hostplugin=URL`, or the WireServer's
    address on the HostGAPlugin's port."""
    from urllib.parse import urlsplit

    from wire.hostplugin import HOSTPLUGIN_PORT, HostPluginClient

    given = ctx.var("hostplugin")
    endpoint = given or f"{urlsplit(inputs.wireserver(ctx).base).hostname}:{HOSTPLUGIN_PORT}"
    return HostPluginClient(endpoint, container_id=target.container_id,
                            role_config_name=target.role_config_name,
                            http=inputs.wireserver(ctx).http)


def upload_status(ctx: Context, target: StatusTarget, content: bytes) -> str:
    """Upload through the HostGAPlugin, else straight to the blob; say which took it."""
    from wire.blob import put_status_blob
    from wire.errors import WireError

    if target.blob_url is None:
        return "nowhere: the goal state names no StatusUploadBlob"
    blob_type: Any = target.blob_type
    try:
        hostplugin(ctx, target).put_status(target.blob_url, content, blob_type)
        return "HostGAPlugin"
    except WireError as err:
        log.info("status through the HostGAPlugin failed (%s): uploading to the blob", err)
    try:
        put_status_blob(inputs.wireserver(ctx).http, target.blob_url, content, blob_type,
                        proxy=proxy(ctx, target.blob_url))
    except WireError as err:
        raise StatusUploadFailed(f"status upload failed through the HostGAPlugin and to "
                                 f"the blob: {err}") from None
    return "blob"


def proxy(ctx: Context, url: str | None = None) -> str | None:
    """The proxy of a direct storage request (never the platform's): wire.proxy decides.

    With `url`: HttpProxy.Host/Port, else the proxy environment variables, unless no_proxy
    names its host. Without: HttpProxy.Host/Port only (a client that reads the environment
    per URL itself, as `requests` does, gets None)."""
    from wire.proxy import configured_proxy, download_proxy

    return download_proxy(ctx.conf, url) if url else configured_proxy(ctx.conf)


def keep_status_copy(ctx: Context, target: StatusTarget, content: bytes) -> None:
    """`<Lib.Dir>/history/<incarnation>/waagent_status.json`; old goal states pruned."""
    history = ctx.lib_dir / HISTORY_DIR
    directory = history / f"incarnation_{target.incarnation}"
    ctx.fs.mkdir(history, why="goal state history", mode=0o700, quiet=True)
    ctx.fs.mkdir(directory, why="goal state history", mode=0o700, quiet=True)
    ctx.fs.write(directory / STATUS_FILE, content, mode=0o600, quiet=True, durable=False,
                 why="status copy")
    # Listed as names: a Path of each would intern each name again at every copy kept.
    kept = sorted(os.listdir(history),
                  key=lambda name: os.stat(os.path.join(history, name)).st_mtime)
    for old in kept[:-HISTORY_KEEP]:
        if old != directory.name:
            ctx.fs.remove(history / old, why="old goal state history", quiet=True)
