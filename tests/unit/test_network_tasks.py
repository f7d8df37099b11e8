"""The network area without root: rule generation and checks, lease routes, the proxy
decision, the tasks as dicts, plans and runs on a sandbox root, the command line."""

from __future__ import annotations

import ipaddress
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from conf import load_config
from conf.config import default_config
from graph import cli
from graph.context import Context, make_context
from system import firewall
from tasks import network
from tests.sandbox import make_sandbox_root
from wire.dhcp import MAGIC_COOKIE
from wire.proxy import bypassed, configured_proxy, download_proxy

VM_ID = "11111111-2222-3333-4444-555555555555"
ENDPOINT = "192.0.2.1"

# `nft list table ip waagent_graph` after our script, as nftables 1.0.6 prints it.
NFT_LISTING = """table ip waagent_graph {
\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\tip daddr 192.0.2.1 tcp dport 53 counter packets 3 bytes 180 accept comment "DNS to the WireServer: every user"
\t\tip daddr 192.0.2.1 meta l4proto tcp meta skuid 0 counter packets 12 bytes 720 accept comment "the agent (root)"
\t\tip daddr 192.0.2.1 meta l4proto tcp ct state invalid,new counter packets 1 bytes 60 drop comment "no new connections from other users"
\t}
}
"""
# `iptables -w -t security -S OUTPUT` with waagent 2.x's rules (and one of the admin's).
IPTABLES_LISTING = """-P OUTPUT ACCEPT
-A OUTPUT -d 192.0.2.1/32 -p tcp -m tcp --dport 53 -j ACCEPT
-A OUTPUT -d 192.0.2.1/32 -p tcp -m owner --uid-owner 0 -j ACCEPT
-A OUTPUT -d 192.0.2.1/32 -p tcp -m conntrack --ctstate INVALID,NEW -j DROP
-A OUTPUT -d 10.9.9.9/32 -p tcp -m tcp --dport 22 -j ACCEPT
-A OUTPUT -d 168.63.129.16/32 -p tcp -m conntrack --ctstate INVALID,NEW -j ACCEPT
"""


# -- firewall rules ------------------------------------------------------------------------

def test_nft_script_replaces_our_table_and_removes_waagents() -> None:
    script = firewall.nft_script(ENDPOINT)
    lines = script.splitlines()
    # add + delete + define: the delete never fails, the whole file is one transaction.
    assert lines[:3] == ["table ip waagent_graph", "delete table ip waagent_graph",
                         "table ip waagent_graph {"]
    assert lines[-2:] == ["table ip walinuxagent", "delete table ip walinuxagent"]
    for rule in firewall.nft_rules(ENDPOINT):
        assert f"\t\t{rule}" in lines
    assert "walinuxagent" not in firewall.nft_script(ENDPOINT, remove_waagent=False)


def test_nft_listing_is_checked_counters_aside() -> None:
    assert firewall.nft_rules_problem(NFT_LISTING, ENDPOINT) is None
    older = NFT_LISTING.replace("priority filter;", "priority 0;")  # nftables 0.9 prints this
    assert firewall.nft_rules_problem(older, ENDPOINT) is None
    assert "missing" in (firewall.nft_rules_problem(None, ENDPOINT) or "")
    partial = "\n".join(line for line in NFT_LISTING.splitlines() if "skuid" not in line)
    assert "lacks 1 of 3 rules" in (firewall.nft_rules_problem(partial, ENDPOINT) or "")
    assert "lacks 3 of 3" in (firewall.nft_rules_problem(NFT_LISTING, "192.0.2.9") or "")
    extra = NFT_LISTING.replace("\t}\n}", "\t\tip daddr 1.2.3.4 drop\n\t}\n}")
    assert "other rules" in (firewall.nft_rules_problem(extra, ENDPOINT) or "")


def test_iptables_rules_are_waagents_own() -> None:
    assert firewall.iptables_rules(ENDPOINT)[0] == (
        "OUTPUT", "-d", ENDPOINT, "-p", "tcp", "--destination-port", "53", "-j", "ACCEPT")
    assert firewall.iptables_rules_problem(IPTABLES_LISTING, ENDPOINT) is None
    lines = firewall.agent_iptables_lines(IPTABLES_LISTING)
    assert len(lines) == 4  # the admin's port 22 rule is not the agent's
    assert lines[-1].endswith("INVALID,NEW -j ACCEPT")  # waagent <= 2.2.25's rule
    assert firewall.iptables_delete_args(lines[0])[:4] == ["-D", "OUTPUT", "-d", "192.0.2.1/32"]
    partial = IPTABLES_LISTING.replace(
        "-A OUTPUT -d 192.0.2.1/32 -p tcp -m owner --uid-owner 0 -j ACCEPT\n", "")
    assert "partial set" in (firewall.iptables_rules_problem(partial, ENDPOINT) or "")
    assert "no rules" in (firewall.iptables_rules_problem("-P OUTPUT ACCEPT\n", ENDPOINT) or "")


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255",
                                     "wireserver", "::1"])
