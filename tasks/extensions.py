"""Extension handlers as tasks: one chain per handler of the extensions goal state.

The tasks are created after gather:extensions stored the extensions goal state (doit's
`create_after`), from those facts and a look at Lib.Dir (which versions are installed):

extensions:<Handler>:unpack     the package into `<Lib.Dir>/<Name>__<Version>.zip` when missing
                                (fetched with the goal state's manifests when it can be),
                                the zip checked before anything is unpacked (size, count,
                                paths, links, CRC: a hostile zip gets an error status, a
                                damaged one is fetched again), then `<Lib.Dir>/<Name>-<Version>/`,
                                HandlerEnvironment.json, config/ and status/ (0700), the log
                                folders
extensions:<Handler>:settings   `config/<seq>.settings` (protectedSettings as delivered)
extensions:<Handler>:install    installCommand (or :update from an installed version:
                                disable old, update, uninstall old, install new)
extensions:<Handler>:enable     enableCommand: on every new extensions goal state and once
                                per agent start (handlers skip repeats through `mrseq`)
extensions:<Handler>:wait       a handler below the highest dependsOn level: its status
                                polled every 5 s until success or error
extensions:<Handler>:enable-level-N, :wait-level-N
                                a multi-config handler's extensions at a higher level N than
                                its first: waagent orders extensions, not handlers, by level
extensions:processed            a goal state that failed (-1) and is processed again: its
                                stored failure replaced by success
extensions:<Handler>:disable    state disabled: disableCommand when Enabled
extensions:<Handler>:uninstall  state uninstall, or a handler gone from the goal state:
                                disable, uninstall, remove its directory and package

Files are waagent's (extensions read them): config/HandlerState, config/HandlerStatus,
`status/<seq>.status` written by the handler and read back by tasks/extension_status.py, which
the daemon puts in the status blob every loop. Commands run through
system.handler_command (own session, process group and cgroup, timeouts, output files,
CommandExecution.log), only on the running system or with chroot=y.
"""

import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from graph.context import Context
from graph.uptodate import Inputs, Probe
from system.errors import AgentError
from tasks import TaskDict, Uptodate, inputs

if TYPE_CHECKING:
    from facts.extensions import HandlerManifest
    from wire.extensions_goal_state import ExtensionsGoalState

log = logging.getLogger("waagent.extensions")

FACTS = "extensions"
# Handler states (config/HandlerState), as waagent writes them.
NOT_INSTALLED, INSTALLED, ENABLED, FAILED_UPGRADE = (
    "NotInstalled", "Installed", "Enabled", "FailedUpgrade")
NOT_RUN = "NOT_RUN"
# A multi-config extension's state (config/<ext>.HandlerState), waagent's ExtensionState.
EXTENSION_ENABLED = "enabled"
# waagent's timeouts (seconds) and error codes per operation.
TIMEOUTS = {"install": 900, "enable": 300, "disable": 900, "update": 900, "uninstall": 300}
ERROR_CODES = {"install": 1007, "update": 1008, "enable": 1009, "disable": 1010,
               "uninstall": 1000}
CODE_TIMEOUT = 1011
CODE_DOWNLOAD = 1001
CODE_PACKAGE = 1005
CODE_GOAL_STATE = 1000
CODE_UNSUPPORTED_FEATURES = 2001
CODE_GOAL_STATE_UNKNOWN = -1  # waagent's GoalStateAggregateStatusCodes.GoalStateUnknownFailure
# What waagent 2.7.3 tells handlers it supports (AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES).
EXTENSION_FEATURES = [{"Key": "ExtensionTelemetryPipeline", "Value": "1.0"}]
DEPENDENCY_TIMEOUT = 90 * 60.0
DEPENDENCY_POLL = 5.0
# Manifests and packages fetched at once when a goal state is read (independent handlers).
ARTIFACT_WORKERS = 4
# Tests and benchmarks shorten waagent's waits (seconds) through these variables.
TIMEOUT_VARIABLE = "WAAGENT_HANDLER_TIMEOUT"
DEPENDENCY_VARIABLE = "WAAGENT_DEPENDENCY_TIMEOUT"
BACKOFF_VARIABLE = "WAAGENT_ARTIFACT_BACKOFF"
_VERSION = re.compile(r"^\d+(\.\d+)*$")

# Set by the daemon (graph/daemon.py): what identifies this agent start (enable reruns once
# per start), and the last FastTrack ETag it saw (gather:extensions looks again when it
# changes). A plain `waagent provision` is started once per boot: the kernel's boot id.
AGENT_START: str | None = None
VM_SETTINGS_ETAG: str | None = None


class ExtensionFailed(AgentError):
    """A handler operation failed; `code` is waagent's error code for its status."""

    def __init__(self, message: str, code: int = CODE_GOAL_STATE) -> None:
        super().__init__(message)
        self.code = code


# -- the goal state, as stored facts ------------------------------------------------------

class Settings(NamedTuple):
    """One extension's settings (single-config: `name` None)."""

    name: str | None
    seq_no: int
    state: str
    public: Any
    protected: str | None
    thumbprint: str | None
    level: int


class Handler(NamedTuple):
    """A handler as the stored extensions goal state asks for it."""

    name: str
    version: str
    state: str
    uris: tuple[str, ...]
    multi_config: bool
    level: int
    invalid: str | None
    settings: tuple[Settings, ...]
    package_uris: tuple[str, ...] = ()  # from the manifest, at gather time

    @property
    def dependency_level(self) -> int:
        """Its dependsOn level; a multi-config handler's, its lowest extension's."""
        if self.multi_config and self.settings:
            return min(s.level for s in self.settings)
        return self.level

    @property
    def sort_key(self) -> int:
        """waagent's order: non-enabled handlers first, in reverse level order."""
        level = self.dependency_level
        return level if self.state == "enabled" else -level - 1

    def waited_for(self, top: int) -> list[Settings]:
        """The extensions waagent waits for once this handler is handled: each enabled one
        below the highest dependsOn level `top` (a multi-config handler's, by their own
        levels); none for a handler without settings."""
        if self.state != "enabled":
            return []
        if self.multi_config:
            return [s for s in self.settings if s.state == "enabled" and s.level < top]
        return list(self.settings[:1]) if self.level < top else []

    def top_level(self) -> int:
        """The highest dependsOn level among its enabled extensions."""
        if self.multi_config and self.settings:
            return max((s.level for s in self.settings if s.state == "enabled"),
                       default=self.level)
        return self.level

    def level_parts(self) -> list["Handler"]:
        """The handler as waagent takes it in dependsOn order, which sorts extensions, not
        handlers: an enabled multi-config handler whose extensions sit at several levels
        is enabled once per level, each time with that level's extensions (a part); any
        other handler is one part."""
        levels = sorted({s.level for s in self.settings})
        if self.state != "enabled" or not self.multi_config or len(levels) < 2:
            return [self]
        return [self._replace(settings=tuple(s for s in self.settings if s.level == level))
                for level in levels]

    def part_suffix(self, part: "Handler") -> str:
        """What the tasks of a part after its handler's first carry in their names."""
        first = self.level_parts()[0]
        return "" if part.dependency_level == first.dependency_level else \
            f"-level-{part.dependency_level}"


def in_dependency_order(handlers: Sequence[Handler]) -> list[Handler]:
    """The parts of every handler (Handler.level_parts) in the order waagent handles them:
    non-enabled first in reverse level order, then by level, ties in goal-state order."""
    return sorted((part for handler in handlers for part in handler.level_parts()),
                  key=lambda part: part.sort_key)


def goal_state_facts(state: "ExtensionsGoalState", **extra: Any) -> dict[str, Any]:
    """The stored form of an extensions goal state."""
    handlers = []
    for plugin in state.plugins:
        handlers.append({
            "name": plugin.name, "version": plugin.version, "state": plugin.state,
            "uris": list(plugin.manifest_uris), "multi_config": plugin.is_multi_config,
            "level": plugin.dependency_level, "invalid": plugin.invalid_reason,
            "settings": [{"name": s.name, "seq_no": s.seq_no, "state": s.state,
                          "public": s.public_settings, "protected": s.protected_settings,
                          "thumbprint": s.protected_settings_cert_thumbprint,
                          "level": s.dependency_level} for s in plugin.settings],
        })
    return {"id": state.id, "source": state.source, "created_ticks": state.created_ticks,
            "on_hold": state.on_hold, "unsupported_features": list(state.unsupported_features),
            "in_svd_seq_no": state.in_svd_seq_no, "handlers": handlers, **extra}


def stored_goal_state(ctx: Context) -> Mapping[str, Any] | None:
    return inputs.stored_facts(ctx, FACTS)


