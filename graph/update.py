"""Self-update (`AutoUpdate.*`): which version of the agent to run, its download and install.

The daemon asks `AgentUpdater.tick` every loop. It looks when the goal state's agent
family (`AutoUpdate.GAFamily`, from ExtensionsConfig's GAFamilies) changed, else every
`Autoupdate.Frequency` seconds, the first time at the first goal state:
- the family's manifest (a PluginVersionManifest) lists the versions on offer;
- `choose_version` picks one: the version the platform pins (RSM: `isVMEnabledForRSMUpgrades`
  with `isVersionFromRSM` and `Version`), up or down but never below the installed agent;
  otherwise the newest offered above the running one. Blacklisted versions never;
- its package comes through the extensions' download path (wire/artifacts.py: the
  HostGAPlugin first, then the manifest's locations), is checked whole (system/unpack.py)
  and for its version (graph/agent_package.py), and is unpacked beside the others, in
  `<Lib.Dir>/waagent-graph-X/`;
- the daemon then stops cleanly and execs the launcher (graph/launcher.py), which runs
  the newest good version.

A downgrade the platform asks for withdraws the versions above it (the launcher skips
them) until it asks for one of them again. `AutoUpdate.Enabled=n`: nothing is looked at
and the launcher runs the installed agent. `AutoUpdate.UpdateToLatestVersion=n`: nothing
is downloaded; what is installed still runs. RSM is followed unless waagent.conf says
`Debug.EnableGAVersioning=n` (waagent 2.7.3's default is n, later agents' y: this agent
supports it).

The status blob's `guestAgentStatus.updateStatus` says, while the platform pins a
version, whether this agent runs it (Success) or not (Error, with why), as waagent does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from graph import launcher
from graph.agent_package import VERSION_PATTERN, BadAgentPackage, verify_package
from graph.launcher import version_key
from graph.version import AGENT_NAME, AGENT_VERSION
from system.errors import AgentError

if TYPE_CHECKING:
    from conf import Config
    from graph.context import Context
    from wire.extensions_config import GAFamily

log = logging.getLogger("waagent.update")

WITHDRAWN = "withdrawn"


class Choice(NamedTuple):
    """What to do about the agent's version."""

    version: str | None  # install (when needed) and switch to it; None: stay
    why: str
    requested: str | None = None  # the version the platform pins (RSM), for updateStatus
    error: bool = False  # the pinned version cannot be run


def rsm_enabled(conf: Config) -> bool:
    """Platform pins are followed unless waagent.conf says Debug.EnableGAVersioning=n."""
    return conf.flag("Debug.EnableGAVersioning") or \
        conf.source("Debug.EnableGAVersioning") == "default"


def follows_rsm(family: GAFamily | None, *, enabled: bool) -> bool:
    return bool(enabled and family is not None and family.is_vm_enabled_for_rsm_upgrades)


def choose_version(family: GAFamily | None, offered: Sequence[str], *, running: str, base: str,
                   blacklisted: Collection[str], rsm: bool = True) -> Choice:
    """The version to run, from the agent family of the goal state and its manifest.

    `running` is this process's version, `base` the installed agent's (never gone below),
    `rsm` whether pins of the platform are followed (Debug.EnableGAVersioning)."""
    if family is None:
        return Choice(None, "the goal state has no such agent family")
    if follows_rsm(family, enabled=rsm):
        if not family.is_version_from_rsm:
            return Choice(None, "the VM takes its agent versions from RSM, and the goal state's "
                                "is not one: no update")
        target = family.version
        if not target or not VERSION_PATTERN.match(target):
            return Choice(None, f"the platform pins no usable version ({target!r})", error=True)
        if target == running:
            return Choice(None, f"running {target}, the version the platform asks for",
                          requested=target)
        if version_key(target) < version_key(base):
            return Choice(None, f"the platform asks for {target}, below the installed agent "
                                f"{base}: not supported", requested=target, error=True)
        if target in blacklisted:
            return Choice(None, f"the platform asks for {target}, which is blacklisted here",
                          requested=target, error=True)
        if target not in offered:
            return Choice(None, f"the platform asks for {target}, which its manifest does not "
                                "offer", requested=target, error=True)
        return Choice(target, f"the platform asks for {target}", requested=target)
    usable = [v for v in offered if VERSION_PATTERN.match(v) and v not in blacklisted]
    newest = max(usable, key=version_key, default=None)
    if newest is None or version_key(newest) <= version_key(running):
        return Choice(None, f"running {running}; nothing newer on offer")
    return Choice(newest, f"{newest} is newer than {running}")


def update_status(choice: Choice, running: str, message: str | None = None) -> dict[str, Any] | None:
    """`guestAgentStatus.updateStatus` while the platform pins a version, else None."""
    if choice.requested is None:
        return None
    ok = choice.requested == running
    text = message or (f"running {running}" if ok else choice.why)
    return {"expectedVersion": choice.requested, "status": "Success" if ok else "Error",
            "code": 0 if ok else 1, "formattedMessage": {"lang": "en-US", "message": text}}


def _family_key(family: GAFamily | None) -> tuple[Any, ...] | None:
    if family is None:
        return None
    return (family.uris, family.version, family.is_version_from_rsm,
            family.is_vm_enabled_for_rsm_upgrades)


