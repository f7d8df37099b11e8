"""The firewall towards the WireServer (PLATFORM.md section 7): rules, their check, their setup.

Towards the endpoint, TCP only: DNS (port 53) is allowed for every user, root (uid 0:
the agent) is allowed, and any other user's new or invalid connection is dropped. So an
unprivileged process cannot fetch certificates or settings from the WireServer.

nftables first: a table of our own, `ip waagent_graph`, replaced whole and atomically by
one `nft -f` transaction (add, delete, define: the add makes the delete succeed when the
table is absent). Without `nft`, the iptables `security` table, as waagent does. Either way
the rules waagent 2.x left are recognised and removed: its nft table `ip walinuxagent`
(2.15: one rule), and its iptables rules in the security table (the DNS, owner and
conntrack rules, and the `INVALID,NEW -j ACCEPT` of 2.2.25 and older), for any
destination (an earlier endpoint's rules are stale too).

Why nft first where waagent 2.15 tries iptables first: a table of our own is replaced in
one transaction (never a moment with half the rules), leaves the admin's chains alone, and
is checked by listing one table; on today's distributions `iptables` itself is a front
end to nftables. iptables stays the fallback for images without `nft`.

The rule text below is what `nft list table` prints back (nftables 1.0): the check
compares the live listing, counters aside, with it. Listing takes an `nft` process; the
kernel's ruleset generation (`nft_generation`, one netlink request) tells in-process
whether anything in nftables changed since a listing found our rules in place.
"""

import ipaddress
import re
import shutil
import socket
import struct
from collections.abc import Sequence
from typing import NamedTuple

from system.errors import AgentError, CommandFailed
from system.runner import Runner

NFT_TABLE = ("ip", "waagent_graph")
WAAGENT_NFT_TABLE = ("ip", "walinuxagent")
CHAIN = "output"
DNS_PORT = 53
ROOT_UID = 0
_COUNTER = re.compile(r"counter packets \d+ bytes \d+")


class FirewallError(AgentError):
    """The firewall towards the WireServer cannot be set up or checked."""


class FirewallState(NamedTuple):
    """What is in the kernel: our rules as listed, and what waagent 2.x left."""

    backend: str  # "nft" or "iptables"
    problem: str | None  # why our rule set is not in place, or None
    leftovers: tuple[str, ...]  # waagent 2.x rules (shown), to be removed


def firewall_address(text: str) -> str:
    """The endpoint as an IPv4 address the firewall may guard; FirewallError otherwise.

    A loopback, link-local-broadcast or unspecified address is refused: dropping non-root
    TCP to 127.0.0.1 would cut every local service off from its users.
    """
    try:
        address = ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise FirewallError(f"{text!r} is not an IPv4 address: the firewall towards the "
                            "WireServer needs the endpoint's address") from None
    if address.is_loopback or address.is_unspecified or address.is_multicast or (
            address == ipaddress.IPv4Address("255.255.255.255")):
        raise FirewallError(f"refusing to firewall {address}: it is not a WireServer address "
                            "(loopback, multicast or unspecified), and non-root programs "
                            "would lose it; give the platform's endpoint")
    return str(address)


# -- nftables ------------------------------------------------------------------------------

def nft_rules(address: str, uid: int = ROOT_UID) -> tuple[str, ...]:
    """Our chain's rules, in order, as `nft list` prints them (counters as `counter`)."""
    return (
        f'ip daddr {address} tcp dport {DNS_PORT} counter accept '
        'comment "DNS to the WireServer: every user"',
        f'ip daddr {address} meta l4proto tcp meta skuid {uid} counter accept '
        'comment "the agent (root)"',
        f'ip daddr {address} meta l4proto tcp ct state invalid,new counter drop '
        'comment "no new connections from other users"',
    )