def handlers_of(facts: Mapping[str, Any]) -> list[Handler]:
    found = []
    for h in facts.get("handlers", []):
        settings = tuple(Settings(s.get("name"), int(s.get("seq_no", 0)), s.get("state", "enabled"),
                                  s.get("public"), s.get("protected"), s.get("thumbprint"),
                                  int(s.get("level") or 0)) for s in h.get("settings", []))
        found.append(Handler(h["name"], h["version"], h["state"], tuple(h.get("uris", [])),
                             bool(h.get("multi_config")), int(h.get("level") or 0),
                             h.get("invalid"), settings, tuple(h.get("package_uris", []))))
    return found


# -- gathering ----------------------------------------------------------------------------

def source_inputs(ctx: Context) -> dict[str, Any]:
    """What gather:extensions looks again for: the FastTrack ETag the daemon saw (a new
    goal state document is gather:goalstate's, which calls `gather_extensions`)."""
    stored = stored_goal_state(ctx) or {}
    return {"vm_settings": VM_SETTINGS_ETAG, "enabled": ctx.conf.flag("Extensions.Enabled"),
            "retry": stored.get("gather_error")}


def gather_extensions(ctx: Context, state: Any = None) -> None:
    """Store the extensions goal state: ExtensionsConfig (with its artifacts profile's
    onHold) or FastTrack vmSettings, the newer; never one older than the stored one.

    With `state` (a new goal state, from gather:goalstate) both documents are read, or
    taken as `start_reading` read them ahead; without it (gather:extensions, the daemon
    saw a new vmSettings ETag) only vmSettings.
    """
    if not ctx.conf.flag("Extensions.Enabled"):
        return
    stored = stored_goal_state(ctx)
    if state is None and stored is not None and stored.get("gather_error"):
        state = inputs.goal_state(ctx)  # the last goal state's extensions were not read
    elif state is None:
        if VM_SETTINGS_ETAG is None or stored is None or \
                stored.get("vm_settings_etag") == VM_SETTINGS_ETAG:
            return
        _store(ctx, stored, _read(ctx, stored, inputs.goal_state(ctx), with_config=False,
                                  wire=inputs.wireserver(ctx),
                                  artifacts=artifact_client(ctx, inputs.goal_state(ctx))))
        return
    try:
        _store(ctx, stored, _take_reading(ctx, stored, state))
    except (AgentError, OSError) as err:
        # Not the goal state's failure: gather:extensions tries again at the next run.
        log.warning("extensions goal state not read: %s", err)
        inputs.keep_facts(ctx, FACTS, {**(stored or {"id": None, "handlers": []}),
                                       "gather_error": str(err)})


class Reading(NamedTuple):
    """An extensions goal state as read: the facts to store (None: none newer than the
    stored one), the vmSettings ETag, and the packages fetched ahead (each with its
    handler's facts), checked but not yet written."""

    facts: dict[str, Any] | None
    etag: str | None
    packages: list[tuple[dict[str, Any], bytes]]


def start_reading(ctx: Context, state: Any) -> None:
    """Read the extensions goal state of a new goal state (`state`) in the background:
    both documents, the manifests and the packages not yet in Lib.Dir. That is network
    work which writes nothing, so it runs while the tasks before gather:extensions do
    (the certificates' fetch and decryption), with clients of its own; gather:extensions
    takes what it read, or reads itself when nothing was started for its goal state."""
    stored = stored_goal_state(ctx)
    if (not ctx.conf.flag("Extensions.Enabled") or ctx.run.plan
            or (stored or {}).get("incarnation") == state.incarnation):
        return  # read already (the goalstate group gathers the extensions first)
    import threading
    from concurrent.futures import Future

    from wire.wireserver import WireServerClient

    try:
        shared = inputs.wireserver(ctx)  # found on this thread: it may remember the endpoint
        wire = WireServerClient(shared.base, identity=shared.identity)
        artifacts = new_artifact_client(ctx, state)
    except (AgentError, OSError) as err:  # the task that started it goes on
        log.debug("extensions goal state not read ahead: %s", err)
        return  # gather:extensions reads it, and reports what fails
    outcome: Future[Reading] = Future()

    def read() -> None:
        try:
            outcome.set_result(_read(ctx, stored, state, with_config=True, wire=wire,
                                     artifacts=artifacts))
        except BaseException as err:  # noqa: BLE001 - gather:extensions raises it
            outcome.set_exception(err)
        finally:
            wire.http.close()
            artifacts.close()

    # A daemon thread: an agent stopped meanwhile does not wait for the downloads.
    threading.Thread(target=read, name="extensions-reading", daemon=True).start()
    ctx.state.extensions_ahead = (str(state.incarnation), stored, outcome)


def _take_reading(ctx: Context, stored: Mapping[str, Any] | None, state: Any) -> Reading:
    """What `start_reading` read for this goal state and these stored facts (waiting for
    it), else a reading now."""
    ahead, ctx.state.extensions_ahead = ctx.state.extensions_ahead, None
    if ahead is not None and ahead[:2] == (str(state.incarnation), stored):
        reading: Reading = ahead[2].result()
        return reading
    return _read(ctx, stored, state, with_config=True, wire=inputs.wireserver(ctx),
                 artifacts=artifact_client(ctx, state))


def _read(ctx: Context, stored: Mapping[str, Any] | None, state: Any, *, with_config: bool,
          wire: Any, artifacts: Any) -> Reading:
    """Read the extensions goal state with these clients; nothing is written (this may
    run on a thread of its own: see `start_reading`)."""
    from wire.extensions_goal_state import choose, from_extensions_config, parse_vm_settings

    candidates: list[ExtensionsGoalState | None] = []
    if with_config:
        config = wire.extensions_config(state)
        if config is not None:
            candidates.append(from_extensions_config(
                config, state.incarnation,
                on_hold=_on_hold(ctx, artifacts, config.in_vm_artifacts_profile_blob)))
    etag = None
    answer = _vm_settings(ctx, state)
    if answer is not None and answer.document is not None:
        etag = answer.etag
        try:
            candidates.append(parse_vm_settings(answer.document, answer.etag or ""))
        except AgentError as err:
            log.warning("vmSettings ignored: %s", err)
    handled = stored.get("created_ticks") if stored and stored.get("id") else None
    chosen = choose(candidates, handled)
    if chosen is None:
        return Reading(None, etag, [])
    log.info("extensions goal state %s from %s (%d handler(s))", chosen.id, chosen.source,
             len(chosen.plugins))
    on_hold = chosen.on_hold and ctx.conf.flag("EnableOverProvisioning")
    # waagent reports the last goal state it processed: one on hold is not processed.
    processed = (stored or {}).get("processed") if on_hold else processed_status(
        chosen.unsupported_features, state.incarnation)
    facts = goal_state_facts(chosen, vm_settings_etag=etag, incarnation=state.incarnation,
                             processed=processed)
    packages = []
    if not on_hold and not chosen.unsupported_features:
        packages = resolve_versions(ctx, state, facts["handlers"], artifacts)
    return Reading(facts, etag, packages)


def _store(ctx: Context, stored: Mapping[str, Any] | None, reading: Reading) -> None:
    """Keep what was read: the packages fetched ahead in Lib.Dir, then the facts."""
    if reading.facts is None:
        kept = {k: v for k, v in (stored or {"id": None, "handlers": []}).items()
                if k != "gather_error"}
        inputs.keep_facts(ctx, FACTS, {**kept, "vm_settings_etag": reading.etag})
        return
    for handler, data in reading.packages:
        try:
            keep_package(ctx, handler["name"], handler["version"], data)
        except ExtensionFailed as err:
            log.info("%s: %s: its unpack task tries again", handler["name"], err)
    inputs.keep_facts(ctx, FACTS, reading.facts)


