"""The firewall towards the WireServer in network namespaces, with the fabric as the endpoint.

The fabric serves on 192.0.2.1 in the platform namespace (and a listener on TCP 53 stands
for its DNS); the agent sets the rules in the VM namespace: root connects, another user
does not, DNS does for everyone. Rules survive a new agent process, a deleted rule comes
back at the next check, waagent 2.x's rules (both forms) are replaced.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netlab import BIN, REPO, NetLab, require, waagent

ENDPOINT = "192.0.2.1"
NOBODY = 65534


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[NetLab]:
    require()
    with NetLab(tmp_path) as lab:
        lab.start(["ip", "netns", "exec", lab.platform_ns, str(BIN / "waagent-fabric"), "serve",
                   str(REPO / "fabric/scenarios/default.yaml"), "--bind", ENDPOINT,
                   "--wire-port", "80"])
        lab.listen(ENDPOINT, 53)
        deadline = time.monotonic() + 20
        while not lab.connects(ENDPOINT, 80):
            assert time.monotonic() < deadline, "the fabric did not start"
            time.sleep(0.1)
        yield lab


def conf(tmp_path: Path, *lines: str) -> str:
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    path = tmp_path / "waagent.conf"
    path.write_text("\n".join((f"Lib.Dir={lib}", "OS.EnableFirewall=y",
                               "OS.EnableFirewallPeriod=1", *lines)) + "\n")
    return str(path)


def nft_rules(lab: NetLab) -> list[str]:
    listed = lab.vm(["nft", "-a", "list", "table", "ip", "waagent_graph"], check=False).stdout
    return [line.strip() for line in listed.splitlines() if "daddr" in line]


def test_setup_firewall_keeps_other_users_from_the_wireserver(lab: NetLab) -> None:
    assert lab.connects(ENDPOINT, 80, uid=NOBODY)  # no firewall yet
    out = lab.vm([str(BIN / "waagent"), f"-setup-firewall={ENDPOINT}"], check=False)
    assert out.returncode == 0, out.stderr
    assert lab.connects(ENDPOINT, 80)
    assert not lab.connects(ENDPOINT, 80, uid=NOBODY)
    assert lab.connects(ENDPOINT, 53, uid=NOBODY)
    # waagent 2.x's own boot unit runs this form; a second run changes nothing.
    again = lab.vm([str(BIN / "waagent"), "-setup-firewall", f"-dst_ip={ENDPOINT}", "-uid=0",
                    "-w"], check=False)
    assert again.returncode == 0, again.stderr
    assert len(nft_rules(lab)) == 3


def test_the_task_keeps_the_rules_and_rebuilds_a_partial_set(lab: NetLab, tmp_path: Path) -> None:
    args = ("run", "network:firewall", f"conf={conf(tmp_path)}", f"wireserver=http://{ENDPOINT}:80")
    first = waagent(lab, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert not lab.connects(ENDPOINT, 80, uid=NOBODY) and lab.connects(ENDPOINT, 80)
    rules = nft_rules(lab)
    assert len(rules) == 3
    # A new agent process: the rules are still there and the check says so.
    second = waagent(lab, *args)
    assert second.returncode == 0 and "1 up to date" in second.stdout, second.stdout
    # A deleted rule comes back at the next check (the daemon's OS.EnableFirewallPeriod).
    handle = rules[2].rsplit("# handle ", 1)[1]
    lab.vm(["nft", "delete", "rule", "ip", "waagent_graph", "output", "handle", handle])
    assert lab.connects(ENDPOINT, 80, uid=NOBODY)
    plan = waagent(lab, "plan", "network:firewall", *args[2:])
    assert "lacks 1 of 3 rules" in plan.stdout, plan.stdout
    third = waagent(lab, *args)
    assert third.returncode == 0 and "ran network:firewall" in third.stdout, third.stdout
    assert len(nft_rules(lab)) == 3
    assert not lab.connects(ENDPOINT, 80, uid=NOBODY)


def test_the_ruleset_generation_moves_with_every_change(lab: NetLab, tmp_path: Path) -> None:
    """What the daemon's firewall check reads in-process, listing nothing while it stays."""
    read = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            "from system.firewall import nft_generation; print(nft_generation())"]

    def generation() -> int:
        return int(lab.vm(read).stdout)

    first = generation()
    assert generation() == first
    out = waagent(lab, "run", "network:firewall", f"conf={conf(tmp_path)}",
                  f"wireserver=http://{ENDPOINT}:80")
    assert out.returncode == 0, out.stdout + out.stderr
    installed = generation()
    assert installed != first
    lab.vm(["nft", "flush", "table", "ip", "waagent_graph"])
    assert generation() != installed