class AgentUpdater:
    """The daemon's self-update state: when it looked last, what it reports."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.next_check = 0.0
        self.family_seen: tuple[Any, ...] | None = None
        self.status: dict[str, Any] | None = None  # updateStatus for the status blob
        self.goal_state: Any = None

    def tick(self, ctx: Context, goal_state: Any) -> bool:
        """Look for a version to switch to when due; True when one is installed and the
        daemon is to hand over to the launcher."""
        conf = ctx.conf
        if goal_state is None or not conf.flag("AutoUpdate.Enabled"):
            self.status = None
            return False
        new_goal_state = goal_state is not self.goal_state
        self.goal_state = goal_state
        if not new_goal_state and self.clock() < self.next_check:
            return False
        try:
            family = self.family(ctx, goal_state)
        except AgentError as err:
            log.warning("agent update: ExtensionsConfig not read: %s", err)
            return False
        if self.clock() < self.next_check and _family_key(family) == self.family_seen:
            return False
        self.family_seen = _family_key(family)
        self.next_check = self.clock() + (conf.number("Autoupdate.Frequency") or 3600)
        if not conf.flag("AutoUpdate.UpdateToLatestVersion"):
            log.debug("agent update: AutoUpdate.UpdateToLatestVersion=n: nothing downloaded")
            return False
        try:
            return self.check(ctx, goal_state, family)
        except AgentError as err:
            log.warning("agent update failed: %s", err)
            if self.status is not None and self.status["status"] == "Error":
                self.status["formattedMessage"]["message"] = str(err)
            return False

    @staticmethod
    def family(ctx: Context, goal_state: Any) -> GAFamily | None:
        from tasks import inputs

        extensions = inputs.wireserver(ctx).extensions_config(goal_state)
        name = ctx.conf.text("AutoUpdate.GAFamily") or "Prod"
        return extensions.ga_family(name) if extensions is not None else None

    def check(self, ctx: Context, goal_state: Any, family: GAFamily | None) -> bool:
        name = ctx.conf.text("AutoUpdate.GAFamily") or "Prod"
        if family is None or not family.uris:
            self.status = None
            log.info("agent update: the goal state has no agent family %s with a manifest", name)
            return False
        client = artifact_client(ctx, goal_state)
        manifest = client.manifest(family.uris, handler=f"agent family {name}")
        records = launcher.installed_versions(ctx)
        blacklisted = {v for v, r in launcher_records(ctx).items()
                       if r.blacklisted is not None and not r.blacklisted.get(WITHDRAWN)}
        choice = choose_version(family, [v.version for v in manifest.versions],
                                running=AGENT_VERSION, base=launcher.base_version(),
                                blacklisted=blacklisted, rsm=rsm_enabled(ctx.conf))
        self.status = update_status(choice, AGENT_VERSION)
        log.log(logging.WARNING if choice.error else logging.INFO, "agent update: %s",
                choice.why)
        if choice.version is None:
            return False
        offered = manifest.find(choice.version)
        assert offered is not None
        if choice.version not in records:
            data = client.package(offered.uris, handler=AGENT_NAME, version=choice.version)
            try:
                install(ctx, choice.version, data)
            except AgentError as err:
                if isinstance(err, BadAgentPackage) or _is_unsafe(err):
                    launcher.blacklist(ctx, choice.version, f"bad package: {err}")
                raise
        set_withdrawn(ctx, choice.version, None)
        if choice.requested is not None:
            for version in records:
                if version_key(version) > version_key(choice.version):
                    set_withdrawn(ctx, version, f"the platform asked for {choice.version}")
        log.info("agent update: switching from %s to %s", AGENT_VERSION, choice.version)
        return True


def _is_unsafe(err: Exception) -> bool:
    from system.unpack import UnsafeArchive

    return isinstance(err, UnsafeArchive)


def artifact_client(ctx: Context, goal_state: Any) -> Any:
    """The extensions' download path: the HostGAPlugin first, then the locations."""
    from tasks.extensions import hostplugin_client
    from tasks.status import proxy
    from wire.artifacts import ArtifactClient

    return ArtifactClient(hostplugin_client(ctx, goal_state, retry=False), proxy=proxy(ctx))


def launcher_records(ctx: Context) -> dict[str, launcher.Record]:
    """The records of every version directory, installed or not (a package refused as bad
    leaves only its record)."""
    found: dict[str, launcher.Record] = {}
    try:
        entries = list(ctx.lib_dir.iterdir())
    except FileNotFoundError:
        return found
    prefix = f"{AGENT_NAME}-"
    for entry in entries:
        version = entry.name[len(prefix):]
        if entry.name.startswith(prefix) and VERSION_PATTERN.match(version) and entry.is_dir() \
                and not entry.is_symlink():
            found[version] = launcher.load_record(entry)
    return found


def install(ctx: Context, version: str, data: bytes) -> None:
    """Check the package and unpack it to `<Lib.Dir>/waagent-graph-<version>/`."""
    from system.unpack import unpack_zip

    name = f"{AGENT_NAME}-{version}.zip"
    verify_package(data, version, where=name)
    target = launcher.version_dir(ctx, version)
    unpack_zip(ctx.fs, data, target, name=name, replace=target.exists())
    log.info("agent update: %s-%s installed in %s", AGENT_NAME, version,
             ctx.root.system_path(target))


def set_withdrawn(ctx: Context, version: str, reason: str | None) -> None:
    """Withdraw an installed version (the launcher skips it) or take it back (None)."""
    directory = launcher.version_dir(ctx, version)
    record = launcher.load_record(directory)
    withdrawn = bool((record.blacklisted or {}).get(WITHDRAWN))
    if reason is None and withdrawn:
        launcher.save_record(ctx, directory, record._replace(blacklisted=None))
    elif reason is not None and record.blacklisted is None:
        log.info("agent update: %s-%s withdrawn: %s", AGENT_NAME, version, reason)
        launcher.save_record(ctx, directory, record._replace(
            blacklisted={"at": time.time(), "reason": reason, WITHDRAWN: True}))