def resolve_versions(ctx: Context, state: Any, handlers: list[dict[str, Any]],
                     artifacts: Any) -> list[tuple[dict[str, Any], bytes]]:
    """The version each enabled handler gets, from its manifest: the highest offered whose
    leading components are the requested ones ("1.0" takes 1.0.7), as waagent's
    decide_version does on each goal state. Its directory and package are named by it.
    A manifest that cannot be read leaves the requested version (the unpack task, which
    reads it again, says why).

    The handlers are independent: their manifests, and the packages not yet in Lib.Dir,
    are fetched a few at a time, and each package checked as it arrives. Returned: the
    packages that passed, with their handlers (written to Lib.Dir by the caller). A
    package that could not be fetched, or was refused, is left to the handler's unpack
    task, which retries and reports it. One handler: no workers, the client `artifacts`."""
    wanted = [h for h in handlers
              if h["state"] == "enabled" and not h.get("invalid") and h["uris"]]
    if len(wanted) < 2 or ctx.run.plan:
        for handler in wanted:
            _resolve(ctx, artifacts, handler, prefetch=False)
        return []
    import queue
    from concurrent.futures import ThreadPoolExecutor

    # A client per worker: a client's connections serve one request at a time.
    workers = min(ARTIFACT_WORKERS, len(wanted))
    idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for _ in range(workers):
        idle.put(new_artifact_client(ctx, state, rounds=1))

    def resolve(handler: dict[str, Any]) -> bytes | None:
        client = idle.get()
        try:
            data = _resolve(ctx, client, handler, prefetch=True)
        finally:
            idle.put(client)
        if data is not None:
            try:
                check_package(package_path(ctx, handler["name"], handler["version"]), data)
            except ExtensionFailed as err:
                log.info("%s: %s: its unpack task tries again", handler["name"], err)
                return None
        return data

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artifacts") as pool:
            fetched = list(pool.map(resolve, wanted))
    finally:
        while not idle.empty():
            idle.get().close()
    return [(handler, data) for handler, data in zip(wanted, fetched, strict=True)
            if data is not None]


def _resolve(ctx: Context, client: Any, handler: dict[str, Any], *,
             prefetch: bool) -> bytes | None:
    """Set one handler's version from its manifest; with `prefetch`, return its package
    when Lib.Dir has neither the package nor the handler's directory."""
    from wire.artifacts import pick_version

    try:
        manifest = client.manifest(handler["uris"], handler=handler["name"])
    except AgentError as err:
        handler["resolve_error"] = f"Failed to download artifacts: {err}"
        return None
    chosen = pick_version(manifest, handler["version"])
    if chosen is None:
        handler["resolve_error"] = (f"Unable to find version {handler['version']} in "
                                    f"manifest for extension {handler['name']}")
        return None
    if chosen.version != handler["version"]:
        log.info("%s: version %s resolves to %s", handler["name"], handler["version"],
                 chosen.version)
    handler["requested_version"] = handler["version"]
    handler["version"] = chosen.version
    handler["package_uris"] = list(chosen.uris)
    if not prefetch or not _package_missing(ctx, handler["name"], chosen.version):
        return None
    try:
        return bytes(client.package(chosen.uris, handler=handler["name"],
                                    version=chosen.version))
    except AgentError as err:
        log.info("%s %s: package not fetched ahead (%s): its unpack task tries again",
                 handler["name"], chosen.version, err)
        return None


def processed_status(unsupported: Sequence[str], incarnation: str) -> dict[str, Any]:
    """How waagent's `__process_and_handle_extensions` ends for a goal state:
    goalStateAggregateStatus Failed 2001 when it requires features this agent lacks."""
    if unsupported:
        return {"status": "Failed", "code": CODE_UNSUPPORTED_FEATURES,
                "message": f"Failing GS incarnation: {incarnation} as Unsupported features "
                           f"found: {', '.join(unsupported)}", "incarnation": incarnation}
    return {"status": "Success", "code": 0, "message": "GoalState executed successfully",
            "incarnation": incarnation}


def hostplugin_client(ctx: Context, state: Any, *, retry: bool) -> Any:
    """A HostGAPlugin client for this goal state (`hostplugin=`, or the WireServer's
    address); without `retry` one try only, for calls that have a fallback."""
    from urllib.parse import urlsplit

    from wire.hostplugin import HOSTPLUGIN_PORT, HostPluginClient
    from wire.http import NO_RETRY, HttpClient

    given = ctx.var("hostplugin")
    wire = inputs.wireserver(ctx)
    endpoint = given or f"{urlsplit(wire.base).hostname}:{HOSTPLUGIN_PORT}"
    http = wire.http if retry else HttpClient(retry=NO_RETRY, timeout=10.0)
    return HostPluginClient(endpoint, container_id=state.container_id,
                            role_config_name=state.role_config_name, http=http)


def _vm_settings(ctx: Context, state: Any) -> Any:
    from wire.errors import WireError

    try:
        answer = hostplugin_client(ctx, state, retry=False).vm_settings(None)
    except WireError as err:
        log.debug("vmSettings: %s", err)
        return None
    return answer if answer.status == "changed" else None


def _on_hold(ctx: Context, artifacts: Any, blob_url: str | None) -> bool:
    """InVMArtifactsProfileBlob `onHold` (EnableOverProvisioning only, as waagent)."""
    if not blob_url or not ctx.conf.flag("EnableOverProvisioning"):
        return False
    from wire.extensions_config import is_on_hold, parse_artifacts_profile

    try:
        data = artifacts.fetch([blob_url], what="the InVMArtifactsProfile",
                               max_bytes=64 * 1024)
        return is_on_hold(parse_artifacts_profile(data))
    except AgentError as err:
        log.warning("InVMArtifactsProfile not read (%s): not on hold", err)
        return False


def artifact_client(ctx: Context, state: Any) -> Any:
    """The artifact client of this run (one, for the tasks, which run one at a time)."""
    found = ctx.state.artifact_client
    if found is None:
        found = ctx.state.artifact_client = new_artifact_client(ctx, state)
    return found


def new_artifact_client(ctx: Context, state: Any, *, rounds: int = 3) -> Any:
    from tasks.status import proxy
    from wire.artifacts import ArtifactClient

    return ArtifactClient(hostplugin_client(ctx, state, retry=False), proxy=proxy(ctx),
                          rounds=rounds, backoff=float(os.environ.get(BACKOFF_VARIABLE) or 2.0))


# -- where things are ---------------------------------------------------------------------

def handler_dir(ctx: Context, name: str, version: str) -> Path:
    return ctx.lib_dir / f"{name}-{version}"


def package_path(ctx: Context, name: str, version: str) -> Path:
    return ctx.lib_dir / f"{name}__{version}.zip"


def log_dir(ctx: Context, name: str) -> Path:
    return ctx.root / ctx.conf.required_path("Extension.LogDir") / name


def vm_path(ctx: Context, real: Path) -> str:
    """A path as the VM (and so the handler) sees it."""
    return ctx.root.system_path(real)