def test_firewall_refuses_addresses_that_are_no_wireserver(address: str) -> None:
    with pytest.raises(firewall.FirewallError):
        firewall.firewall_address(address)
    assert firewall.firewall_address(" 168.63.129.16\n") == "168.63.129.16"


def test_state_problem_names_leftovers() -> None:
    state = firewall.FirewallState("nft", None, ("nftables table ip walinuxagent", "x"))
    assert firewall.state_problem(state) == ("rules of an earlier agent are in place: "
                                             "nftables table ip walinuxagent and 1 more")
    assert firewall.state_problem(firewall.FirewallState("nft", None, ())) is None


def newgen_answer(generation: int) -> bytes:
    """A NFT_MSG_NEWGEN answer as the kernel sends it: NFTA_GEN_ID, the PID and the name of
    the process that made the last change."""
    def attribute(kind: int, payload: bytes) -> bytes:
        data = struct.pack("=HH", 4 + len(payload), kind) + payload
        return data + b"\0" * (-len(data) % 4)

    attributes = (attribute(1, struct.pack(">I", generation))
                  + attribute(2, struct.pack(">I", 4242)) + attribute(3, b"nft\0"))
    return (struct.pack("=IHHII", 20 + len(attributes), firewall.NFT_MSG_NEWGEN, 0, 1, 0)
            + struct.pack("=BBH", 0, 0, generation & 0xFFFF) + attributes)


def test_the_nftables_generation_is_read_from_the_netlink_answer() -> None:
    assert firewall.parse_nft_generation(newgen_answer(70000)) == 70000
    error = struct.pack("=IHHIIi", 36, firewall.NLMSG_ERROR, 0, 1, 0, -1) + bytes(16)
    assert firewall.parse_nft_generation(error) is None
    assert firewall.parse_nft_generation(newgen_answer(5)[:12]) is None


class Saver:
    """What doit (and the daemon's monitor probe) give a check as its task."""

    def __init__(self) -> None:
        self.value_savers: list[Any] = []

    def values(self) -> dict[str, Any]:
        return {k: v for saver in self.value_savers for k, v in saver().items()}


def test_the_firewall_is_listed_again_only_when_nftables_changed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    generation = [7]
    problems: list[str | None] = [None, None, "nftables table ip waagent_graph is missing",
                                  None]
    listed: list[int] = []

    def listing() -> tuple[str | None, str]:
        listed.append(generation[0])
        return problems.pop(0), "rules in place"

    monkeypatch.setattr(firewall, "nft_generation", lambda: generation[0])
    check = network.UnchangedRuleset("network:firewall",
                                     network.Explained("network:firewall", listing),
                                     lambda: True)

    def probe(values: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        task = Saver()
        return check(task, values), task.values()

    passed, values = probe({})  # nothing known: listed
    assert passed and listed == [7] and values == {check.key: 7}
    passed, values = probe(values)  # nothing moved: not listed
    assert passed and listed == [7] and "unchanged" in check.kept
    generation[0] = 8  # any change: listed, and found in place
    passed, values = probe(values)
    assert passed and listed == [7, 8] and values == {check.key: 8}
    generation[0] = 9  # a flush: listed, found missing, the task runs
    passed, values = probe(values)
    assert not passed and values == {} and "missing" in check.reason
    generation[0] = 10  # the run set the rules up: listed again
    passed, values = probe(values)
    assert passed and listed == [7, 8, 9, 10]


def test_without_nft_the_firewall_is_listed_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "nft_generation", lambda: 7)
    listed: list[bool] = []

    def listing() -> tuple[str | None, str]:
        listed.append(True)
        return None, "iptables rules in place"

    check = network.UnchangedRuleset(
        "network:firewall", network.Explained("network:firewall", listing), lambda: False)
    values: dict[str, Any] = {}
    for _ in range(2):
        task = Saver()
        assert check(task, values)
        values = task.values()
    assert len(listed) == 2 and values == {}


