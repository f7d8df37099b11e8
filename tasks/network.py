"""Tasks of the 'network' area: the route to the WireServer, stable NIC names, the firewall.

- `network:routes`: when the WireServer endpoint has no route at all (not even a default
  route) and the DHCP lease carries one towards it (a classless static route, option
  121/249, or a router, option 3), `ip route add <endpoint>/32 via <gateway>`. It reruns
  when the DHCP client restarts (its PIDs are an input: a restarted client may have
  flushed the route), when the lease's routes or the endpoint change; the daemon checks
  every `OS.MonitorDhcpClientRestartPeriod`. A route the admin deletes between restarts
  stays deleted (waagent's behaviour), and an existing route is never replaced.
- `network:persistent-rules`: udev's persistent NIC naming rules moved to
  `<Lib.Dir>/<same name>`, as waagent does, so that a VM made from this image names its
  NIC eth0 whatever its MAC address; checked every `OS.RemovePersistentNetRulesPeriod`.
- `network:firewall` (`OS.EnableFirewall=y`): the rule set of system/firewall.py in the
  kernel, checked against the live rules every `OS.EnableFirewallPeriod` and rebuilt
  when partial; waagent 2.x's rules replaced. `network:firewall-boot` keeps it across
  reboots: the unit `<agent>-network-setup.service` runs `waagent -setup-firewall=<ip>`
  before the network comes up (named as waagent's own unit, which it overrides from
  /etc/systemd/system); where firewalld runs and only iptables is there, firewalld's
  permanent direct rules instead (firewalld flushes iptables rules it does not own).
  With `OS.EnableFirewall=n` the `firewall` task removes the agent's rules and its unit.

Routes and netfilter rules are the running kernel's: against a root that is not the
running system (an image, a sandbox) the commands are recorded as skipped and never run;
the unit file, a file of the root, is written there.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from graph.context import Context
from graph.doit_private import save_values
from graph.uptodate import Check, Inputs
from system import firewall
from system.errors import AgentError
from system.fs import MARKER
from tasks import TaskDict, inputs

log = logging.getLogger("waagent.network")

RULES_FILES = ("/lib/udev/rules.d/75-persistent-net-generator.rules",
               "/etc/udev/rules.d/70-persistent-net.rules")
UNIT_DIR = "/etc/systemd/system"
UNIT_TEMPLATE = "waagent-network-setup.service"
# The target whose .wants/ link `systemctl enable` makes for WantedBy=network.target.
UNIT_WANTED_BY = "network.target"


class Explained(Check):
    """A probe of the real state that also says why it is up to date (plans show it):
    `probe` returns (what is wrong or None, why that is fine)."""

    def __init__(self, name: str, probe: Callable[[], tuple[str | None, str]]) -> None:
        self.name = name
        self.probe = probe

    def __call__(self, task: Any, values: Any) -> bool:
        try:
            problem, self.kept = self.probe()
        except Exception as err:  # noqa: BLE001 - see Check._cannot_check
            self.kept = ""
            return self._cannot_check(err)
        self.reason = problem or ""
        return problem is None

    def __repr__(self) -> str:
        return f"Explained({self.name})"


class UnchangedRuleset(Check):
    """The firewall check, cheap while nothing moved: up to date without listing any rule
    while the kernel's nf_tables generation is the one at which `full` (the listing) last
    found everything in place. Any change of the ruleset (our table edited or flushed,
    `nft flush ruleset`, iptables-nft rules) moves the generation, and the listing runs.
    Only with the nft backend: iptables-legacy rules live outside nf_tables."""

    def __init__(self, name: str, full: Explained, nft_backend: Callable[[], bool]) -> None:
        self.name = name
        self.full = full
        self.nft_backend = nft_backend
        self.key = f"nft-generation:{name}"

    def __call__(self, task: Any, values: Any) -> bool:
        try:
            # Read before the listing: a change in between makes the next check list again.
            generation = firewall.nft_generation() if self.nft_backend() else None
        except Exception:  # noqa: BLE001 - the listing then tells
            generation = None
        if generation is not None and values.get(self.key) == generation:
            self.reason = ""
            self.kept = f"nftables unchanged since the rules were last listed (generation " \
                        f"{generation})"
            save_values(task, {self.key: generation})
            return True
        passed = self.full(task, values)
        self.reason, self.kept = self.full.reason, self.full.kept
        if passed and generation is not None:
            save_values(task, {self.key: generation})
        return passed

    def __repr__(self) -> str:
        return f"UnchangedRuleset({self.name})"


def not_running_system(ctx: Context) -> str:
    return f"root {ctx.root.base} is not the running system"


# ---------------------------------------------------------------- the endpoint

def endpoint_address(ctx: Context) -> str | None:
    """The WireServer's address: from `wireserver=`, else discovered (running system only);
    None for another root without `wireserver=` (it never guesses a platform address)."""
    given = ctx.var("wireserver")
    if given:
        from wire.http import base_url

        return urllib.parse.urlsplit(base_url(given, 80)).hostname
    if not ctx.root.is_host:
        return None
    return urllib.parse.urlsplit(inputs.wireserver(ctx).base).hostname


# ---------------------------------------------------------------- routes

def route_inputs(ctx: Context) -> dict[str, Any]:
    """What makes `network:routes` run again: a DHCP client restart, another lease or
    endpoint. (Another root: only the endpoint; its kernel is not this one.)"""
    if not ctx.root.is_host:
        return {"root": str(ctx.root.base), "endpoint": endpoint_address(ctx)}
    from facts import routes  # the running system's lease and PIDs only

    lease = routes.lease_routes(ctx.root)
    clients = ctx.state.dhcp_client_pids = routes.dhcp_client_pids(
        ctx.root, ctx.state.dhcp_client_pids)
    return {"dhcp_client_pids": clients,
            "endpoint": endpoint_address(ctx),
            "lease": None if lease is None else {
                "routers": [str(r) for r in lease.routers],
                "classless": [f"{r.network},{r.gateway}" for r in lease.classless],
                "interface": lease.interface}}


def ensure_platform_route(ctx: Context) -> None:
    """Add the lease's route to the endpoint when the kernel has none that covers it."""
    from facts import routes

    address = endpoint_address(ctx)
    if not ctx.root.is_host:
        ctx.run.record("skip", f"ip -4 route add {address or '<WireServer>'}/32 (from the "
                       "DHCP lease, when the endpoint has no route)",
                       f"{not_running_system(ctx)}: routes are set by the VM's own agent")
        return
    if address is None:
        raise AgentError("no WireServer endpoint known: give wireserver=URL")
    existing = routes.route_to(routes.route_table(ctx.root), address)
    if existing is not None:
        log.debug("the WireServer %s is reached through %s: no route added", address, existing)
        return
    lease = routes.lease_routes(ctx.root)
    route = None if lease is None else routes.platform_route(lease, address)
    if route is None:
        log.warning("no route to the WireServer %s, and no DHCP lease with a route towards "
                    "it: check the network configuration", address)
        return
    ctx.run.change(route.argv(), why=f"route to the WireServer ({route.reason})")
    log.info("changed: route %s (%s)", route, route.reason)