def read_small(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")[:4096].strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def handler_state(ctx: Context, name: str, version: str) -> str:
    return read_small(handler_dir(ctx, name, version) / "config/HandlerState") or NOT_INSTALLED


def installed_versions(ctx: Context, name: str) -> list[str]:
    """Versions of `name` with a directory in Lib.Dir, lowest first."""
    from wire.versions import version_key

    found = []
    try:
        entries = list(ctx.lib_dir.iterdir())
    except FileNotFoundError:
        return []
    prefix = name + "-"
    for entry in entries:
        rest = entry.name[len(prefix):]
        if entry.name.startswith(prefix) and _VERSION.match(rest) and entry.is_dir():
            found.append(rest)
    return sorted(found, key=version_key)


def installed_version(ctx: Context, name: str) -> str | None:
    """The highest version whose HandlerState says it is installed (waagent's rule)."""
    live = [v for v in installed_versions(ctx, name)
            if handler_state(ctx, name, v) not in (NOT_INSTALLED, FAILED_UPGRADE)]
    return live[-1] if live else None


def handlers_on_disk(ctx: Context) -> dict[str, list[str]]:
    """Handler name -> versions with a directory in Lib.Dir that holds a HandlerManifest."""
    found: dict[str, list[str]] = {}
    try:
        entries = sorted(ctx.lib_dir.iterdir())
    except FileNotFoundError:
        return {}
    for entry in entries:
        name, sep, version = entry.name.rpartition("-")
        if sep and _VERSION.match(version) and (entry / "HandlerManifest.json").is_file():
            found.setdefault(name, []).append(version)
    return found


def can_run_commands(ctx: Context) -> bool:
    """Handler commands run on the running system, or inside an image root with chroot=y."""
    return ctx.root.is_host or ctx.run.chroot


def agent_start(ctx: Context) -> str:
    """What identifies this agent start: the daemon's, else the kernel's boot id."""
    if AGENT_START:
        return AGENT_START
    found = read_small(ctx.root / "proc/sys/kernel/random/boot_id")
    return f"boot-{found}" if found else "boot-unknown"


def settings_digest(handler: Handler) -> str:
    """A digest of the settings content (protected settings included, never shown)."""
    text = json.dumps([s._asdict() for s in handler.settings], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the tasks ----------------------------------------------------------------------------

def generate(ctx: Context) -> Iterator[TaskDict]:
    """One chain of tasks per handler of the stored extensions goal state; when they cannot
    be made, one task that fails the goal state (waagent's GoalStateUnknownFailure)."""
    if not ctx.conf.flag("Extensions.Enabled"):
        return
    facts = stored_goal_state(ctx)
    if not facts or not facts.get("id"):
        return
    try:
        tasks = list(_generate(ctx, facts))
    except Exception as err:  # noqa: BLE001 - whatever it is, the platform must be told
        yield failed_task(ctx, facts, err)
        return
    if (facts.get("processed") or {}).get("code") == CODE_GOAL_STATE_UNKNOWN:
        yield recovered_task(ctx, facts)
    yield from tasks


def _generate(ctx: Context, facts: Mapping[str, Any]) -> Iterator[TaskDict]:
    handlers = handlers_of(facts)
    goal_id = str(facts["id"])
    # Decisions on the whole goal state come first: they hold on any root.
    if facts.get("unsupported_features"):
        yield unsupported_task(ctx, facts)
        return
    if facts.get("on_hold") and ctx.conf.flag("EnableOverProvisioning"):
        yield on_hold_task(goal_id)
        return
    if not can_run_commands(ctx):
        yield skipped_task(ctx, handlers, goal_id)
        return
    wanted = {h.name for h in handlers}
    for name, versions in handlers_on_disk(ctx).items():
        if name not in wanted:
            yield from removal_tasks(ctx, name, versions[-1], why="it left the goal state")
    top = max((h.top_level() for h in handlers if h.state == "enabled"), default=0)
    whole = {handler.name: handler for handler in handlers}
    waits: list[str] = []
    for part in in_dependency_order(handlers):
        handler = whole[part.name]
        suffix = handler.part_suffix(part)
        chain = [later_enable_task(ctx, handler, part, goal_id, suffix)] if suffix else \
            list(handler_tasks(ctx, handler, goal_id, enabling=part))
        if handler.state == "enabled" and waits:
            for task in chain:  # waagent handles nothing of it before the levels below
                task["task_dep"] = [*task.get("task_dep", []), *waits]
        yield from chain
        waited = part.waited_for(top)
        if waited:
            wait = wait_task(ctx, part, goal_id, waited, suffix)
            waits.append(f"extensions:{wait['name']}")
            yield wait


def failed_task(ctx: Context, facts: Mapping[str, Any], error: Exception) -> TaskDict:
    """The goal state could not be processed for a reason no handler owns: stored as
    processed with status Failed and code -1, which goalStateAggregateStatus reports until
    the next extensions goal state, as waagent's `__process_and_handle_extensions`."""
    message = f"Unexpected error when processing goal state:{type(error).__name__}: {error}"

    def fail() -> None:
        processed = {"status": "Failed", "code": CODE_GOAL_STATE_UNKNOWN, "message": message,
                     "incarnation": facts.get("incarnation")}
        inputs.keep_facts(ctx, FACTS, {**facts, "processed": processed})
        raise ExtensionFailed(message, CODE_GOAL_STATE_UNKNOWN)

    log.warning("%s", message)
    return {"name": "failed", "doc": "the extensions goal state could not be processed",
            "actions": [(fail,)]}


def recovered_task(ctx: Context, facts: Mapping[str, Any]) -> TaskDict:
    """A goal state that failed with GoalStateUnknownFailure and is processed again (the
    agent restarted): waagent reports it processed from then on, so the stored -1 goes."""
    incarnation = str(facts.get("incarnation") or facts["id"])

    def recover() -> None:
        processed = processed_status(facts.get("unsupported_features", []), incarnation)
        inputs.keep_facts(ctx, FACTS, {**facts, "processed": processed})

    return {"name": "processed", "doc": f"goal state {facts['id']} processed this time: its "
            "stored failure (-1) is replaced", "actions": [(recover,)]}


def skipped_task(ctx: Context, handlers: Sequence[Handler], goal_id: str) -> TaskDict:
    names = ", ".join(f"{h.name} {h.version} ({h.state})" for h in handlers) or "none"
    why = (f"root {ctx.root.base} is not the running system: handler commands run only there "
           "or with chroot=y")
    return {
        "name": "skipped",
        "doc": f"extension handlers not run here ({names})",
        "actions": [(lambda: ctx.run.record("skip", f"extension handlers {names}", why),)],
        "uptodate": [Inputs("extensions-skipped", lambda: {"handlers": names})],
    }


def unsupported_task(ctx: Context, facts: Mapping[str, Any]) -> TaskDict:
    features = ", ".join(facts.get("unsupported_features", []))

    def refuse() -> None:
        # The daemon's status blob says it too (goal_state_status: Failed, 2001).
        raise ExtensionFailed(processed_status(
            facts.get("unsupported_features", []), str(facts.get("incarnation") or facts["id"])
        )["message"], CODE_UNSUPPORTED_FEATURES)

    return {"name": "unsupported", "doc": f"goal state requires unsupported features: {features}",
            "actions": [(refuse,)],
            "uptodate": [Inputs("extensions-unsupported", lambda: {"goal_state": facts["id"]})]}


def on_hold_task(goal_id: str) -> TaskDict:
    return {"name": "on-hold", "doc": "extension handling is on hold (InVMArtifactsProfile)",
            "actions": [(lambda: log.info("extension handling is on hold"),)],
            "uptodate": [Inputs("extensions-on-hold", lambda: {"goal_state": goal_id})]}


def _task(handler: str, step: str, doc: str, action: Any, *args: Any,
          deps: Sequence[str] = (), uptodate: Sequence[Uptodate] = ()) -> TaskDict:
    return {"name": f"{handler}:{step}", "doc": doc, "actions": [(action, list(args))],
            "task_dep": [f"extensions:{handler}:{d}" for d in deps], "uptodate": list(uptodate)}


def handler_tasks(ctx: Context, handler: Handler, goal_id: str, *,
                  enabling: Handler | None = None) -> Iterator[TaskDict]:
    """The tasks one handler needs for the state the goal state asks; its enable takes the
    extensions of `enabling`, its first part (Handler.level_parts), when given."""
    name, version = handler.name, handler.version
    if handler.state != "enabled":
        on_disk = installed_versions(ctx, name)
        installed = installed_version(ctx, name) or (on_disk[-1] if on_disk else None)
        if installed is None:
            return
        if handler.state == "disabled":
            yield _task(name, "disable", f"disable {name} {installed} (the goal state asks)",
                        disable_handler, ctx, handler, installed,
                        uptodate=[Probe("enabled", lambda: _is_enabled(ctx, name, installed))])
        else:
            yield from removal_tasks(ctx, name, installed, why="the goal state asks to uninstall it",
                                     settings=() if handler.multi_config else handler.settings)
        return
    current = installed_version(ctx, name)
    inputs_of = {"version": version, "goal_state": goal_id, "state": handler.state,
                 "settings": settings_digest(handler),
                 "seq": [s.seq_no for s in handler.settings]}
    yield _task(name, "unpack", f"fetch the {name} {version} zip (when not in Lib.Dir), check "
                "it, unpack it into Lib.Dir, HandlerEnvironment.json", unpack_package, ctx,
                handler, uptodate=[Probe("unpacked", lambda: _not_unpacked(ctx, name, version))])
    yield _task(name, "settings", f"write the settings of {name} (seq {_seqs(handler)})",
                write_settings, ctx, handler, deps=["unpack"],
                uptodate=[Inputs(f"ext-settings-{name}", lambda: inputs_of),
                          Probe("settings", lambda: _settings_missing(ctx, handler))])
    if current is not None and current != version:
        yield _task(name, "update", f"update {name} {current} -> {version}",
                    update_handler, ctx, handler, current, deps=["settings"],
                    uptodate=[Probe("installed", lambda: _not_installed(ctx, name, version))])
        before = "update"
    else:
        yield _task(name, "install", f"install {name} {version}", install_handler, ctx, handler,
                    deps=["settings"],
                    uptodate=[Probe("installed", lambda: _not_installed(ctx, name, version))])
        before = "install"
    yield enable_task(ctx, handler, enabling or handler, goal_id, deps=[before])


def enable_task(ctx: Context, handler: Handler, part: Handler, goal_id: str, *,
                deps: Sequence[str], suffix: str = "") -> TaskDict:
    name, version = handler.name, handler.version
    inputs_of = {"version": version, "goal_state": goal_id, "state": handler.state,
                 "settings": settings_digest(part), "seq": [s.seq_no for s in part.settings]}
    return _task(name, f"enable{suffix}", f"enable {name} {version} (seq {_seqs(part)})",
                 enable_handler, ctx, part, deps=deps,
                 uptodate=[Inputs(f"ext-enable-{name}{suffix}",
                                  lambda: {**inputs_of, "agent_start": agent_start(ctx)}),
                           Probe("enabled", lambda: _not_enabled(ctx, name, version))])


def later_enable_task(ctx: Context, handler: Handler, part: Handler, goal_id: str,
                      suffix: str) -> TaskDict:
    """The enable of a multi-config handler's extensions at a higher dependsOn level, after
    the handlers of the levels between (its first part's tasks set the handler up)."""
    parts = handler.level_parts()
    before = parts[parts.index(part) - 1]
    current = installed_version(ctx, handler.name)
    setup = "update" if current is not None and current != handler.version else "install"
    return enable_task(ctx, handler, part, goal_id, suffix=suffix,
                       deps=[setup, f"enable{handler.part_suffix(before)}"])


def removal_tasks(ctx: Context, name: str, version: str, *, why: str,
                  settings: Sequence[Settings] = ()) -> Iterator[TaskDict]:
    yield _task(name, "uninstall", f"uninstall {name} {version}: {why}", uninstall_handler,
                ctx, name, version, why, tuple(settings),
                uptodate=[Probe("present", lambda: _present(ctx, name, version))])


def wait_task(ctx: Context, handler: Handler, goal_id: str,
              waited: Sequence[Settings], suffix: str = "") -> TaskDict:
    names = ", ".join(f"{handler.name}.{s.name}" for s in waited) if handler.multi_config \
        else handler.name
    return _task(handler.name, f"wait{suffix}",
                 f"wait for {names} (dependsOn level {handler.dependency_level}) to succeed",
                 wait_for_handler, ctx, handler, goal_id, tuple(waited),
                 uptodate=[Inputs(f"ext-wait-{handler.name}{suffix}", lambda: {
                     "goal_state": goal_id, "agent_start": agent_start(ctx),
                     "settings": settings_digest(handler)})])


def _seqs(handler: Handler) -> str:
    return ", ".join(str(s.seq_no) for s in handler.settings) or "none: 0.settings"


# -- checks (read-only) -------------------------------------------------------------------

def _package_missing(ctx: Context, name: str, version: str) -> str | None:
    if (handler_dir(ctx, name, version) / "HandlerManifest.json").is_file():
        return None
    if package_path(ctx, name, version).is_file():
        return None
    return f"{package_path(ctx, name, version).name} is not in Lib.Dir"


def _unwritten(path: Path, content: str = "x") -> str | None:
    """Why `path` is not a file as the agent wrote it: missing, or empty where `content`
    is not. Files the agent writes without fsync (settings, HandlerEnvironment.json) are
    left by a crash absent or empty, never partly written (ext4 and xfs order a file's
    data before its size), so this check finds them and their task writes them again."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return "is missing"
    if not stat.S_ISREG(st.st_mode):
        return "is not a file"
    return "is empty" if content and not st.st_size else None


def _not_unpacked(ctx: Context, name: str, version: str) -> str | None:
    directory = handler_dir(ctx, name, version)
    for needed in ("HandlerManifest.json", "HandlerEnvironment.json"):
        why = _unwritten(directory / needed)
        if why:
            return f"{directory.name}/{needed} {why}"
    return None


def _settings_missing(ctx: Context, handler: Handler) -> str | None:
    config = handler_dir(ctx, handler.name, handler.version) / "config"
    for file_name, content in settings_files(handler):
        why = _unwritten(config / file_name, content)
        if why:
            return f"config/{file_name} {why}"
    return None


def _not_installed(ctx: Context, name: str, version: str) -> str | None:
    state = handler_state(ctx, name, version)
    return None if state in (INSTALLED, ENABLED) else f"{name} {version} is {state}"


def _not_enabled(ctx: Context, name: str, version: str) -> str | None:
    state = handler_state(ctx, name, version)
    return None if state == ENABLED else f"{name} {version} is {state}"


def _is_enabled(ctx: Context, name: str, version: str) -> str | None:
    return f"{name} {version} is enabled" if handler_state(ctx, name, version) == ENABLED else None


def _present(ctx: Context, name: str, version: str) -> str | None:
    directory = handler_dir(ctx, name, version)
    return f"{directory.name} is in Lib.Dir" if directory.exists() else None


# -- actions ------------------------------------------------------------------------------

Action = Callable[..., None]


def failing(operation: str) -> Callable[[Action], Action]:
    """Decorate an action: an error becomes the handler's NotReady status, then fails the task.
    An unexpected error (not an AgentError) is the handler's too, with code -1, as waagent's
    `handle_ext_handler` reports it."""
    def wrap(action: Action) -> Action:
        def run(ctx: Context, handler: Handler, *args: Any) -> None:
            try:
                action(ctx, handler, *args)
            except MultiConfigEnableFailed:
                raise
            except Exception as err:  # noqa: BLE001 - reported as the handler's status
                code = getattr(err, "code", None)
                if not isinstance(err, AgentError):
                    log.warning("%s %s %s: unexpected error", handler.name, handler.version,
                                operation, exc_info=True)
                    code = -1
                elif not (isinstance(code, int) and code > 0):
                    code = ERROR_CODES.get(operation, 1000)
                if not ctx.run.plan:
                    set_handler_status(ctx, handler, "NotReady", str(err), code,
                                       durable=False)
                    if handler.multi_config:
                        for settings in handler.settings:
                            placeholder_status(ctx, handler, settings, operation, str(err), code)
                raise ExtensionFailed(f"{handler.name} {handler.version}: {err}", code) from None

        run.__name__ = action.__name__
        run.__doc__ = action.__doc__
        return run
    return wrap


def download_package(ctx: Context, handler: Handler) -> None:
    """Fetch the manifest (unless read with the goal state), pick the version, keep the
    package in Lib.Dir."""
    target = package_path(ctx, handler.name, handler.version)
    if ctx.run.plan:
        ctx.run.record("download", target.name, f"{handler.name} {handler.version} package")
        return
    from wire.artifacts import pick_version

    client = artifact_client(ctx, inputs.goal_state(ctx))
    chosen: Any = None
    if handler.package_uris:  # the manifest was read when the goal state was gathered
        from wire.handlers import ManifestVersion

        chosen = ManifestVersion(handler.version, handler.package_uris)
    else:
        try:
            manifest = client.manifest(handler.uris, handler=handler.name)
        except AgentError as err:
            raise ExtensionFailed(f"Failed to download artifacts: {err}", CODE_DOWNLOAD
                                  ) from None
        chosen = pick_version(manifest, handler.version)
    if chosen is None:
        raise ExtensionFailed(f"Unable to find version {handler.version} in manifest for "
                              f"extension {handler.name}", CODE_DOWNLOAD)
    try:
        data = client.package(chosen.uris, handler=handler.name, version=chosen.version)
    except AgentError as err:
        raise ExtensionFailed(f"Failed to download artifacts: {err}", CODE_DOWNLOAD) from None
    keep_package(ctx, handler.name, handler.version, data)


def keep_package(ctx: Context, name: str, version: str, data: bytes) -> None:
    """A downloaded package into Lib.Dir, checked first (ExtensionFailed when refused)."""
    target = package_path(ctx, name, version)
    check_package(target, data)
    # 0644, as waagent 2.7.3 leaves it. Not fsynced: the package is a cache, checked
    # (check_package) before it is unpacked, so one lost or damaged in a power cut is
    # fetched again, never unpacked.
    ctx.fs.write(target, data, mode=0o644, durable=False, why=f"{name} {version} package")


# The packages this process checked: path -> the digest of the bytes checked and their
# members. check_zip reads and decompresses every member; the same bytes read again
# (unpack, right after the download) need no second check.
_CHECKED: dict[Path, tuple[str, list[Any]]] = {}


def check_package(path: Path, data: bytes) -> list[Any]:
    """The members of the package `data` (read from or bound for `path`), checked once
    (system.unpack.check_zip); ExtensionFailed when it is refused."""
    from system.unpack import UnsafeArchive, check_zip

    digest = hashlib.sha256(data).hexdigest()
    known = _CHECKED.get(path)
    if known is not None and known[0] == digest:
        return known[1]
    _CHECKED.pop(path, None)
    try:
        members = check_zip(data, name=path.name)
    except UnsafeArchive as err:
        raise ExtensionFailed(f"the package {path.name} is refused: {err}",
                              CODE_PACKAGE) from None
    _CHECKED[path] = (digest, members)
    return members


# What the agent and the handler write in a handler's directory, beside its package's files.
HANDLER_STATE_ENTRIES = ("config", "status", "mrseq", "heartbeat.log")


@failing("download")
def unpack_package(ctx: Context, handler: Handler) -> None:
    """Fetch the package when Lib.Dir has neither it nor the handler's tree (waagent's
    `download`), check it (a damaged one is removed, to be fetched again; the bytes this
    process downloaded and checked are known by their digest), unpack it and set the
    handler up: manifest, config/, status/, logs, HandlerEnvironment.json (waagent's
    `initialize`)."""
    from system.unpack import UnsafeArchive, unpack_zip

    if handler.invalid:
        raise ExtensionFailed(f"Ran into config errors: {handler.invalid}. Please retry again as "
                              "another operation with updated settings", CODE_GOAL_STATE)
    if _package_missing(ctx, handler.name, handler.version):
        download_package(ctx, handler)
    directory = handler_dir(ctx, handler.name, handler.version)
    package = package_path(ctx, handler.name, handler.version)
    # A repair (a tree that lost files) keeps what an installed handler has: waagent never
    # runs install again for an Installed or Enabled handler.
    installed = handler_state(ctx, handler.name, handler.version) in (INSTALLED, ENABLED)
    if not (directory / "HandlerManifest.json").is_file():
        if ctx.run.plan and not package.exists():
            ctx.run.record("unpack", vm_path(ctx, directory), f"{handler.name} {handler.version}")
        else:
            data = package.read_bytes()
            try:
                checked = check_package(package, data)
            except ExtensionFailed:
                ctx.fs.remove(package, why="a package that failed its check is fetched again")
                raise
            try:
                # replace: a directory left by a failed try holds only its status
                unpack_zip(ctx.fs, data, directory, name=package.name, replace=True,
                           checked=checked, keep=HANDLER_STATE_ENTRIES)
            except UnsafeArchive as err:
                raise ExtensionFailed(f"the package {package.name} is refused: {err}",
                                      CODE_PACKAGE) from None
            finally:
                _CHECKED.pop(package, None)  # unpacked or refused: the daemon holds no copy
            if not ctx.run.plan:
                # waagent writes HandlerState before `initialize` adds u+x to every file.
                # Not fsynced: a HandlerState lost or left empty reads as NotInstalled.
                if not installed:
                    set_handler_state(ctx, handler.name, handler.version, NOT_INSTALLED,
                                      durable=False)
                _make_executable(directory, HANDLER_STATE_ENTRIES if installed else ())
    if not installed and (read_small(directory / "config/HandlerState") != NOT_INSTALLED
                          or ctx.run.plan):
        set_handler_state(ctx, handler.name, handler.version, NOT_INSTALLED)
    if not ctx.run.plan:
        manifest = load_manifest(ctx, handler.name, handler.version)
        if handler.multi_config and not manifest.supports_multiple_extensions:
            raise ExtensionFailed(f"Handler {handler.name} does not support MultiConfig but CRP "
                                  "expects it, failing due to inconsistent data")
    for sub in ("status", "config"):
        ctx.fs.mkdir(directory / sub, mode=0o700, why=f"{handler.name} {sub} folder", quiet=True)
    logs = log_dir(ctx, handler.name)
    ctx.fs.mkdir(logs, mode=0o755, why=f"{handler.name} log folder", quiet=True)
    ctx.fs.mkdir(logs / "events", mode=0o700, why=f"{handler.name} events folder", quiet=True)
    # Not fsynced: a crash that loses it or leaves it empty is found by this task's check.
    ctx.fs.write(directory / "HandlerEnvironment.json", handler_environment(ctx, handler),
                 mode=0o644, durable=False, why=f"{handler.name} handler environment")


def _make_executable(directory: Path, skip: tuple[str, ...] = ()) -> None:
    """Every file of a handler 0744, as waagent 2.7.3 leaves them: its zipfile extractall
    ignores the zip's modes (0644 under its umask), then `initialize` adds u+x. `skip`:
    top-level names left as they are (the state a repair kept)."""
    for path in directory.rglob("*"):
        if skip and path.relative_to(directory).parts[0] in skip:
            continue
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o744:
            os.chmod(path, 0o744)


def handler_environment(ctx: Context, handler: Handler) -> str:
    """HandlerEnvironment.json, as waagent 2.7.3 writes it (paths as the VM sees them)."""
    directory = handler_dir(ctx, handler.name, handler.version)
    logs = vm_path(ctx, log_dir(ctx, handler.name))
    environment = {
        "logFolder": logs,
        "configFolder": vm_path(ctx, directory / "config"),
        "statusFolder": vm_path(ctx, directory / "status"),
        "heartbeatFile": vm_path(ctx, directory / "heartbeat.log"),
        "eventsFolder": f"{logs}/events",
        "eventsFolder_preview": f"{logs}/events",
    }
    return json.dumps([{"name": handler.name, "version": 1.0,
                        "handlerEnvironment": environment}])


def settings_files(handler: Handler) -> list[tuple[str, str]]:
    """(file name, content) of the handler's settings: `<seq>.settings` (multi-config
    `<ext>.<seq>.settings`); an empty `0.settings` for a handler without settings."""
    if not handler.settings:
        return [("0.settings", "")]
    files = []
    for s in handler.settings:
        body = {"runtimeSettings": [{"handlerSettings": {
            "publicSettings": s.public, "protectedSettings": s.protected,
            "protectedSettingsCertThumbprint": s.thumbprint}}]}
        name = f"{s.name}.{s.seq_no}.settings" if handler.multi_config and s.name \
            else f"{s.seq_no}.settings"
        files.append((name, json.dumps(body)))
    return files


@failing("enable")
def write_settings(ctx: Context, handler: Handler) -> None:
    """config/<seq>.settings; protectedSettings stay encrypted, as delivered."""
    config = handler_dir(ctx, handler.name, handler.version) / "config"
    for file_name, content in settings_files(handler):
        # 0644 as waagent's (config/ itself is 0700); protectedSettings stay encrypted.
        # Not fsynced: a crash that loses or empties one is found by the settings task's
        # check, which runs before any command of the handler.
        ctx.fs.write(config / file_name, content, mode=0o644, quiet=True, durable=False,
                     why=f"{handler.name} settings")


def load_manifest(ctx: Context, name: str, version: str) -> "HandlerManifest":
    """The handler's HandlerManifest.json (found anywhere in the package, kept at its top)."""
    from facts.extensions import read_handler_manifest

    directory = handler_dir(ctx, name, version)
    top = directory / "HandlerManifest.json"
    if not top.is_file():
        found = sorted(directory.rglob("HandlerManifest.json"))
        if found:
            ctx.fs.write(top, found[0].read_bytes(), mode=0o644, why=f"{name} manifest")
    return read_handler_manifest(top)