def nft_script(address: str, uid: int = ROOT_UID, *, remove_waagent: bool = True) -> str:
    """One `nft -f` transaction: our table replaced whole; waagent's table removed."""
    family, table = NFT_TABLE
    lines = [f"table {family} {table}", f"delete table {family} {table}",
             f"table {family} {table} {{",
             f"\tchain {CHAIN} {{",
             "\t\ttype filter hook output priority filter; policy accept;",
             *(f"\t\t{rule}" for rule in nft_rules(address, uid)),
             "\t}", "}"]
    if remove_waagent:
        lines += _delete_table_lines(WAAGENT_NFT_TABLE)
    return "\n".join(lines) + "\n"


def nft_remove_script(*, ours: bool = True, waagent: bool = True) -> str:
    """One `nft -f` transaction removing our table and/or waagent's (absent ones too)."""
    lines: list[str] = []
    if ours:
        lines += _delete_table_lines(NFT_TABLE)
    if waagent:
        lines += _delete_table_lines(WAAGENT_NFT_TABLE)
    return "\n".join(lines) + "\n"


def _delete_table_lines(table: tuple[str, str]) -> list[str]:
    family, name = table
    return [f"table {family} {name}", f"delete table {family} {name}"]


def listed_chain_rules(listing: str) -> list[str]:
    """The rules of chain `output` in an `nft list table` listing, counters as `counter`."""
    rules: list[str] = []
    inside = False
    for raw in listing.splitlines():
        line = raw.strip()
        if line.startswith("chain "):
            inside = line.split()[1] == CHAIN
            continue
        if not inside or not line or line == "}" or line.startswith("type "):
            continue
        rules.append(_COUNTER.sub("counter", line))
    return rules


def nft_rules_problem(listing: str | None, address: str, uid: int = ROOT_UID) -> str | None:
    """Why the listed table is not our rule set for `address`, or None."""
    family, table = NFT_TABLE
    if listing is None:
        return f"nftables table {family} {table} is missing"
    if "hook output priority filter; policy accept;" not in listing.replace(
            "priority 0;", "priority filter;"):
        return f"nftables table {family} {table} has no output chain hooked as expected"
    found = listed_chain_rules(listing)
    wanted = list(nft_rules(address, uid))
    if found == wanted:
        return None
    missing = [rule for rule in wanted if rule not in found]
    if missing:
        return (f"nftables table {family} {table} lacks {len(missing)} of {len(wanted)} rules "
                f"(first: {missing[0]})")
    return f"nftables table {family} {table} holds other rules than ours ({len(found)} rules)"


# Netlink (linux/netfilter/nfnetlink.h, nf_tables.h): the nf_tables generation request.
NETLINK_NETFILTER = 12
NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
NFT_MSG_NEWGEN = (10 << 8) | 15
NFTA_GEN_ID = 1
NLMSG_ERROR = 2
NLM_F_REQUEST = 1


def nft_generation() -> int | None:
    """The kernel's nf_tables ruleset generation in this network namespace: every committed
    change of the ruleset (any table, `nft flush ruleset`, iptables-nft rules) moves it.
    None when it cannot be read (no nf_tables in the kernel, no CAP_NET_ADMIN)."""
    request = struct.pack("=IHHII", 20, NFT_MSG_GETGEN, NLM_F_REQUEST, 1, 0) + \
        struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           NETLINK_NETFILTER) as sock:
            sock.settimeout(2.0)
            sock.send(request)
            answer = sock.recv(4096)
    except OSError:
        return None
    return parse_nft_generation(answer)


def parse_nft_generation(answer: bytes) -> int | None:
    """NFTA_GEN_ID of a NFT_MSG_NEWGEN netlink answer; None for an error or anything else."""
    if len(answer) < 20:
        return None
    length, kind = struct.unpack_from("=IH", answer)
    if kind != NFT_MSG_NEWGEN or length > len(answer):
        return None
    offset = 20  # nlmsghdr (16) and nfgenmsg (4)
    while offset + 4 <= length:
        size, attribute = struct.unpack_from("=HH", answer, offset)
        if size < 4:
            return None
        if attribute & 0x3FFF == NFTA_GEN_ID and size >= 8:
            generation: int = struct.unpack_from(">I", answer, offset + 4)[0]
            return generation
        offset += (size + 3) & ~3
    return None