# ---------------------------------------------------------------- persistent rules

def rules_moves(ctx: Context) -> list[tuple[str, str]]:
    """(rules file, where it goes) for each persistent naming rules file present."""
    return [(path, f"{ctx.conf.required_path('Lib.Dir')}/{path.rsplit('/', 1)[1]}")
            for path in RULES_FILES if (ctx.root / path).is_file()]


def rules_problem(ctx: Context) -> tuple[str | None, str]:
    moves = rules_moves(ctx)
    if moves:
        return f"{moves[0][0]} is in place" + (" (and one more)" if len(moves) > 1 else ""), ""
    return None, f"neither {' nor '.join(RULES_FILES)} is there"


def move_rules_aside(ctx: Context) -> None:
    """Move each persistent naming rules file to Lib.Dir, replacing an older copy there."""
    moves = rules_moves(ctx)
    if moves:
        ctx.fs.mkdir(ctx.lib_dir, mode=0o700, why="agent state directory")
    for source, target in moves:
        ctx.fs.move(ctx.root / source, ctx.root / target,
                    why="persistent NIC names would pin this VM's MAC address")


# ---------------------------------------------------------------- firewall

def firewall_endpoint(ctx: Context) -> str:
    address = endpoint_address(ctx)
    if address is None:
        raise firewall.FirewallError(
            f"{not_running_system(ctx)} and no wireserver= was given: the firewall needs the "
            "WireServer's address")
    return firewall.firewall_address(address)