class Outcome(NamedTuple):
    exit_code: int
    message: str


def run_command(ctx: Context, handler: Handler, version: str, operation: str,
                env: Mapping[str, str] | None = None, *, settings: Settings | None = None,
                manifest: "HandlerManifest | None" = None, check: bool = True) -> Outcome:
    """Run one of the handler's commands (from version `version`'s directory)."""
    from system.handler_command import run_handler_command

    if ctx.run.plan and not (handler_dir(ctx, handler.name, version) / "HandlerManifest.json"
                             ).is_file():
        ctx.run.record("run", f"the {operation} command of {handler.name} {version}",
                       f"{operation} of the extension handler {handler.name}-{version}")
        return Outcome(0, "")
    manifest = manifest or load_manifest(ctx, handler.name, version)
    command = getattr(manifest, f"{operation}_command")
    directory = handler_dir(ctx, handler.name, version)
    seq = settings.seq_no if settings is not None else (
        handler.settings[0].seq_no if handler.settings and not handler.multi_config else 0)
    full_env = {
        "AZURE_GUEST_AGENT_EXTENSION_PATH": vm_path(ctx, directory),
        "AZURE_GUEST_AGENT_EXTENSION_VERSION": version,
        "AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS": wire_address(ctx),
        "ConfigSequenceNumber": str(seq),
        "AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES": json.dumps(EXTENSION_FEATURES),
        **(env or {}),
    }
    if handler.multi_config and settings is not None and settings.name:
        full_env["ConfigExtensionName"] = settings.name
    full_command = f"{vm_path(ctx, directory)}/{command.lstrip('/')}"
    full_name = f"{handler.name}.{settings.name}-{version}" if (
        handler.multi_config and settings is not None and settings.name) \
        else f"{handler.name}-{version}"
    timeout = float(os.environ.get(TIMEOUT_VARIABLE) or TIMEOUTS[operation])
    extension_log = f"CommandExecution_{settings.name}.log" if (
        handler.multi_config and settings is not None and settings.name) else "CommandExecution.log"
    result = run_handler_command(
        ctx.run, command, cwd=directory, env=full_env, timeout=timeout,
        log_dir=log_dir(ctx, handler.name), handler=full_name, log_name=extension_log,
        operation=operation, resource_limits=manifest.resource_limits)
    if result.skipped:
        return Outcome(0, result.skipped)
    if result.timed_out:
        message = f"Timeout({timeout:.0f}): {full_command}\n{result.output_tail}"
        if check:
            raise ExtensionFailed(message, CODE_TIMEOUT)
        return Outcome(CODE_TIMEOUT, message)
    if result.exit_code != 0:
        message = (f"Non-zero exit code: {result.exit_code}, {full_command}\n"
                   f"{result.output_tail}")
        if check:
            raise ExtensionFailed(message, ERROR_CODES[operation])
        return Outcome(result.exit_code if result.exit_code is not None else -1, message)
    return Outcome(0, result.output_tail)


