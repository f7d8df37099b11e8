"""What the provisioning tasks decide from, gathered once per run and shared.

Values are read lazily (in actions and up-to-date checks, never while the graph
loads) and kept in the run's state (`ctx.state`, graph.context.RunState). Tasks
fingerprint the *stored* facts (facts.store, written by the gather tasks) so a later
boot without the DVD sees the same inputs as the boot that provisioned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from facts import store
from facts.store import GoalStateFacts, OvfFacts
from graph.context import UNREAD, Context
from system.errors import AgentError

if TYPE_CHECKING:
    from facts.distro import Distro
    from facts.media import ProvisioningData
    from facts.scvmm import ScvmmMedia
    from wire.documents import GoalState
    from wire.transport import TransportPair
    from wire.wireserver import WireServerClient

PROVISIONED_FILE = "provisioned"


class NotProvisionable(AgentError):
    """Provisioning cannot start: no OVF data, or the data is unusable."""


# The VM id of an offline image root (no DMI): per-VM work done in the image is done
# again when the image boots as a VM, which has a real id.
IMAGE_VM_ID = "offline-image"


def vm_id(ctx: Context) -> str:
    """This VM's id (DMI product_uuid, byte-swapped as the platform shows it)."""
    from facts.hardware import vm_id as read_vm_id

    def read() -> str:
        if not ctx.root.is_host and not (ctx.root / "sys/class/dmi/id/product_uuid").exists():
            return IMAGE_VM_ID
        return read_vm_id(ctx.root)

    if ctx.state.vm_id is None:
        ctx.state.vm_id = read()
    return ctx.state.vm_id


def distro(ctx: Context) -> Distro:
    """The distribution of the root (family, init system, DHCP client, sshd unit)."""
    from facts.distro import distro as read_distro

    if ctx.state.distro is None:
        ctx.state.distro = read_distro(ctx.root)
    return ctx.state.distro


def provisioning_data(ctx: Context) -> ProvisioningData | None:
    """The OVF for this boot: the `media=` image, the DVD, or the kept copy."""
    from facts.media import provisioning_data as read

    if ctx.state.ovf is UNREAD:
        image = ctx.var("media")
        ctx.state.ovf = read(ctx.fs, ctx.conf, image=Path(image) if image else None)
    return ctx.state.ovf


def keep_facts(ctx: Context, name: str, facts: Mapping[str, Any]) -> None:
    """Store a facts document; in a plan, where the store write is only recorded, keep it
    in this run's memory instead, so that the tasks after it see what a run would store."""
    store.save(ctx.fs, ctx.conf, name, facts)
    if ctx.run.plan:
        import json

        # As the store would give it back: JSON values (lists, not tuples).
        ctx.state.planned_facts[name] = json.loads(store.dumps(facts))


@overload
def stored_facts(ctx: Context, name: Literal["ovf"]) -> OvfFacts | None: ...
@overload
def stored_facts(ctx: Context, name: Literal["goalstate"]) -> GoalStateFacts | None: ...
@overload
def stored_facts(ctx: Context, name: str) -> Mapping[str, Any] | None: ...
def stored_facts(ctx: Context, name: str) -> Mapping[str, Any] | None:
    """A facts document as this run stored it (in a plan: gathered into memory)."""
    if ctx.run.plan:
        planned = ctx.state.planned_facts
        if name in planned:
            return planned[name]
        if ctx.state.planned_clear:
            return None  # the previous VM's facts would be gone by now
    return store.load(ctx.root, ctx.conf, name)


def ovf_facts(ctx: Context) -> OvfFacts:
    """The stored, secret-free OVF facts of the boot that read the media.

    Read once a run (two dozen checks ask; treat it as read-only); gather:ovf forgets it
    when it stores new facts.
    """
    found = ctx.state.ovf_facts
    if found is None:
        found = stored_facts(ctx, "ovf")
        if found is None:
            raise NotProvisionable("no provisioning data: no ovf-env.xml was found on a DVD, "
                                   "in the media= image or in the kept copy")
        ctx.state.ovf_facts = found
    return found