# -- iptables ------------------------------------------------------------------------------

IPTABLES = ("iptables", "-w", "-t", "security")


def iptables_rules(address: str, uid: int = ROOT_UID) -> tuple[tuple[str, ...], ...]:
    """Our rules as `iptables -A` arguments, in order (waagent's exact rules)."""
    base = ("OUTPUT", "-d", address, "-p", "tcp")
    return (
        (*base, "--destination-port", str(DNS_PORT), "-j", "ACCEPT"),
        (*base, "-m", "owner", "--uid-owner", str(uid), "-j", "ACCEPT"),
        (*base, "-m", "conntrack", "--ctstate", "INVALID,NEW", "-j", "DROP"),
    )


def listed_iptables_rules(address: str, uid: int = ROOT_UID) -> tuple[str, ...]:
    """Our rules as `iptables -S OUTPUT` prints them."""
    prefix = f"-A OUTPUT -d {address}/32 -p tcp"
    return (f"{prefix} -m tcp --dport {DNS_PORT} -j ACCEPT",
            f"{prefix} -m owner --uid-owner {uid} -j ACCEPT",
            f"{prefix} -m conntrack --ctstate INVALID,NEW -j DROP")


_WAAGENT_IPTABLES = re.compile(
    r"^-A OUTPUT -d (?P<address>\d+\.\d+\.\d+\.\d+)/32 -p tcp "
    r"(?:-m tcp --dport 53 -j ACCEPT"
    r"|-m owner --uid-owner \d+ -j ACCEPT"
    r"|-m conntrack --ctstate INVALID,NEW -j (?:DROP|ACCEPT))$")


def agent_iptables_lines(listing: str) -> list[str]:
    """Lines of `iptables -t security -S OUTPUT` that waagent (or we) added, any endpoint."""
    return [line.strip() for line in listing.splitlines()
            if _WAAGENT_IPTABLES.match(line.strip())]


def iptables_delete_args(line: str) -> list[str]:
    """The `-D` arguments that delete a rule listed by `iptables -S`."""
    words = line.split()
    return ["-D", *words[1:]]


def iptables_rules_problem(listing: str, address: str, uid: int = ROOT_UID) -> str | None:
    """Why the security table's OUTPUT chain lacks our rules (in order), or None."""
    ours = [line for line in agent_iptables_lines(listing)
            if line.startswith(f"-A OUTPUT -d {address}/32 ")]
    wanted = list(listed_iptables_rules(address, uid))
    if ours == wanted:
        return None
    if not ours:
        return f"iptables security table has no rules towards {address}"
    return (f"iptables security table holds {len(ours)} of the rules towards {address}, "
            f"want {len(wanted)} in order: a partial set is rebuilt")


# -- the live rule set ---------------------------------------------------------------------

def backend(runner: Runner) -> str:
    """"nft" where the nft tool is installed, else "iptables"; FirewallError with neither."""
    if _tool(runner, "nft"):
        return "nft"
    if _tool(runner, "iptables"):
        return "iptables"
    raise FirewallError("neither nft nor iptables is installed: install nftables to keep "
                        "non-root programs from the WireServer, or set OS.EnableFirewall=n")


def _tool(runner: Runner, name: str) -> bool:
    if runner.chroot:
        return any((runner.root / d / name).exists() for d in ("usr/sbin", "sbin", "usr/bin",
                                                                "bin"))
    return shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin") is not None


def nft_listing(runner: Runner, table: tuple[str, str]) -> str | None:
    """`nft list table` of one table, or None when it does not exist."""
    result = runner.probe(["nft", "list", "table", *table])
    if result.ok:
        return result.stdout
    if "No such file or directory" in result.stderr:
        return None
    raise FirewallError(f"nft list table {' '.join(table)} failed: {result.stderr.strip()}")


def iptables_listing(runner: Runner) -> str:
    """`iptables -t security -S OUTPUT`, or "" without iptables."""
    if not _tool(runner, "iptables"):
        return ""
    result = runner.probe([*IPTABLES, "-S", "OUTPUT"])
    if not result.ok:
        raise FirewallError(f"iptables -t security -S OUTPUT failed: {result.stderr.strip()}")
    return result.stdout