def wire_address(ctx: Context) -> str:
    """The WireServer address handlers are told (waagent: the endpoint, e.g. 168.63.129.16)."""
    from urllib.parse import urlsplit

    given = ctx.var("wireserver")
    if given:
        return urlsplit(given if "//" in given else f"http://{given}").hostname or given
    return str(urlsplit(inputs.wireserver(ctx).base).hostname)


@failing("install")
def install_handler(ctx: Context, handler: Handler,
                    uninstall_exit_code: str = NOT_RUN) -> None:
    """installCommand; HandlerState Installed."""
    settings = handler.settings[0] if handler.settings else None
    run_command(ctx, handler, handler.version, "install",
                {"AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE": uninstall_exit_code},
                settings=settings)
    set_handler_state(ctx, handler.name, handler.version, INSTALLED)
    set_handler_status(ctx, handler, "NotReady", "Plugin installed but not enabled",
                       durable=False)


@failing("update")
def update_handler(ctx: Context, handler: Handler, old_version: str) -> None:
    """waagent's update: disable the old version (when Enabled), copy mrseq and status/,
    `update` (the new one's; on a downgrade the old one's with VERSION=new), uninstall the
    old and remove it, then install the new unless updateMode says otherwise."""
    from wire.versions import version_key

    new = handler.version
    manifest = load_manifest(ctx, handler.name, new)
    keep_going = manifest.continue_on_update_failure
    settings = handler.settings[0] if handler.settings else None
    old = handler._replace(version=old_version)

    def old_command(operation: str, extension: Settings | None = None) -> str:
        """The old version's command; its exit code for the new one's environment."""
        outcome = run_command(ctx, old, old_version, operation, settings=extension or settings,
                              check=False)
        if outcome.exit_code:
            if not keep_going:
                raise ExtensionFailed(f"{outcome.message}; ContinueOnUpdate: False",
                                      ERROR_CODES["update"])
            log.info("%s %s %s failed; continueOnUpdateFailure: going on", handler.name,
                     old_version, operation)
        elif operation == "disable" and not (extension and handler.multi_config):
            set_handler_state(ctx, handler.name, old_version, INSTALLED)
        return str(outcome.exit_code)

    disable_codes: dict[str | None, str] = {}
    if handler_state(ctx, handler.name, old_version) == ENABLED:
        if handler.multi_config:  # each enabled extension of the old version, by its name
            for enabled in enabled_extensions(ctx, handler.name, old_version):
                disable_codes[enabled.name] = old_command("disable", enabled)
        else:
            disable_codes[None] = old_command("disable")
    copy_state_files(ctx, handler.name, old_version, new)
    env = {"VERSION": new, "AZURE_GUEST_AGENT_UPDATING_FROM_VERSION": old_version}
    if handler.multi_config:
        env["AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODES_MULTIPLE_EXTENSIONS"] = json.dumps(
            [{"extensionName": s.name, "exitCode": disable_codes.get(s.name, NOT_RUN)}
             for s in handler.settings])
    else:
        env["AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE"] = disable_codes.get(None, NOT_RUN)
    runs_from = new if version_key(new) > version_key(old_version) else old_version
    # waagent tells the new version's update which version it comes from; on a downgrade
    # the old version's update runs, told the version it goes to (both as VERSION).
    if runs_from == old_version:
        env["AZURE_GUEST_AGENT_UPDATING_FROM_VERSION"] = new
    try:
        run_command(ctx, handler, runs_from, "update", env, settings=settings)
    except ExtensionFailed:
        set_handler_state(ctx, handler.name, new, FAILED_UPGRADE)
        raise
    uninstall_code = old_command("uninstall")
    remove_handler(ctx, old.name, old_version, why=f"updated to {new}")
    ctx.state.uninstall_codes[handler.name] = uninstall_code
    if manifest.update_with_install:
        run_command(ctx, handler, new, "install",
                    {"AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE": uninstall_code},
                    settings=settings)
    set_handler_state(ctx, handler.name, new, INSTALLED)
    set_handler_status(ctx, handler, "NotReady", "Plugin installed but not enabled",
                       durable=False)


