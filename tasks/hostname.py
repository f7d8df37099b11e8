"""Hostname: set it (static and running) and publish it to DNS through DHCP.

hostname:set      /etc/hostname, the /etc/hosts entry, the running hostname
publish:hostname  the DHCP client sends it (renew that keeps the address); published_hostname
                  (its own area, run after Ready: the platform need not wait for DNS)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

from graph.context import Context
from graph.uptodate import Inputs, Probe
from system.errors import AgentError
from tasks import TaskDict, inputs
from tasks.once import once

log = logging.getLogger("waagent.hostname")

PUBLISHED_FILE = "published_hostname"
# A DNS label (RFC 1123): 1-63 letters, digits and hyphens, no hyphen first or last.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
DHCLIENT_CONF = "/etc/dhcp/dhclient.conf"


class HostnameError(AgentError):
    """The hostname cannot be set as asked."""


def generate(ctx: Context) -> Iterator[TaskDict]:
    """Hostname tasks, only when this agent provisions."""
    if inputs.mode(ctx) != "waagent":
        return
    # Once per VM (tasks/once.py): the hostname is the admin's afterwards, never reverted.
    yield once(ctx, "hostname", {
        "name": "set",
        "doc": "set the hostname from the OVF (/etc/hostname, /etc/hosts, running)",
        "actions": [(set_hostname, [ctx])],
        "task_dep": ["gather:ovf"],
    }, lambda: {"vm_id": inputs.vm_id(ctx), "hostname": wanted_hostname(ctx)})


def generate_publish(ctx: Context) -> Iterator[TaskDict]:
    """The publish task, only when this agent provisions."""
    if inputs.mode(ctx) != "waagent":
        return
    publish: TaskDict = {
        "name": "hostname",
        "doc": "publish the hostname to DNS through the DHCP client",
        "actions": [(publish_hostname, [ctx])],
        "task_dep": ["hostname:set"],
    }
    if ctx.conf.flag("Provisioning.MonitorHostName"):
        # The hostname follows the admin: a rename is published, never reverted.
        yield {**publish, "uptodate": [
            Inputs("publish", lambda: {"dhcp_client": inputs.distro(ctx).dhcp_client}),
            Probe("publish", lambda: not_published(ctx))]}
    else:
        yield once(ctx, "publish", publish, lambda: {
            "vm_id": inputs.vm_id(ctx), "hostname": wanted_hostname(ctx),
            "dhcp_client": inputs.distro(ctx).dhcp_client})


def wanted_hostname(ctx: Context) -> str:
    """The OVF's HostName, checked to be a valid host name."""
    name = inputs.ovf_facts(ctx).get("hostname")
    if not name:
        raise HostnameError("ovf-env.xml has no HostName")
    name = str(name).strip()
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise HostnameError(f"HostName {name!r} in ovf-env.xml is not a valid host name")
    return name


def current_hostname(ctx: Context) -> str:
    """The static hostname in /etc/hostname: the OVF's until the admin renames the host."""
    try:
        return ctx.root.follow("etc/hostname").read_text().strip()
    except FileNotFoundError:
        return ""


def hostname_to_publish(ctx: Context) -> str:
    """What DNS should know: the OVF's hostname while the VM is being provisioned, the
    static hostname (the admin's, after a rename) once it is."""
    if not inputs.is_provisioned(ctx):
        return wanted_hostname(ctx)
    return current_hostname(ctx) or wanted_hostname(ctx)


def hosts_text(text: str, hostname: str) -> str:
    """/etc/hosts with the hostname on the 127.0.1.1 line (Debian's convention), unless
    another line already names it."""
    short = hostname.split(".")[0]
    lines = text.splitlines()
    if any(hostname in line.split("#")[0].split()[1:] for line in lines if line.strip()):
        return text
    entry = f"127.0.1.1\t{hostname}" + (f" {short}" if short != hostname else "")
    for index, line in enumerate(lines):
        if line.split()[:1] == ["127.0.1.1"]:
            lines[index] = entry
            break
    else:
        lines.append(entry)
    return "\n".join(lines) + "\n"


def set_hostname(ctx: Context) -> None:
    """Static hostname, hosts entry, then the running hostname (on the running system)."""
    from system import osutil

    name = wanted_hostname(ctx)
    ctx.fs.write(ctx.root / "etc/hostname", name + "\n",
                 why=f"hostname {current_hostname(ctx) or '<unset>'} -> {name}")
    hosts = ctx.root / "etc/hosts"
    try:
        # What the image's /etc/hosts says, through an absolute link as a chroot reads it.
        current = ctx.root.follow("etc/hosts").read_text()
    except FileNotFoundError:
        current = "127.0.0.1\tlocalhost\n"
    ctx.fs.write(hosts, hosts_text(current, name), why=f"{name} resolves locally")
    osutil.set_running_hostname(ctx.run, name)


def primary_interface(ctx: Context) -> str | None:
    """The first non-loopback NIC, or None when the root shows none (an image root)."""
    from facts.hardware import nics
    from system.errors import ProbeFailed

    try:
        return next((n.name for n in nics(ctx.root) if not n.is_loopback), None)
    except ProbeFailed:
        return None


def not_published(ctx: Context) -> str | None:
    try:
        have = (ctx.lib_dir / PUBLISHED_FILE).read_text().strip()
    except FileNotFoundError:
        return "hostname never published"
    want = hostname_to_publish(ctx)
    return None if have == want else f"published {have!r}, the hostname is now {want!r}"


def publish_hostname(ctx: Context) -> None:
    """Make the DHCP client send the hostname and renew the lease (not ifdown/ifup)."""
    from system import osutil

    name = hostname_to_publish(ctx)
    client = inputs.distro(ctx).dhcp_client
    if client == "dhclient":
        conf = ctx.root / DHCLIENT_CONF
        try:
            text = ctx.root.follow(DHCLIENT_CONF).read_text()
        except FileNotFoundError:
            text = ""
        if not re.search(r"^\s*send\s+host-name\b", text, re.M):
            # gethostname() rather than the name: a later rename is sent as it is.
            ctx.fs.write(conf, text + "send host-name = gethostname();\n",
                         why="the DHCP client sends the hostname")
    interface = primary_interface(ctx)
    renewed = interface is not None and osutil.renew_dhcp(
        ctx.run, client, interface, why=f"renew the DHCP lease to publish {name}")
    if not renewed:
        log.info("no DHCP client/interface found to publish %s through", name)
    ctx.fs.write(ctx.lib_dir / PUBLISHED_FILE, name + "\n", mode=0o600,
                 why="hostname published")