def goal_facts(ctx: Context) -> GoalStateFacts:
    """The stored facts of the last goal state (incarnation, ids, certificates)."""
    found = stored_facts(ctx, "goalstate")
    if found is None:
        raise NotProvisionable("no goal state has been fetched yet")
    return found


def wireserver(ctx: Context) -> WireServerClient:
    """A client of the WireServer: `wireserver=` when given, else the discovered endpoint."""
    def make() -> WireServerClient:
        from wire.wireserver import WireServerClient

        given = ctx.var("wireserver")
        if given:
            return WireServerClient(given)
        if not ctx.root.is_host:
            # A sandbox or an image has no platform of its own: never guess one (the
            # fixed address would reach the platform of the machine running this).
            raise NotProvisionable(f"root {ctx.root.base} is not the running system, so it "
                                   "has no WireServer of its own: give wireserver=URL")
        from wire.endpoint import discover_endpoint, remember_endpoint

        endpoint = discover_endpoint(ctx.root, ctx.conf)
        remember_endpoint(ctx.fs, ctx.root, ctx.conf, endpoint.address)
        return WireServerClient(endpoint.address)

    if ctx.state.wireserver is None:
        ctx.state.wireserver = make()
    return ctx.state.wireserver


def goal_state(ctx: Context) -> GoalState:
    """The current goal state, fetched once per run. The protocol version is checked on
    first contact (no goal state stored yet), as the platform's agent does at start."""
    if ctx.state.goal_state is None:
        client = wireserver(ctx)
        if stored_facts(ctx, "goalstate") is None:  # a GET: a plan asks too
            client.check_protocol_version()
        fetched, ctx.state.goal_state_document = ctx.state.goal_state_document, None
        ctx.state.goal_state = client.goal_state(fetched=fetched)
    return ctx.state.goal_state