def copy_state_files(ctx: Context, name: str, old: str, new: str) -> None:
    """mrseq and status/ of the old version into the new (handlers skip repeats with them)."""
    source, target = handler_dir(ctx, name, old), handler_dir(ctx, name, new)
    mrseq = source / "mrseq"
    if mrseq.is_file():
        ctx.fs.write(target / "mrseq", mrseq.read_bytes(), why=f"{name} mrseq from {old}")
    status = source / "status"
    if status.is_dir():
        for item in sorted(status.iterdir()):
            if item.is_file() and not item.is_symlink():
                # with its mode, as waagent's shutil.copy
                ctx.fs.write(target / "status" / item.name, item.read_bytes(),
                             mode=item.stat().st_mode & 0o777, quiet=True,
                             why=f"{name} status from {old}")


@failing("enable")
def enable_handler(ctx: Context, handler: Handler) -> None:
    """enableCommand (each extension of a multi-config handler); HandlerState Enabled."""
    uninstall_code = ctx.state.uninstall_codes.pop(handler.name, NOT_RUN)
    env = {"AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE": uninstall_code}
    if handler.multi_config:
        enable_extensions(ctx, handler, env)
        return
    first = handler.settings[0] if handler.settings else None
    run_command(ctx, handler, handler.version, "enable", env, settings=first)
    set_handler_state(ctx, handler.name, handler.version, ENABLED)
    set_handler_status(ctx, handler, "Ready", "Plugin enabled", durable=False)


class MultiConfigEnableFailed(ExtensionFailed):
    """Some extensions of a multi-config handler failed to enable: each has its error in
    its status file, the handler's status stays (waagent's MultiConfigExtensionEnableError)."""


def enable_extensions(ctx: Context, handler: Handler, env: Mapping[str, str]) -> None:
    """Each extension of a multi-config handler as it asks: enable (`<ext>.HandlerState`
    enabled), or disable one that was enabled (errors ignored, its files removed, as
    waagent). The handler is Enabled while one of its extensions is."""
    manifest = load_manifest(ctx, handler.name, handler.version)
    failed = []
    for settings in handler.settings:
        state_file = extension_state_file(ctx, handler.name, handler.version, settings.name)
        if settings.state == "enabled":
            try:
                run_command(ctx, handler, handler.version, "enable", env, settings=settings,
                            manifest=manifest)
            except ExtensionFailed as err:
                message = f"Error processing MultiConfig extension {handler.name}." \
                          f"{settings.name}: {err}"
                if not ctx.run.plan:
                    placeholder_status(ctx, handler, settings, "Enable", message, err.code)
                failed.append(message)
                continue
            ctx.fs.write(state_file, EXTENSION_ENABLED, quiet=True,
                         why=f"{handler.name}.{settings.name} enabled")
        elif extension_enabled(state_file):
            outcome = run_command(ctx, handler, handler.version, "disable", settings=settings,
                                  manifest=manifest, check=False)
            if outcome.exit_code:
                log.info("[Ignored Error] %s.%s disable: %s", handler.name, settings.name,
                         outcome.message)
            remove_extension_files(ctx, handler, settings)
    if enabled_extensions(ctx, handler.name, handler.version):
        set_handler_state(ctx, handler.name, handler.version, ENABLED)
        set_handler_status(ctx, handler, "Ready", "Plugin enabled")
    elif handler_state(ctx, handler.name, handler.version) == ENABLED:
        set_handler_state(ctx, handler.name, handler.version, INSTALLED)
        set_handler_status(ctx, handler, "NotReady", "Plugin disabled")
    if failed:
        raise MultiConfigEnableFailed("; ".join(failed), ERROR_CODES["enable"])


def extension_state_file(ctx: Context, name: str, version: str, extension: str | None) -> Path:
    return handler_dir(ctx, name, version) / "config" / f"{extension}.HandlerState"


def extension_enabled(path: Path) -> bool:
    return (read_small(path) or "").lower() == EXTENSION_ENABLED


def enabled_extensions(ctx: Context, name: str, version: str) -> list[Settings]:
    """The extensions of a multi-config handler whose `<ext>.HandlerState` says enabled,
    with their latest sequence number (from `<ext>.<seq>.settings`)."""
    found = []
    config = handler_dir(ctx, name, version) / "config"
    for state_file in sorted(config.glob("*.HandlerState")):
        extension = state_file.name[:-len(".HandlerState")]
        if not extension_enabled(state_file):
            continue
        seqs = [int(p.name.split(".")[-2]) for p in config.glob(f"{extension}.*.settings")
                if p.name.split(".")[-2].isdigit()]
        found.append(Settings(extension, max(seqs, default=0), "enabled", None, None, None, 0))
    return found