def test_firewalld_rules_are_permanent_direct_passthrough() -> None:
    rule = firewall.iptables_rules(ENDPOINT)[2]
    assert firewall.firewalld_argv("add", rule) == [
        "firewall-cmd", "--permanent", "--direct", "--add-passthrough", "ipv4", "-t",
        "security", "-A", "OUTPUT", "-d", ENDPOINT, "-p", "tcp", "-m", "conntrack",
        "--ctstate", "INVALID,NEW", "-j", "DROP"]


# -- routes from leases --------------------------------------------------------------------

def _classless(*routes: tuple[str, str]) -> bytes:
    data = b""
    for network_text, gateway in routes:
        net = ipaddress.IPv4Network(network_text)
        size = (net.prefixlen + 7) // 8
        data += bytes([net.prefixlen]) + net.network_address.packed[:size]
        data += ipaddress.IPv4Address(gateway).packed
    return data


def test_classless_routes_rfc3442() -> None:
    data = _classless(("0.0.0.0/0", "192.0.2.1"), ("192.0.2.128/25", "192.0.2.2"),
                      ("10.0.0.0/8", "0.0.0.0"))
    from facts.routes import parse_classless_routes

    routes = parse_classless_routes(data)
    assert [(str(r.network), str(r.gateway)) for r in routes] == [
        ("0.0.0.0/0", "192.0.2.1"), ("192.0.2.128/25", "192.0.2.2"), ("10.0.0.0/8", "0.0.0.0")]
    with pytest.raises(Exception, match="truncated"):
        parse_classless_routes(data[:-1])


DHCLIENT_LEASES = """lease {
  interface "eth0";
  fixed-address 192.0.2.10;
  option routers 192.0.2.9;
  expire 4 2020/01/02 00:00:00;
}
lease {
  interface "eth0";
  fixed-address 192.0.2.10;
  option subnet-mask 255.255.255.240;
  option routers 192.0.2.1;
  option rfc3442-classless-static-routes 25,192,0,2,128,192,0,2,1;
  option unknown-245 a8:3f:81:10;
  renew 4 2030/01/02 00:00:00;
}
"""


def test_dhclient_lease_routes_and_the_platform_route() -> None:
    from facts.routes import platform_route, routes_from_dhclient_leases

    lease = routes_from_dhclient_leases(DHCLIENT_LEASES, "dhclient lease x")
    assert lease is not None and lease.interface == "eth0"
    assert [str(r) for r in lease.routers] == ["192.0.2.1"]
    route = platform_route(lease, "192.0.2.129")
    assert route is not None and route.argv() == ["ip", "-4", "route", "add", "192.0.2.129/32",
                                                  "via", "192.0.2.1", "dev", "eth0"]
    assert "classless static route 192.0.2.128/25" in route.reason
    # With classless routes the routers are ignored (RFC 3442): nothing covers 10.1.1.1.
    assert platform_route(lease, "10.1.1.1") is None
    hex_form = DHCLIENT_LEASES.replace("rfc3442-classless-static-routes 25,192,0,2,128,192,0,2,1",
                                       "unknown-121 19:c0:00:02:80:c0:00:02:01")
    assert routes_from_dhclient_leases(hex_form, "x") == lease._replace(source="x")
    only_router = DHCLIENT_LEASES.replace(
        "  option rfc3442-classless-static-routes 25,192,0,2,128,192,0,2,1;\n", "")
    routed = platform_route(routes_from_dhclient_leases(only_router, "x"), "168.63.129.16")  # type: ignore[arg-type]
    assert routed is not None and str(routed) == "168.63.129.16/32 via 192.0.2.1 dev eth0"


def test_networkd_and_dhcpcd_leases() -> None:
    from facts.routes import platform_route, routes_from_dhcp_message, routes_from_networkd_lease

    lease = routes_from_networkd_lease(
        "ADDRESS=192.0.2.10\nROUTER=192.0.2.1\nCLASSLESS_ROUTES=192.0.2.128/25,192.0.2.3\n", "n")
    assert str(platform_route(lease, "192.0.2.200")) == "192.0.2.200/32 via 192.0.2.3"
    routes = _classless(("0.0.0.0/0", "192.0.2.5"))
    message = (bytes([2, 1, 6, 0]) + bytes(232) + MAGIC_COOKIE + bytes([53, 1, 5])
               + bytes([3, 4, 192, 0, 2, 1]) + bytes([249, len(routes)]) + routes + bytes([255]))
    raw = routes_from_dhcp_message(message, "d", "eth1")
    assert str(platform_route(raw, "168.63.129.16")) == "168.63.129.16/32 via 192.0.2.5 dev eth1"


