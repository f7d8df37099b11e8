"""Per-distribution plans: which commands provisioning would run on each family."""

from __future__ import annotations

from pathlib import Path

import pytest

from graph.context import make_context
from system import osutil
from tasks import hostname, ssh
from tests.sandbox import make_sandbox_root

VM_ID = "09b01725-bf09-5941-9be9-bc7c6f7e0a55"

FAMILIES = {
    # family: (os-release ID, DHCP client marker, running-init marker, expected commands)
    "debian": ("debian", "run/systemd/netif/leases", "run/systemd/system",
               {"reload": "systemctl try-reload-or-restart ssh",
                "renew": "networkctl renew eth0"}),
    "rhel": ("almalinux", "run/NetworkManager/NetworkManager.pid", "run/systemd/system",
             {"reload": "systemctl try-reload-or-restart sshd",
              "renew": "nmcli device reapply eth0"}),
    "suse": ("sles", "run/wicked", "run/systemd/system",
             {"reload": "systemctl try-reload-or-restart sshd",
              "renew": "wicked ifreload eth0"}),
    "coreos": ("flatcar", "run/systemd/netif/leases", "run/systemd/system",
               {"reload": "systemctl try-reload-or-restart sshd",
                "renew": "networkctl renew eth0"}),
    "sysvinit-debian": ("debian", "sbin/dhclient", "run/sshd.pid",
                        {"reload": "service ssh reload",
                         "renew": "dhclient -1 -nw -pf /run/dhclient.eth0.pid "
                                  "-lf /var/lib/dhcp/dhclient.eth0.leases eth0"}),
}


def family_root(tmp_path: Path, distro_id: str, dhcp_marker: str, init_marker: str) -> Path:
    root = make_sandbox_root(tmp_path / "vm", VM_ID)
    (root / "etc/os-release").write_text(f"ID={distro_id}\nVERSION_ID=1\n")
    for marker in (dhcp_marker, init_marker):
        path = root / marker
        if marker.endswith(("pid", "dhclient")):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
        else:
            path.mkdir(parents=True, exist_ok=True)
    net = root / "sys/class/net/eth0"
    net.mkdir(parents=True)
    (net / "address").write_text("00:0d:3a:00:00:01\n")
    (root / "sys/class/net/lo").mkdir()
    (root / "sys/class/net/lo/address").write_text("00:00:00:00:00:00\n")
    return root


@pytest.mark.parametrize("case", sorted(FAMILIES))
def test_family_plan(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    distro_id, dhcp_marker, init_marker, expected = FAMILIES[case]
    root = family_root(tmp_path, distro_id, dhcp_marker, init_marker)
    ctx = make_context({"root": str(root)}, plan=True)
    # Plan what the agent would run on that system if it were the running one.
    monkeypatch.setattr(type(ctx.run), "is_live", property(lambda self: True))
    ctx.state.ovf = None
    from facts import store

    store_dir = ctx.lib_dir / "facts"
    store_dir.mkdir(parents=True)
    (store_dir / "ovf.json").write_text(store.dumps({
        "username": "azureuser", "hostname": "vm-1", "password_set": True,
        "public_keys": [], "key_pairs": [], "disable_ssh_password_authentication": True,
        "provision_guest_agent": True}))
    ssh.reload_sshd(ctx)
    hostname.publish_hostname(ctx)
    commands = [c.target for c in ctx.run.planned if c.kind == "run"]
    assert expected["reload"] in commands
    assert expected["renew"] in commands
    assert not (root / "var/lib/waagent/published_hostname").exists(), "plan writes nothing"


def test_useradd_per_family(tmp_path: Path) -> None:
    ctx = make_context({"root": str(make_sandbox_root(tmp_path / "vm", VM_ID))}, plan=True)
    groups = ["root", "sudo", "docker", "portage", "users"]
    debian = osutil.useradd_argv(ctx.run, "debian", "bob", "/home/bob", groups)
    coreos = osutil.useradd_argv(ctx.run, "coreos", "bob", "/home/bob", groups)
    assert debian == ["useradd", "--prefix", str(ctx.root.base), "-m", "-d", "/home/bob",
                      "-s", "/bin/bash", "bob"]
    assert coreos[-3:] == ["-G", "sudo,docker,portage", "bob"]
    host = make_context({"root": "/"}, plan=True)
    assert osutil.useradd_argv(host.run, "rhel", "bob", "/home/bob", groups)[:2] == \
        ["useradd", "-m"]


def test_sandbox_root_never_touches_running_services(tmp_path: Path) -> None:
    root = family_root(tmp_path, "debian", "run/systemd/netif/leases", "run/systemd/system")
    ctx = make_context({"root": str(root)}, plan=True)
    ssh.reload_sshd(ctx)
    assert [c.kind for c in ctx.run.planned] == ["skip"]


def test_sshd_not_running_is_not_reloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = family_root(tmp_path, "debian", "sbin/dhclient", "etc/init.d")
    ctx = make_context({"root": str(root)}, plan=True)
    monkeypatch.setattr(type(ctx.run), "is_live", property(lambda self: True))
    ssh.reload_sshd(ctx)
    assert [(c.kind, c.why) for c in ctx.run.planned] == [("skip", "sshd is not running")]


def test_dhclient_renew_replaces_the_running_client(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = family_root(tmp_path, "debian", "sbin/dhclient", "etc/init.d")
    (root / "run/dhclient.eth0.pid").write_text("1234\n")
    ctx = make_context({"root": str(root)}, plan=True)
    monkeypatch.setattr(type(ctx.run), "is_live", property(lambda self: True))
    assert osutil.renew_dhcp(ctx.run, "dhclient", "eth0", why="publish")
    assert [c.target for c in ctx.run.planned] == [
        "dhclient -x -pf /run/dhclient.eth0.pid eth0",
        "dhclient -1 -nw -pf /run/dhclient.eth0.pid -lf /var/lib/dhcp/dhclient.eth0.leases eth0"]