def remove_extension_files(ctx: Context, handler: Handler, settings: Settings) -> None:
    directory = handler_dir(ctx, handler.name, handler.version)
    for pattern in (f"config/{settings.name}.*.settings", f"status/{settings.name}.*.status",
                    f"config/{settings.name}.HandlerState"):
        for path in sorted(directory.glob(pattern)):
            ctx.fs.remove(path, why=f"extension {settings.name} disabled", quiet=True)


@failing("disable")
def disable_handler(ctx: Context, handler: Handler, version: str) -> None:
    """disableCommand (multi-config: for each enabled extension); HandlerState Installed."""
    if handler.multi_config:
        for extension in enabled_extensions(ctx, handler.name, version):
            run_command(ctx, handler._replace(version=version), version, "disable",
                        settings=extension)
            remove_extension_files(ctx, handler._replace(version=version), extension)
    else:
        run_command(ctx, handler._replace(version=version), version, "disable")
    set_handler_state(ctx, handler.name, version, INSTALLED)
    set_handler_status(ctx, handler._replace(version=version), "NotReady", "Plugin disabled")


def uninstall_handler(ctx: Context, name: str, version: str, why: str,
                      settings: tuple[Settings, ...] = ()) -> None:
    """Disable (when Enabled) and uninstall, then remove the directory and the package.
    A failing command is logged and the removal goes on, as waagent does. `settings`: a
    single-config handler's in the goal state, whose sequence number its commands get."""
    extensions = enabled_extensions(ctx, name, version)
    # A multi-config handler: each enabled extension is disabled, by its name.
    handler = Handler(name, version, "uninstall", (), bool(extensions), 0, None,
                      tuple(extensions) or settings)
    if (handler_dir(ctx, name, version) / "HandlerManifest.json").is_file():
        if handler_state(ctx, name, version) == ENABLED:
            each: list[Settings | None] = [*extensions] or [None]
            for extension in each:
                outcome = run_command(ctx, handler, version, "disable", settings=extension,
                                      check=False)
                if outcome.exit_code:
                    log.warning("%s %s disable failed: %s", name, version, outcome.message)
        if handler_state(ctx, name, version) != NOT_INSTALLED:
            outcome = run_command(ctx, handler, version, "uninstall", check=False)
            if outcome.exit_code:
                log.warning("%s %s uninstall failed: %s", name, version, outcome.message)
    remove_handler(ctx, name, version, why=why)


def remove_handler(ctx: Context, name: str, version: str, *, why: str) -> None:
    ctx.fs.remove(package_path(ctx, name, version), why=f"{name} {version} package: {why}")
    ctx.fs.remove(handler_dir(ctx, name, version), why=f"{name} {version}: {why}")


def wait_for_handler(ctx: Context, handler: Handler, goal_id: str,
                     waited: Sequence[Settings]) -> None:
    """Poll the status of each extension in `waited` every 5 s until success or error (one
    90-minute deadline per goal state); a failure marks the handlers after it as failed."""
    deadline = ctx.state.dependency_deadlines.setdefault(goal_id, time.monotonic() + float(
        os.environ.get(DEPENDENCY_VARIABLE) or DEPENDENCY_TIMEOUT))
    for settings in waited:
        name = f"{handler.name}.{settings.name}" if handler.multi_config else handler.name
        failed = _enable_failed(ctx, handler, settings)
        if failed and not ctx.run.plan:
            # No task_dep on enable: this task runs after it (the area's order) even when
            # it failed, to fail the handlers that depend on it with a status that says so.
            fail_later(ctx, handler, "Skipping processing of extensions since execution of "
                       f"dependent extension {name} failed")
        last = None
        while True:
            status = extension_status(ctx, handler, settings)
            last = status.status
            if status.found and status.status in ("success", "error"):
                break
            if time.monotonic() >= deadline or ctx.run.plan:
                break
            time.sleep(DEPENDENCY_POLL)
        if last == "success" or ctx.run.plan:
            continue
        if last == "error":
            message = f"Dependent Extension {name} did not succeed. Status was {last}"
        else:
            message = (f"Dependent Extension {name} did not reach a terminal state within "
                       f"the allowed timeout. Last status was {last}")
        fail_later(ctx, handler, message)


def _enable_failed(ctx: Context, handler: Handler, settings: Settings) -> bool:
    """Whether the enable of this extension failed (multi-config: its `<ext>.HandlerState`)."""
    if handler_state(ctx, handler.name, handler.version) != ENABLED:
        return True
    return handler.multi_config and not extension_enabled(
        extension_state_file(ctx, handler.name, handler.version, settings.name))


def fail_later(ctx: Context, part: Handler, message: str) -> None:
    """Mark what is handled after `part` (what waits for it) as failed, as waagent reports
    each extension it skips, and fail: a single-config handler's HandlerStatus; for a
    multi-config one an error status for each of the part's extensions that has none, and
    a HandlerStatus only where there is none yet."""
    parts = in_dependency_order(handlers_of(stored_goal_state(ctx) or {}))
    keys = [(p.name, p.dependency_level) for p in parts]
    key = (part.name, part.dependency_level)
    for other in parts[keys.index(key) + 1:] if key in keys else []:
        if other.state != "enabled":
            continue
        config = handler_dir(ctx, other.name, other.version) / "config"
        if not other.multi_config or not (config / "HandlerStatus").exists():
            set_handler_status(ctx, other, "NotReady", message, -1)
        if other.multi_config:
            status = handler_dir(ctx, other.name, other.version) / "status"
            ctx.fs.mkdir(status, mode=0o700, why=f"{other.name} status folder", quiet=True)
            for settings in other.settings:
                if settings.state == "enabled":
                    placeholder_status(ctx, other, settings, "Enable", message, -1)
    raise ExtensionFailed(message, -1)


# -- state files --------------------------------------------------------------------------

def set_handler_state(ctx: Context, name: str, version: str, state: str, *,
                      durable: bool = True) -> None:
    """config/HandlerState: what decides whether install runs again, so fsynced unless
    the caller says why its loss costs nothing."""
    config = handler_dir(ctx, name, version) / "config"
    if not config.is_dir():
        ctx.fs.mkdir(config, mode=0o700, why=f"{name} config folder", quiet=True)
    ctx.fs.write(config / "HandlerState", state, quiet=True, durable=durable,
                 why=f"{name} {version} {state}")


def set_handler_status(ctx: Context, handler: Handler, status: str, message: str,
                       code: int = 0, *, durable: bool = True) -> None:
    """config/HandlerStatus, as waagent's ExtHandlerStatus serialises. `durable=False`
    where the operation runs again at the next agent start (install is followed by
    enable, enable reruns once per start, a failure is retried), which any power cut
    means: that run writes it again."""
    config = handler_dir(ctx, handler.name, handler.version) / "config"
    if not config.is_dir():
        ctx.fs.mkdir(config, mode=0o700, why=f"{handler.name} config folder", quiet=True)
    body = {"name": handler.name, "version": handler.version, "status": status, "code": code,
            "message": message, "supports_multi_config": handler.multi_config,
            "extension_status": None}
    ctx.fs.write(config / "HandlerStatus", json.dumps(body), quiet=True, durable=durable,
                 why=f"{handler.name} status {status}")


def placeholder_status(ctx: Context, handler: Handler, settings: Settings, operation: str,
                       message: str, code: int) -> None:
    """An error status file where the handler wrote none (multi-config failures)."""
    path = status_path(ctx, handler, settings)
    if path.exists():
        return
    from wire.status import utc_stamp

    body = [{"version": 1.0, "timestampUTC": utc_stamp(),
             "status": {"name": f"{handler.name}.{settings.name}", "operation": operation,
                        "status": "error", "code": code,
                        "formattedMessage": {"lang": "en-US", "message": message}}}]
    ctx.fs.write(path, json.dumps(body), mode=0o600, quiet=True, why="placeholder status")


def status_path(ctx: Context, handler: Handler, settings: Settings) -> Path:
    directory = handler_dir(ctx, handler.name, handler.version) / "status"
    if handler.multi_config and settings.name:
        return directory / f"{settings.name}.{settings.seq_no}.status"
    return directory / f"{settings.seq_no}.status"


def extension_status(ctx: Context, handler: Handler, settings: Settings) -> Any:
    from facts.extensions import read_status_file

    return read_status_file(status_path(ctx, handler, settings),
                            handler=f"{handler.name}-{handler.version}", retries=0)