PROC_NET_ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t000200C0\t00000000\t0001\t0\t0\t0\tF0FFFFFF\t0\t0\t0
"""


def test_route_table_lookup() -> None:
    from facts.routes import route_to

    assert route_to(PROC_NET_ROUTE, "192.0.2.5") == "192.0.2.0/28 dev eth0"
    assert route_to(PROC_NET_ROUTE, "192.0.2.129") is None
    with_default = PROC_NET_ROUTE + "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    assert route_to(with_default, "168.63.129.16") == "0.0.0.0/0 dev eth0"


def test_the_route_check_hands_the_dhcp_client_pids_seen_last_to_the_next_look(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's monitor checks the routes' inputs every period with one context: the
    PIDs it found last are what it looks at first."""
    from facts import routes

    seen: list[list[int]] = []

    def pids(root: object, known: Sequence[int] = ()) -> list[int]:
        seen.append(list(known))
        return [4, 9]

    monkeypatch.setattr(routes, "dhcp_client_pids", pids)
    monkeypatch.setattr(routes, "lease_routes", lambda root: None)
    ctx = make_context({"root": "/", "wireserver": f"http://{ENDPOINT}:80"})
    assert network.route_inputs(ctx)["dhcp_client_pids"] == [4, 9]
    network.route_inputs(ctx)
    assert seen == [[], [4, 9]]


def test_dhcp_client_pids_from_proc(tmp_path: Path) -> None:
    from facts.routes import dhcp_client_pids
    from system import Root

    for pid, name in ((7, "dhclient"), (12, "sshd"), (30, "systemd-network")):
        (tmp_path / f"proc/{pid}").mkdir(parents=True)
        (tmp_path / f"proc/{pid}/comm").write_text(name + "\n")
    (tmp_path / "proc/self").mkdir()
    assert dhcp_client_pids(Root(tmp_path)) == [7, 30]

    # While the PIDs seen last still run a DHCP client, they are not looked for again.
    (tmp_path / "proc/40").mkdir()
    (tmp_path / "proc/40/comm").write_text("dhclient\n")
    assert dhcp_client_pids(Root(tmp_path), [7, 30]) == [7, 30]
    # One is gone (or its PID now runs another program): every process is listed again.
    (tmp_path / "proc/7/comm").write_text("bash\n")
    assert dhcp_client_pids(Root(tmp_path), [7, 30]) == [30, 40]
    shutil.rmtree(tmp_path / "proc/30")
    assert dhcp_client_pids(Root(tmp_path), [30, 40]) == [40]


def test_lease_routes_read_in_the_root(tmp_path: Path) -> None:
    from facts.routes import lease_routes
    from system import Root

    assert lease_routes(Root(tmp_path)) is None
    (tmp_path / "var/lib/dhcp").mkdir(parents=True)
    (tmp_path / "var/lib/dhcp/dhclient.eth0.leases").write_text(DHCLIENT_LEASES)
    found = lease_routes(Root(tmp_path))
    assert found is not None and found.source == "dhclient lease /var/lib/dhcp/dhclient.eth0.leases"


# -- the proxy decision --------------------------------------------------------------------

def _conf(tmp_path: Path, text: str) -> object:
    path = tmp_path / "waagent.conf"
    path.write_text(text)
    return load_config(path)


def test_proxy_from_conf_first_then_environment(tmp_path: Path) -> None:
    env = {"https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:8"}
    conf = default_config()
    assert download_proxy(conf, "https://store.blob.example/x", environ=env) == "http://127.0.0.1:9"
    assert download_proxy(conf, "http://store.blob.example/x", environ=env) == "http://127.0.0.1:8"
    assert download_proxy(conf, "http://store.blob.example/x", environ={}) is None
    configured = _conf(tmp_path, "HttpProxy.Host=proxy.local\nHttpProxy.Port=3128\n")
    assert configured_proxy(configured) == "http://proxy.local:3128"  # type: ignore[arg-type]
    assert download_proxy(configured, "https://s/x", environ=env) == "http://proxy.local:3128"  # type: ignore[arg-type]
    host_only = _conf(tmp_path, "HttpProxy.Host=proxy.local\n")
    assert download_proxy(host_only, "https://s/x", environ=env) is None  # type: ignore[arg-type]