def firewall_problem(ctx: Context) -> tuple[str | None, str]:
    address = firewall_endpoint(ctx)
    state = firewall.firewall_state(ctx.run, address)
    problem = firewall.state_problem(state)
    kept = (f"{state.backend} rules towards {address}: DNS for all, root, no new "
            "connections from other users")
    return problem, kept


def set_up_firewall(ctx: Context) -> None:
    """Our rules in the kernel (the running system only), waagent's replaced."""
    address = endpoint_address(ctx)
    why = f"firewall towards the WireServer {address}: only root opens connections"
    if not ctx.root.is_host:
        ctx.run.record("skip", f"firewall rules towards {address or '<WireServer>'}", f"{why}; "
                       f"{not_running_system(ctx)}: the boot unit sets them there")
        return
    firewall.set_up_firewall(ctx.run, firewall_endpoint(ctx), why=why)


def unit_name(ctx: Context) -> str:
    from tasks import inputs

    return f"{inputs.distro(ctx).family_facts.agent_service}-network-setup.service"


def unit_text(ctx: Context, address: str) -> str:
    from graph.service import agent_path, template

    return template(UNIT_TEMPLATE).substitute(marker=MARKER, waagent=agent_path(ctx),
                                              address=address)


def uses_firewalld(ctx: Context) -> bool:
    """firewalld keeps the rules where it runs and only iptables is there: it flushes the
    iptables rules it does not own (our own nft table it leaves alone)."""
    return (ctx.root.is_host and firewall.backend(ctx.run) == "iptables"
            and firewall.firewalld_running(ctx.run))


def boot_problem(ctx: Context) -> tuple[str | None, str]:
    address = firewall_endpoint(ctx)
    name = unit_name(ctx)
    if uses_firewalld(ctx):
        for rule in firewall.iptables_rules(address):
            if not ctx.run.probe(firewall.firewalld_argv("query", rule)).ok:
                return "firewalld lacks a permanent rule: " + " ".join(rule), ""
        return None, "firewalld's permanent direct rules set the firewall at boot"
    unit = ctx.root / UNIT_DIR / name
    try:
        text = unit.read_text()
    except FileNotFoundError:
        return f"{UNIT_DIR}/{name} is missing", ""
    if text != unit_text(ctx, address):
        return f"{UNIT_DIR}/{name} is not the unit for {address}", ""
    if not (ctx.root / UNIT_DIR / f"{UNIT_WANTED_BY}.wants" / name).is_symlink():
        return f"{name} is not enabled", ""
    return None, f"{name} sets the firewall for {address} before the network comes up"


def keep_firewall_at_boot(ctx: Context) -> None:
    """The boot unit (or firewalld's permanent rules) that sets the firewall again."""
    address = firewall_endpoint(ctx)
    name = unit_name(ctx)
    if uses_firewalld(ctx):
        for rule in firewall.iptables_rules(address):
            if not ctx.run.probe(firewall.firewalld_argv("query", rule)).ok:
                ctx.run.change(firewall.firewalld_argv("add", rule),
                               why="firewalld sets the WireServer firewall at boot")
        remove_boot_unit(ctx, why="firewalld keeps the firewall")
        return
    unit = ctx.root / UNIT_DIR / name
    ctx.fs.mkdir(unit.parent, why="systemd units")
    changed = ctx.fs.write(unit, unit_text(ctx, address), mode=0o644,
                           why=f"set the firewall towards {address} before the network")
    ctx.fs.symlink(ctx.root / UNIT_DIR / f"{UNIT_WANTED_BY}.wants" / name,
                   f"{UNIT_DIR}/{name}", why=f"start {name} at boot")
    if changed and ctx.root.is_host:
        from system import osutil

        if osutil.systemd_running(ctx.run):
            ctx.run.change(["systemctl", "daemon-reload"], why=f"systemd reads {name}")


def remove_boot_unit(ctx: Context, *, why: str) -> None:
    name = unit_name(ctx)
    for path in (f"{UNIT_DIR}/{UNIT_WANTED_BY}.wants/{name}", f"{UNIT_DIR}/{name}"):
        real = ctx.root / path
        if path.endswith(name) and not real.is_symlink() and real.exists() and \
                MARKER not in real.read_text(errors="replace"):
            continue  # not ours: an admin's unit of that name
        ctx.fs.remove(real, why=why)