def test_waagents_rules_are_replaced(lab: NetLab, tmp_path: Path) -> None:
    lab.vm(["nft", "-f", "-"], input=(
        "table ip walinuxagent {\n chain output {\n"
        "  type filter hook output priority 0; policy accept;\n"
        f"  ip daddr {ENDPOINT} tcp dport != 53 skuid != 0 ct state invalid,new counter drop\n"
        " }\n}\n"))
    for rule in (["--destination-port", "53", "-j", "ACCEPT"],
                 ["-m", "owner", "--uid-owner", "0", "-j", "ACCEPT"],
                 ["-m", "conntrack", "--ctstate", "INVALID,NEW", "-j", "DROP"]):
        lab.vm(["iptables", "-w", "-t", "security", "-A", "OUTPUT", "-d", "192.0.2.99", "-p",
                "tcp", *rule])
    args = ("run", "network:firewall", f"conf={conf(tmp_path)}", f"wireserver=http://{ENDPOINT}:80")
    plan = waagent(lab, "plan", *args[1:])
    assert "RUN  network:firewall" in plan.stdout, plan.stdout
    out = waagent(lab, *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert lab.vm(["nft", "list", "table", "ip", "walinuxagent"], check=False).returncode != 0
    listed = lab.vm(["iptables", "-w", "-t", "security", "-S", "OUTPUT"]).stdout
    assert "192.0.2.99" not in listed
    assert len(nft_rules(lab)) == 3 and not lab.connects(ENDPOINT, 80, uid=NOBODY)


def test_iptables_fallback_without_nft(lab: NetLab) -> None:
    """Where there is no nft: waagent's iptables rules in the security table; a partial set
    is rebuilt in order."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
            "from system import firewall, Root, Runner\n"
            "firewall._tool = lambda runner, name: name != 'nft'\n"
            "runner = Runner(root=Root('/'))\n"
            f"firewall.set_up_firewall(runner, {ENDPOINT!r}, why='test')\n"
            f"print(firewall.state_problem(firewall.firewall_state(runner, {ENDPOINT!r})))\n")
    out = lab.vm([sys.executable, "-c", code])
    assert out.stdout.strip() == "None", out.stdout + out.stderr
    assert lab.vm(["nft", "list", "table", "ip", "waagent_graph"], check=False).returncode != 0
    assert not lab.connects(ENDPOINT, 80, uid=NOBODY) and lab.connects(ENDPOINT, 53, uid=NOBODY)
    lab.vm(["iptables", "-w", "-t", "security", "-D", "OUTPUT", "-d", ENDPOINT, "-p", "tcp",
            "-m", "owner", "--uid-owner", "0", "-j", "ACCEPT"])
    assert not lab.connects(ENDPOINT, 80)  # root is cut off too: a partial set hurts
    out = lab.vm([sys.executable, "-c", code])
    assert out.stdout.strip() == "None", out.stdout + out.stderr
    assert lab.connects(ENDPOINT, 80)
    listed = [line for line in lab.vm(["iptables", "-w", "-t", "security", "-S", "OUTPUT"])
              .stdout.splitlines() if ENDPOINT in line]
    assert [line.split()[-1] for line in listed] == ["ACCEPT", "ACCEPT", "DROP"]


def test_deprovision_removes_the_rules(lab: NetLab, tmp_path: Path) -> None:
    assert lab.vm([str(BIN / "waagent"), f"-setup-firewall={ENDPOINT}"]).returncode == 0
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
            "from graph.context import make_context\n"
            "from tasks import deprovision\n"
            f"ctx = make_context({{'conf': {conf(tmp_path)!r}}})\n"
            "for change in deprovision._live_firewall_rules(ctx):\n"
            "    deprovision.apply_change(ctx, change)\n")
    lab.vm([sys.executable, "-c", code])
    assert lab.vm(["nft", "list", "table", "ip", "waagent_graph"], check=False).returncode != 0
    assert lab.connects(ENDPOINT, 80, uid=NOBODY)


def test_nothing_leaks_to_the_host() -> None:
    require()
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                            check=False).stdout
    assert "waagent_graph" not in listed


def test_turning_the_firewall_off_removes_the_rules(lab: NetLab, tmp_path: Path) -> None:
    assert lab.vm([str(BIN / "waagent"), f"-setup-firewall={ENDPOINT}"]).returncode == 0
    off = conf(tmp_path, "OS.EnableFirewall=n")
    plan = waagent(lab, "plan", "network:firewall", f"conf={off}",
                   f"wireserver=http://{ENDPOINT}:80")
    assert "agent firewall rules still in place: nftables table ip waagent_graph" in plan.stdout
    out = waagent(lab, "run", "network:firewall", f"conf={off}", f"wireserver=http://{ENDPOINT}:80")
    assert out.returncode == 0, out.stdout + out.stderr
    assert lab.vm(["nft", "list", "table", "ip", "waagent_graph"], check=False).returncode != 0
    assert lab.connects(ENDPOINT, 80, uid=NOBODY)