def test_platform_and_no_proxy_hosts_go_direct(tmp_path: Path) -> None:
    configured = _conf(tmp_path, "HttpProxy.Host=127.0.0.1\nHttpProxy.Port=3128\n")
    for url in ("http://168.63.129.16/machine/?comp=goalstate", "http://168.63.129.16:32526/status",
                "http://169.254.169.254/metadata/instance"):
        assert download_proxy(configured, url, environ={}) is None  # type: ignore[arg-type]
    assert download_proxy(configured, "http://10.0.0.4:80/x", environ={},  # type: ignore[arg-type]
                          platform=("10.0.0.4",)) is None
    env = {"no_proxy": "localhost, .internal,10.0.0.0/8"}
    assert download_proxy(configured, "http://10.1.2.3/x", environ=env) is None  # type: ignore[arg-type]
    assert download_proxy(configured, "https://a.internal/x", environ=env) is None  # type: ignore[arg-type]
    assert download_proxy(configured, "https://a.example/x", environ=env) == "http://127.0.0.1:3128"  # type: ignore[arg-type]
    assert bypassed("anything", "*") and not bypassed("a.example", None)


def test_status_blob_upload_asks_the_one_proxy_decision(tmp_path: Path) -> None:
    from tasks import status

    root = make_sandbox_root(tmp_path / "vm", VM_ID)
    (root / "etc/waagent.conf").write_text("HttpProxy.Host=127.0.0.1\nHttpProxy.Port=3128\n")
    ctx = make_context({"root": str(root)})
    assert status.proxy(ctx) == "http://127.0.0.1:3128"
    assert status.proxy(ctx, "https://store.blob.example/status?sig=x") == "http://127.0.0.1:3128"
    assert status.proxy(ctx, "http://168.63.129.16:32526/status") is None


# -- tasks ---------------------------------------------------------------------------------

def sandbox(tmp_path: Path, conf: str = "") -> Path:
    root = make_sandbox_root(tmp_path / "vm", VM_ID)
    (root / "etc/waagent.conf").write_text(conf)
    return root


def context(root: Path, *, plan: bool = False, **variables: str) -> Context:
    return make_context({"root": str(root), "wireserver": f"http://{ENDPOINT}:80", **variables},
                        plan=plan)


def test_tasks_follow_os_enable_firewall(tmp_path: Path) -> None:
    off = [t["name"] for t in network.generate(context(sandbox(tmp_path)))]
    assert off == ["routes", "persistent-rules", "firewall"]
    on = list(network.generate(context(sandbox(tmp_path, "OS.EnableFirewall=y\n"))))
    assert [t["name"] for t in on] == ["routes", "persistent-rules", "firewall", "firewall-boot"]
    assert all(t["doc"] and t["uptodate"] for t in on)


def test_monitors_name_the_network_tasks() -> None:
    from tasks import MONITORS

    targets = {m.targets: (m.period_option, m.enabled_option) for m in MONITORS}
    assert targets[("network:routes",)] == ("OS.MonitorDhcpClientRestartPeriod", None)
    assert targets[("network:persistent-rules",)] == ("OS.RemovePersistentNetRulesPeriod", None)
    assert targets[("network:firewall",)] == ("OS.EnableFirewallPeriod", "OS.EnableFirewall")


def test_an_image_root_gets_the_boot_unit_and_skips_kernel_state(tmp_path: Path) -> None:
    root = sandbox(tmp_path, "OS.EnableFirewall=y\n")
    plan = context(root, plan=True)
    network.set_up_firewall(plan)
    network.ensure_platform_route(plan)
    skips = [c for c in plan.run.planned if c.kind == "skip"]
    assert len(skips) == 2 and all("not the running system" in c.why for c in skips)
    assert skips[0].target == f"firewall rules towards {ENDPOINT}"
    ctx = context(root)
    problem, _ = network.boot_problem(ctx)
    assert problem == "/etc/systemd/system/walinuxagent-network-setup.service is missing"
    network.keep_firewall_at_boot(ctx)
    unit = root / "etc/systemd/system/walinuxagent-network-setup.service"
    text = unit.read_text()
    assert f"-setup-firewall={ENDPOINT}" in text and "Before=network-pre.target" in text
    assert "Wants=network-pre.target" in text and "DefaultDependencies=no" in text
    wants = root / "etc/systemd/system/network.target.wants/walinuxagent-network-setup.service"
    assert wants.is_symlink()
    assert network.boot_problem(ctx) == (None, "walinuxagent-network-setup.service sets the "
                                         f"firewall for {ENDPOINT} before the network comes up")
    moved = context(root, wireserver="http://192.0.2.77")
    assert "not the unit for 192.0.2.77" in (network.boot_problem(moved)[0] or "")
    assert ctx.run.changes == 3 and not [c for c in ctx.run.planned if c.kind == "run"]
    # OS.EnableFirewall=n: our unit goes (the kernel is not this root's).
    (root / "etc/waagent.conf").write_text("OS.EnableFirewall=n\n")
    off = context(root)
    assert "still sets the firewall" in (network.disabled_problem(off)[0] or "")
    network.remove_agent_firewall(off)
    assert not unit.exists() and not wants.is_symlink()
    assert network.disabled_problem(off)[0] is None