def disabled_problem(ctx: Context) -> tuple[str | None, str]:
    name = unit_name(ctx)
    unit = ctx.root / UNIT_DIR / name
    if unit.exists() and MARKER in unit.read_text(errors="replace"):
        return f"{UNIT_DIR}/{name} still sets the firewall at boot", ""
    if not ctx.root.is_host:
        return None, f"no boot unit of ours; {not_running_system(ctx)}: its kernel is not checked"
    try:
        kind = firewall.backend(ctx.run)
    except firewall.FirewallError:
        return None, "neither nft nor iptables is installed: no rules to remove"
    present = []
    if kind == "nft" and firewall.nft_listing(ctx.run, firewall.NFT_TABLE) is not None:
        present.append("nftables table " + " ".join(firewall.NFT_TABLE))
    present += firewall.agent_iptables_lines(firewall.iptables_listing(ctx.run))
    if present:
        return f"agent firewall rules still in place: {present[0]}", ""
    return None, "no agent firewall rules and no boot unit of ours"


def remove_agent_firewall(ctx: Context) -> None:
    """OS.EnableFirewall=n: the agent's rules and its boot unit go."""
    why = "OS.EnableFirewall=n"
    remove_boot_unit(ctx, why=why)
    if ctx.root.is_host and disabled_problem(ctx)[0] is not None:
        firewall.remove_firewall(ctx.run, why=why)


# ---------------------------------------------------------------- -setup-firewall

def setup_firewall_command(address: str, uid: int = firewall.ROOT_UID) -> int:
    """`waagent -setup-firewall=<ip>`: the rules now, on the running system (the boot unit
    runs it before the network; it reads no configuration and writes no file)."""
    import sys

    from system import Root, Runner

    try:
        firewall.set_up_firewall(Runner(root=Root("/")), firewall.firewall_address(address),
                                 uid, why="waagent -setup-firewall")
    except AgentError as err:
        print(f"waagent -setup-firewall: {err}", file=sys.stderr)
        return 1
    print(f"firewall towards {address} set: DNS for all users, uid {uid}, no new "
          "connections from other users")
    return 0


# ---------------------------------------------------------------- the tasks

def generate(ctx: Context) -> Iterator[TaskDict]:
    """routes, persistent-rules, firewall (+ firewall-boot when OS.EnableFirewall=y);
    none when System Center VMM provisions this VM (the agent stands aside)."""
    if inputs.mode(ctx) == "scvmm":
        return
    yield {
        "name": "routes",
        "doc": "route to the WireServer from the DHCP lease when it has none; again after "
               "a DHCP client restart",
        "actions": [(ensure_platform_route, [ctx])],
        "uptodate": [Inputs("network:routes", lambda: route_inputs(ctx))],
    }
    yield {
        "name": "persistent-rules",
        "doc": "udev's persistent NIC naming rules moved to Lib.Dir",
        "actions": [(move_rules_aside, [ctx])],
        "uptodate": [Explained("network:persistent-rules", lambda: rules_problem(ctx))],
    }
    if not ctx.conf.flag("OS.EnableFirewall"):
        yield {
            "name": "firewall",
            "doc": "no firewall towards the WireServer (OS.EnableFirewall=n): the agent's "
                   "rules and boot unit removed",
            "actions": [(remove_agent_firewall, [ctx])],
            "uptodate": [Explained("network:firewall", lambda: disabled_problem(ctx))],
        }
        return
    live: Check = (UnchangedRuleset("network:firewall",
                                    Explained("network:firewall", lambda: firewall_problem(ctx)),
                                    lambda: firewall.backend(ctx.run) == "nft")
                   if ctx.root.is_host else
                   Inputs("network:firewall", lambda: {"root": str(ctx.root.base),
                                                       "endpoint": endpoint_address(ctx)}))
    yield {
        "name": "firewall",
        "doc": "firewall towards the WireServer: DNS for all, root only for the rest",
        "actions": [(set_up_firewall, [ctx])],
        "uptodate": [live],
    }
    yield {
        "name": "firewall-boot",
        "doc": "the firewall set again at boot, before the network (unit or firewalld)",
        "task_dep": ["network:firewall"],
        "actions": [(keep_firewall_at_boot, [ctx])],
        "uptodate": [Explained("network:firewall-boot", lambda: boot_problem(ctx))],
    }

