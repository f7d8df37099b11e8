"""The route to the WireServer from a real DHCP lease (dnsmasq, dhclient) in namespaces.

The platform side serves DHCP on 192.0.2.0/28 with a classless static route (option 121)
towards 192.0.2.128/25, where the endpoint 192.0.2.129 lives; the VM's dhclient uses a
script of the test that sets only the address (as a client that ignores the routes), so
the endpoint is unreachable until `network:routes` adds the route. A restart of dhclient
(which flushes the interface) removes it; the next check, seeing new DHCP client PIDs,
adds it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netlab import NetLab, require, waagent

ENDPOINT = "192.0.2.129"
GATEWAY = "192.0.2.1"
LEASES = "/var/lib/dhcp/dhclient.eth0.leases"  # a tmpfs of the VM side
DHCLIENT_CONF = """\
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, routers, rfc3442-classless-static-routes;
"""
# Sets the address only; flushes the interface when the lease ends (as a client restart
# does), never sets a route.
DHCLIENT_SCRIPT = """\
#!/bin/sh
case "$reason" in
  PREINIT) ip link set dev "$interface" up ;;
  BOUND|RENEW|REBIND|REBOOT)
    ip -4 addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
  EXPIRE|FAIL|RELEASE|STOP)
    ip -4 route flush dev "$interface"; ip -4 addr flush dev "$interface" ;;
esac
exit 0
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[NetLab]:
    require("dnsmasq", "dhclient")
    with NetLab(tmp_path, vm_address="", platform_address=f"{GATEWAY}/28") as lab:
        lab.platform(["ip", "addr", "add", f"{ENDPOINT}/32", "dev", "lo"])
        lab.start(["ip", "netns", "exec", lab.platform_ns, "dnsmasq", "--keep-in-foreground",
                   "--conf-file=/dev/null", "--port=0", "--no-resolv", "--no-hosts",
                   "--interface=veth-p", "--bind-interfaces",
                   f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
                   f"--pid-file={tmp_path / 'dnsmasq.pid'}",
                   "--dhcp-range=192.0.2.2,192.0.2.14,255.255.255.240,1h",
                   f"--dhcp-option=3,{GATEWAY}",
                   f"--dhcp-option=121,192.0.2.128/25,{GATEWAY}",
                   f"--dhcp-option=245,{ENDPOINT}"])
        lab.listen(ENDPOINT, 80)
        yield lab


def dhclient(lab: NetLab, tmp_path: Path, *extra: str) -> None:
    script = tmp_path / "dhclient-script"
    script.write_text(DHCLIENT_SCRIPT)
    script.chmod(0o755)
    (tmp_path / "dhclient.conf").write_text(DHCLIENT_CONF)
    lab.vm(["dhclient", *extra, "-1", "-cf", str(tmp_path / "dhclient.conf"), "-sf", str(script),
            "-lf", LEASES, "-pf", str(tmp_path / "dhclient.pid"), "eth0"], timeout=60)


def dhclient_pid(tmp_path: Path) -> int:
    return int((tmp_path / "dhclient.pid").read_text().strip())


def routes_task(lab: NetLab, tmp_path: Path, command: str = "run") -> str:
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    conf = tmp_path / "waagent.conf"
    conf.write_text(f"Lib.Dir={lib}\nOS.MonitorDhcpClientRestartPeriod=1\n")
    out = waagent(lab, command, "network:routes", f"conf={conf}",
                  f"wireserver=http://{ENDPOINT}:80")
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_route_from_the_lease_and_back_after_a_dhcp_client_restart(lab: NetLab,
                                                                   tmp_path: Path) -> None:
    dhclient(lab, tmp_path)
    lease = lab.vm(["cat", LEASES]).stdout
    assert "rfc3442-classless-static-routes 25,192,0,2,128,192,0,2,1" in lease, lease
    assert not lab.connects(ENDPOINT, 80, timeout=1)  # no route: the client ignored it

    plan = routes_task(lab, tmp_path, "plan")
    assert "RUN  network:routes" in plan
    routes_task(lab, tmp_path)
    shown = lab.vm(["ip", "-4", "route", "show", ENDPOINT]).stdout
    assert f"{ENDPOINT} via {GATEWAY} dev eth0" in shown, shown
    assert lab.connects(ENDPOINT, 80)
    assert "1 up to date" in routes_task(lab, tmp_path)  # nothing changed: nothing runs

    # A restart of the DHCP client: it releases (flushing the interface) and binds again.
    old_pid = dhclient_pid(tmp_path)
    dhclient(lab, tmp_path, "-r")
    dhclient(lab, tmp_path)
    assert dhclient_pid(tmp_path) != old_pid
    assert lab.vm(["ip", "-4", "route", "show", ENDPOINT]).stdout.strip() == ""
    assert not lab.connects(ENDPOINT, 80, timeout=1)
    ran = routes_task(lab, tmp_path)
    assert "ran network:routes" in ran and "dhcp_client_pids" in ran, ran
    assert f"{ENDPOINT} via {GATEWAY}" in lab.vm(["ip", "-4", "route", "show", ENDPOINT]).stdout
    deadline = time.monotonic() + 5
    while not lab.connects(ENDPOINT, 80):
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_an_endpoint_with_a_route_is_left_alone(lab: NetLab, tmp_path: Path) -> None:
    dhclient(lab, tmp_path)
    lab.vm(["ip", "-4", "route", "add", "default", "via", GATEWAY])
    routes_task(lab, tmp_path)
    assert lab.vm(["ip", "-4", "route", "show", ENDPOINT]).stdout.strip() == ""
    assert lab.connects(ENDPOINT, 80)  # through the default route