def goal_state_digest(text: str) -> str:
    """What identifies a goal state document: the SHA-256 of its text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def handled_goal_state(ctx: Context) -> str | None:
    """The digest of the goal state document whose facts are stored (None before the
    first one, and for facts stored by an agent that kept no digest)."""
    stored = stored_facts(ctx, "goalstate")
    return str(stored["sha256"]) if stored and stored.get("sha256") else None


def goal_state_unchanged(ctx: Context) -> bool:
    """True when the platform serves the very goal state document whose facts are stored.

    Nothing then needs parsing: a boot with nothing new loads no XML parser. The document
    is kept for `goal_state`, which parses it without fetching it again if a task of this
    run needs the goal state itself (a changed one, or a check that found work to do).
    """
    from wire import decode_text

    handled = handled_goal_state(ctx)
    if handled is None:
        return False
    document = ctx.state.goal_state_document = wireserver(ctx).goal_state_document()
    return goal_state_digest(decode_text(document)) == handled


def start_transport_pair(ctx: Context) -> None:
    """Start generating the transport key pair when none is kept yet: RSA key generation
    (in an openssl process of its own) then overlaps loading the graph, reading the
    DVD, fetching the goal state and the user's tasks on the way to Ready. Called before
    doit loads (graph.loader.start_early_work) and again by gather:vm (a no-op by then)."""
    from wire import TRANSPORT_CERT, TRANSPORT_KEY

    if ctx.run.plan or ctx.state.transport_pair is not None or (
            (ctx.lib_dir / TRANSPORT_KEY).exists() and (ctx.lib_dir / TRANSPORT_CERT).exists()):
        return
    from wire.transport import start_transport_keygen

    ctx.state.transport_pair = start_transport_keygen(ctx.fs, ctx.lib_dir, openssl(ctx))


def openssl(ctx: Context) -> str:
    """The openssl binary to run: `OS.OpensslPath` (waagent's default /usr/bin/openssl);
    without the binary the in-process fallback does the work."""
    return ctx.conf.text("OS.OpensslPath") or "openssl"


def transport_pair(ctx: Context) -> TransportPair:
    """The kept transport pair, or a new one (started ahead by `start_transport_pair`)."""
    from wire.transport import ensure_transport_pair

    return ensure_transport_pair(ctx.fs, ctx.lib_dir, generated=ctx.state.transport_pair)


def provisioned_vm_id(ctx: Context) -> str | None:
    """What `<Lib.Dir>/provisioned` holds: the id of the VM provisioned here ("" in the
    empty marker of older agents), or None when this root was never provisioned."""
    try:
        return (ctx.lib_dir / PROVISIONED_FILE).read_text().strip()
    except FileNotFoundError:
        return None


def marker_names_this_vm(recorded: str, current: str) -> bool:
    """Whether a marker's id is this VM's, whichever agent wrote it: an id as waagent
    compares them (any case, or in SMBIOS byte order), or none at all (older agents
    wrote an empty marker, which waagent takes as this VM's)."""
    from facts.hardware import same_vm_id

    return recorded == "" or same_vm_id(recorded, current)


def is_provisioned(ctx: Context) -> bool:
    """True when the marker says this VM was provisioned (by this agent or another)."""
    recorded = provisioned_vm_id(ctx)
    return recorded is not None and marker_names_this_vm(recorded, vm_id(ctx))


def mode(ctx: Context) -> str:
    """Who provisions: "waagent" (these tasks), "cloud-init" (we only report), "disabled",
    or "scvmm" (System Center VMM's DVD: its installer runs, nothing of Azure's does).

    Decided from configuration and a few files of the root, once per run (every area asks
    while the graph loads). Only `DetectScvmmEnv=y` (off by default) reads the DVD here.
    """
    def decide() -> str:
        conf = ctx.conf
        if conf.flag("DetectScvmmEnv") and scvmm_media(ctx) is not None:
            return "scvmm"
        agent = conf.text("Provisioning.Agent")
        if not conf.flag("Provisioning.Enabled") or agent == "disabled":
            return "disabled"
        if agent == "waagent":
            return "waagent"
        if agent == "cloud-init" or conf.flag("Provisioning.UseCloudInit"):
            return "cloud-init"
        from facts.distro import cloud_init_enabled

        return "cloud-init" if cloud_init_enabled(ctx.root) else "waagent"

    if ctx.state.mode is None:
        ctx.state.mode = decide()
    return ctx.state.mode


def scvmm_media(ctx: Context) -> ScvmmMedia | None:
    """System Center VMM's DVD (the `media=` image, or a DVD device), or None."""
    from facts.scvmm import scvmm_media as find

    if ctx.state.scvmm_media is UNREAD:
        image = ctx.var("media")
        ctx.state.scvmm_media = find(ctx.root, Path(image) if image else None)
    return ctx.state.scvmm_media


def home_dir(ctx: Context, username: str) -> str:
    """The user's home as the VM sees it (OS.HomeDir/USER)."""
    return f"{ctx.conf.required_path('OS.HomeDir').rstrip('/')}/{username}"


def expand_ovf_path(ctx: Context, path: str, username: str) -> str:
    """An OVF key path with `$HOME` expanded (`$HOME/user/.ssh/...` or `/home/user/...`)."""
    home_root = ctx.conf.required_path("OS.HomeDir").rstrip("/")
    if path.startswith("$HOME"):
        rest = path[len("$HOME"):].lstrip("/")
        return f"{home_root}/{rest}" if rest.startswith(username + "/") or rest == username \
            else f"{home_root}/{username}/{rest}"
    if not path.startswith("/"):
        raise NotProvisionable(f"SSH key path {path!r} is neither absolute nor under $HOME")
    return path