def test_an_admins_unit_of_that_name_is_kept(tmp_path: Path) -> None:
    root = sandbox(tmp_path)
    unit = root / "etc/systemd/system/walinuxagent-network-setup.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    network.remove_agent_firewall(context(root))
    assert unit.exists()


def test_persistent_rules_move_to_lib_dir(tmp_path: Path) -> None:
    root = sandbox(tmp_path)
    generator = root / "lib/udev/rules.d/75-persistent-net-generator.rules"
    names = root / "etc/udev/rules.d/70-persistent-net.rules"
    for path in (generator, names):
        path.parent.mkdir(parents=True)
        path.write_text(f"# {path.name}\n")
    (root / "var/lib/waagent").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/waagent/70-persistent-net.rules").write_text("older copy\n")
    plan = context(root, plan=True)
    assert (network.rules_problem(plan)[0] or "").startswith(
        "/lib/udev/rules.d/75-persistent-net-generator.rules is in place")
    network.move_rules_aside(plan)
    assert generator.exists() and [c.kind for c in plan.run.planned][-2:] == ["move", "move"]
    ctx = context(root)
    network.move_rules_aside(ctx)
    assert not generator.exists() and not names.exists()
    lib = root / "var/lib/waagent"
    assert (lib / "75-persistent-net-generator.rules").read_text() == "# 75-persistent-net-generator.rules\n"
    assert (lib / "70-persistent-net.rules").read_text() == "# 70-persistent-net.rules\n"
    assert network.rules_problem(ctx)[0] is None


def test_deprovision_knows_the_network_files(tmp_path: Path) -> None:
    from tasks import deprovision

    root = sandbox(tmp_path, "OS.EnableFirewall=y\n")
    network.keep_firewall_at_boot(context(root))
    names = root / "etc/udev/rules.d/70-persistent-net.rules"
    names.parent.mkdir(parents=True)
    names.write_text("# this VM's MAC\n")
    ctx = context(root, plan=True)
    steps = {s.name: s for s in deprovision.deprovision_steps(ctx)}
    removed = {ctx.root.system_path(c.path) for c in steps["firewall"].changes(ctx) if c.path}
    assert removed == {"/etc/systemd/system/walinuxagent-network-setup.service",
                       "/etc/systemd/system/network.target.wants/walinuxagent-network-setup.service"}
    assert [ctx.root.system_path(c.path) for c in steps["net-rules"].changes(ctx) if c.path] == [
        "/etc/udev/rules.d/70-persistent-net.rules"]


def test_route_inputs_on_another_root_are_the_endpoint_only(tmp_path: Path) -> None:
    ctx = context(sandbox(tmp_path))
    assert network.route_inputs(ctx) == {"root": str(ctx.root.base), "endpoint": ENDPOINT}
    bare = make_context({"root": str(sandbox(tmp_path))})
    assert network.endpoint_address(bare) is None
    with pytest.raises(firewall.FirewallError, match="no wireserver= was given"):
        network.firewall_endpoint(bare)


# -- the command line ----------------------------------------------------------------------

def test_setup_firewall_command_lines() -> None:
    inv = cli.parse(["-setup-firewall=168.63.129.16"])
    assert (inv.verb, inv.verb_arg) == ("setup-firewall", "168.63.129.16")
    # waagent 2.x's own boot unit runs this form.
    old = cli.parse(["--setup-firewall", "--dst_ip=168.63.129.16", "--uid=0", "-w"])
    assert old.verb == "setup-firewall" and old.firewall["dst_ip"] == "168.63.129.16"


def test_setup_firewall_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-setup-firewall"]) == 2
    assert cli.main(["-setup-firewall=192.0.2.1", "root=/tmp"]) == 2
    assert "is not it" in capsys.readouterr().err
    assert network.setup_firewall_command("127.0.0.1") == 1
    assert "refusing to firewall 127.0.0.1" in capsys.readouterr().err