def firewall_state(runner: Runner, address: str, uid: int = ROOT_UID) -> FirewallState:
    """Read-only look at the kernel's rules towards `address`."""
    kind = backend(runner)
    iptables = iptables_listing(runner)
    leftovers: list[str] = []
    if kind == "nft":
        problem = nft_rules_problem(nft_listing(runner, NFT_TABLE), address, uid)
        if nft_listing(runner, WAAGENT_NFT_TABLE) is not None:
            leftovers.append(f"nftables table {' '.join(WAAGENT_NFT_TABLE)}")
        leftovers += [f"iptables {line}" for line in agent_iptables_lines(iptables)]
    else:
        problem = iptables_rules_problem(iptables, address, uid)
        wanted = listed_iptables_rules(address, uid)
        leftovers += [f"iptables {line}" for line in agent_iptables_lines(iptables)
                      if line not in wanted]
    return FirewallState(kind, problem, tuple(leftovers))


def state_problem(state: FirewallState) -> str | None:
    """What the check reports: our rules missing, or waagent's left in place."""
    if state.problem:
        return state.problem
    if state.leftovers:
        return (f"rules of an earlier agent are in place: {state.leftovers[0]}"
                + (f" and {len(state.leftovers) - 1} more" if len(state.leftovers) > 1 else ""))
    return None


def set_up_firewall(runner: Runner, address: str, uid: int = ROOT_UID, *, why: str) -> None:
    """Put our rule set for `address` in place and remove waagent's (the running system)."""
    kind = backend(runner)
    iptables = iptables_listing(runner)
    if kind == "nft":
        runner.change(["nft", "-f", "-"], input=nft_script(address, uid), why=why)
        stale = agent_iptables_lines(iptables)
    else:
        wanted = listed_iptables_rules(address, uid)
        ours = [line for line in agent_iptables_lines(iptables)
                if line.startswith(f"-A OUTPUT -d {address}/32 ")]
        # A partial or disordered set is removed and set up again, as waagent does.
        rebuild = ours != list(wanted)
        stale = [line for line in agent_iptables_lines(iptables)
                 if rebuild or line not in wanted]
    for line in stale:
        _delete_iptables(runner, line, why="remove a firewall rule of waagent 2.x or a stale "
                                           "endpoint")
    if kind == "iptables":
        if rebuild:
            for rule in iptables_rules(address, uid):
                runner.change([*IPTABLES, "-A", *rule], why=why)
        if _tool(runner, "nft") and nft_listing(runner, WAAGENT_NFT_TABLE) is not None:
            runner.change(["nft", "-f", "-"], input=nft_remove_script(ours=False), why=why)


def remove_firewall(runner: Runner, *, why: str) -> None:
    """Remove our rules and waagent's from the running system (deprovision)."""
    if _tool(runner, "nft"):
        runner.change(["nft", "-f", "-"], input=nft_remove_script(), why=why)
    for line in agent_iptables_lines(iptables_listing(runner)):
        _delete_iptables(runner, line, why=why)


def _delete_iptables(runner: Runner, line: str, *, why: str) -> None:
    try:
        runner.change([*IPTABLES, *iptables_delete_args(line)], why=why)
    except CommandFailed as err:
        if "does a matching rule exist" not in str(err) and "Bad rule" not in str(err):
            raise


def firewalld_running(runner: Runner) -> bool:
    """True when firewalld answers `firewall-cmd --state` with running."""
    if not _tool(runner, "firewall-cmd"):
        return False
    return runner.probe(["firewall-cmd", "--state"]).stdout.strip() == "running"


def firewalld_argv(action: str, rule: Sequence[str]) -> list[str]:
    """A permanent direct passthrough rule for firewalld (`--add-passthrough`,
    `--query-passthrough`, `--remove-passthrough`) in the security table."""
    return ["firewall-cmd", "--permanent", "--direct", f"--{action}-passthrough", "ipv4",
            "-t", "security", "-A", *rule]
