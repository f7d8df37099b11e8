"""Context: what every task generator and action is given (root, config, runner, files)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conf import Config, load_config
from conf.config import default_config
from system import FileSystem, Root, Runner

if TYPE_CHECKING:
    from concurrent.futures import Future

    from facts.distro import Distro
    from facts.media import ProvisioningData
    from facts.scvmm import ScvmmMedia
    from facts.store import OvfFacts
    from wire.artifacts import ArtifactClient
    from wire.documents import GoalState
    from wire.wireserver import WireServerClient

DEFAULT_CONF = "/etc/waagent.conf"


class Unread(Enum):
    """A fact of the run not read yet, where None is an answer ("there is none")."""

    UNREAD = "unread"


UNREAD = Unread.UNREAD


class RunState:
    """What one run has read, fetched or decided, shared by its tasks (tasks/inputs.py
    and the areas fill it lazily, in actions and checks, never while the graph loads).
    None, or UNREAD where None is an answer, means not read yet.

    The class attributes are the defaults. A plain class, not a dataclass: every start
    makes one, and a dataclass generates and compiles its methods when it is defined."""

    # -- facts of this VM and root (tasks.inputs)
    vm_id: str | None = None
    distro: Distro | None = None
    # Who provisions: "waagent", "cloud-init", "disabled" or "scvmm" (tasks.inputs.mode).
    mode: str | None = None
    # The provisioning data of this boot (None: no DVD, media= or kept copy).
    ovf: ProvisioningData | None | Unread = UNREAD
    # The stored OVF facts (gather:ovf forgets them when it stores new ones).
    ovf_facts: OvfFacts | None = None
    scvmm_media: ScvmmMedia | None | Unread = UNREAD
    # -- the platform
    wireserver: WireServerClient | None = None
    goal_state: GoalState | None = None
    # A goal state document fetched to compare with the stored one, kept unparsed for
    # `goal_state` to parse without fetching it again.
    goal_state_document: bytes | None = None
    # Waits for the transport key pair started ahead (wire.transport.start_transport_keygen).
    transport_pair: Callable[[], tuple[bytes, bytes]] | None = None
    # The incarnation whose certificates this run installed (tasks.certificates: the SSH
    # keys may need them before Ready, the certificates area installs them after).
    certificates_installed: str | None = None
    # -- a plan: what a run would store or clear, kept in memory (a plan stores nothing)
    planned_facts: dict[str, dict[str, Any]]
    planned_clear: bool = False
    # -- provisioning once per VM (tasks.once): task -> the inputs it was done with
    once_records: dict[str, Any] | None = None
    # -- the resource disk (tasks.disk): the device as the actions wait for it, and as
    # present now (for probes)
    disk_device: str | None | Unread = UNREAD
    disk_present: str | None | Unread = UNREAD
    # -- the network area: the DHCP client PIDs seen last (the daemon's monitor looks at
    # these first; tasks.network)
    dhcp_client_pids: Sequence[int] = ()
    # -- the kernel area: (IPv4 address, MAC) of the RDMA interface
    rdma_addresses: tuple[str, str | None] | None = None
    # -- extensions (tasks.extensions)
    artifact_client: ArtifactClient | None = None
    # A new goal state's extensions read on a thread while its certificates are fetched
    # (tasks.extensions.start_reading): for which incarnation, against which stored facts,
    # and the reading, which gather:extensions takes.
    extensions_ahead: tuple[str, Any, Future[Any]] | None = None
    # handler name -> the exit code of the old version's uninstall, for the new one's enable
    uninstall_codes: dict[str, str]
    # goal state id -> when waiting for the handlers a handler depends on gives up
    dependency_deadlines: dict[str, float]
    # -- deprovision: the operator said no; the message says so (graph.reporter prints it)
    deprovision_cancelled: str | None = None

    def __init__(self) -> None:
        # The containers: one of each per run.
        self.planned_facts = {}
        self.uninstall_codes = {}
        self.dependency_deadlines = {}


class Context:
    """One agent run: the root it works on, its configuration and its system boundary."""

    def __init__(self, root: Root, conf: Config, run: Runner, fs: FileSystem,
                 vars: dict[str, str] | None = None, state: RunState | None = None,
                 ) -> None:
        self.root = root
        self.conf = conf
        self.run = run
        self.fs = fs
        # Command-line variables (root=, conf=, media=, wireserver=...), as given.
        self.vars: dict[str, str] = vars if vars is not None else {}
        # What this run has read and decided so far, shared by its tasks.
        self.state = state if state is not None else RunState()

    @cached_property
    def lib_dir(self) -> Path:
        """`Lib.Dir` inside the root: the agent's state directory (root and configuration
        are fixed for a run; the checks ask for it ~40 times)."""
        return self.root / self.conf.required_path("Lib.Dir")

    def path(self, system_path: str) -> Path:
        """A system path (as the VM sees it) inside the root."""
        return self.root / system_path

    def command_path(self, real: Path) -> str:
        """How a command run by `ctx.run` names a real path: inside a chroot it is the
        path as the VM sees it; otherwise the real path."""
        return self.root.system_path(real) if self.run.chroot else str(real)

    @property
    def scratch_dir(self) -> Path | None:
        """Where candidate files go so that a command in a chroot can read them."""
        return self.root / "tmp" if self.run.chroot else None

    def var(self, name: str, default: str | None = None) -> str | None:
        """A command-line variable (`name=value`)."""
        return self.vars.get(name, default)


def make_context(variables: dict[str, str], *, plan: bool = False) -> Context:
    """Build the Context from command-line variables: root=DIR conf=FILE chroot=y ...

    The configuration file is looked up inside the root unless given as `conf=`.
    A missing /etc/waagent.conf means the built-in defaults, as waagent does.
    """
    root = Root(variables.get("root") or os.environ.get("WAAGENT_ROOT") or "/")
    conf_arg = variables.get("conf")
    if conf_arg:
        conf = load_config(conf_arg)
    else:
        conf_file = root.follow(DEFAULT_CONF)  # an absolute link is read inside the root
        conf = load_config(conf_file) if conf_file.exists() else default_config()
    chroot = variables.get("chroot", "n").lower() in ("y", "yes", "1", "true")
    runner = Runner(root=root, plan=plan, chroot=chroot)
    return Context(root=root, conf=conf, run=runner, fs=FileSystem(runner), vars=dict(variables))
