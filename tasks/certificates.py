"""The goal state's certificates: fetched, decrypted and stored as `<THUMB>.crt`/`.prv`.

certificates:install  when the goal state has certificates and they changed (a new
                      incarnation, or a stored certificate is gone): fetch the document
                      with the transport certificate, decrypt it, store the files

A task of its own, placed by the provision group (tasks/__init__.py) after Ready: it waits
for the transport key pair (an RSA key generated since the agent started), and nothing on
the way to Ready needs the certificates unless the OVF names one for an SSH key or a key
pair. Then ssh:certificates installs them first (`install`), and this task finds them
installed by this run. It first starts reading the goal state's extensions in the
background, for gather:extensions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from facts import store
from graph.context import Context
from graph.uptodate import Inputs, Probe
from tasks import TaskDict, inputs

FACTS: Final = "certificates"


def generate(ctx: Context) -> Iterator[TaskDict]:
    if inputs.mode(ctx) == "scvmm":
        return  # System Center VMM provisions: there is no goal state
    yield {
        "name": "install",
        "doc": "fetch, decrypt and store the goal state's certificates (.crt, .prv)",
        "actions": [(read_extensions_ahead, [ctx]), (install, [ctx])],
        "task_dep": ["gather:goalstate"],
        "uptodate": [Inputs("certificates", lambda: wanted(ctx)),
                     Probe("certificates", lambda: stored_missing(ctx))],
    }


def wanted(ctx: Context) -> dict[str, Any]:
    """What the certificates depend on: the goal state's incarnation and whether it has any."""
    goal = inputs.goal_facts(ctx)
    return {"vm_id": inputs.vm_id(ctx), "incarnation": goal["incarnation"],
            "has_certificates": goal.get("has_certificates", True)}


def thumbprints(ctx: Context) -> list[str]:
    """The thumbprints of the certificates stored for the current goal state."""
    found = store.load(ctx.root, ctx.conf, FACTS)
    return list(found["thumbprints"]) if found else []


def named_by_ovf(ctx: Context) -> dict[str, str]:
    """The certificates the OVF's SSH keys (those without a value) and key pairs name:
    thumbprint -> the file of Lib.Dir they need (`.crt`, or `.prv` for a key pair)."""
    ovf = inputs.ovf_facts(ctx)
    named = {str(k["fingerprint"]).upper(): ".crt" for k in ovf["public_keys"]
             if not k.get("value") and k.get("fingerprint")}
    named.update((str(k["fingerprint"]).upper(), ".prv") for k in ovf["key_pairs"])
    return named


def planned_thumbprints(ctx: Context) -> str:
    """The certificates the OVF's keys and key pairs name, for a plan to show."""
    if inputs.mode(ctx) != "waagent":
        return "none (this agent does not provision)"
    named = named_by_ovf(ctx)
    return ", ".join(f"{thumb} ({'key pair' if suffix == '.prv' else 'SSH key'})"
                     for thumb, suffix in named.items()) or "none"


def stored_missing(ctx: Context) -> str | None:
    for thumb in thumbprints(ctx):
        if not (ctx.lib_dir / f"{thumb}.crt").exists():
            return f"certificate {thumb}.crt is missing from Lib.Dir"
    return None


def read_extensions_ahead(ctx: Context) -> None:
    """Start reading the new goal state's extensions (tasks/extensions.py: network work
    that writes nothing) before the certificates: it goes on while they are fetched and
    decrypted, and gather:extensions, placed after this area, takes it. Not in `install`,
    which ssh:certificates also runs on the way to Ready."""
    from tasks.extensions import start_reading

    start_reading(ctx, inputs.goal_state(ctx))


def install(ctx: Context) -> None:
    """Fetch and store the certificates of the current goal state (once a run)."""
    state = inputs.goal_state(ctx)
    if ctx.state.certificates_installed == state.incarnation:
        return  # ssh:certificates needed them before Ready
    found: list[str] = []
    if state.certificates_url:
        if ctx.run.plan:  # a plan keeps no transport key: it could not decrypt them
            ctx.run.record("fetch", "certificates", f"incarnation {state.incarnation}; "
                           f"the OVF names {planned_thumbprints(ctx)}")
            ctx.state.certificates_installed = state.incarnation
            return
        from wire.certs import install_certificates
        from wire.errors import HttpStatusError
        from wire.wireserver import STALE_REFRESHES

        pair = inputs.transport_pair(ctx)
        for attempt in range(1, STALE_REFRESHES + 1):
            try:
                document = inputs.wireserver(ctx).certificates(state, pair)
                break
            except HttpStatusError as err:
                if err.status != 410 or attempt == STALE_REFRESHES:
                    raise
            # 410 Gone: the goal state moved on while we read it; take the new one.
            from tasks.gather import store_goal_facts

            ctx.state.goal_state = None
            state = inputs.goal_state(ctx)
            store_goal_facts(ctx, state)
        if document is not None:
            bundle = install_certificates(ctx.fs, ctx.lib_dir, document, pair,
                                          openssl=inputs.openssl(ctx))
            found = sorted(bundle.thumbprints)
    facts: store.CertificateFacts = {"incarnation": state.incarnation, "thumbprints": found}
    store.save(ctx.fs, ctx.conf, FACTS, facts)
    ctx.state.certificates_installed = state.incarnation
