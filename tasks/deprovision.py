"""Deprovision: remove this VM's own state before its image is captured (PLATFORM.md §9).

Every step is a task `deprovision:<step>` whose changes are computed from the real
state (`Step.changes`), so the same list serves three purposes: the confirmation
question (`deprovision:confirm`, which every step depends on, asks before anything
is removed), `plan deprovision`, and the action itself (which computes it again:
actions re-check the real state). Variables: `force=y` skips the question,
`user=y` (deprovision+user) also removes the provisioned user.

Removal never leaves a half-removed file: unlink and rename are atomic, and a
directory tree is first renamed aside (`.<name>.deprovision-removing`) and then
deleted, so an interrupted run leaves whole trees, and the next run finishes them.

On an image root (`root=/mnt/image chroot=y`) commands run in a chroot of the root;
what only exists on a running machine (the running hostname, kernel firewall rules,
the agent's service) is touched only when the root is the host's `/`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple

from facts.users import is_system_user, uid_min, users
from graph.context import Context
from graph.uptodate import Probe
from system import osutil
from system.errors import AgentError, UnsafeOperation
from system.fs import MARKER
from tasks import TaskDict

LOCALHOST = "localhost.localdomain"
# WALinuxAgent's lock value for root's password field: no hash, no login by password.
LOCKED_PASSWORD = "*LOCK*"
ASIDE_SUFFIX = ".deprovision-removing"
WARNING = ("WARNING! Deprovisioning removes the VM-specific state listed above. It does not "
           "guarantee that the image is free of all sensitive information: files that you or "
           "your applications created elsewhere are not searched.")

DHCP_LEASE_DIRS = ("/var/lib/dhclient", "/var/lib/dhcpcd", "/var/lib/dhcp")
DHCP_LEASE_GLOBS = (
    ("/var/lib/NetworkManager", "*.lease"),
    ("/run/systemd/netif/leases", "*"),
    ("/var/lib/wicked", "lease-*"),
)
# Shell and REPL histories: commands typed on this VM, passwords among them at times.
HISTORY_FILES = (".bash_history", ".zsh_history", ".sh_history", ".ash_history", ".histfile",
                 ".python_history", ".local/share/fish/fish_history")
# Backups shadow-utils writes on each change: they keep earlier password hashes.
SHADOW_BACKUPS = ("/etc/shadow-", "/etc/gshadow-")
# What `cloud-init clean --logs` removes: all of its state but the seed an image builder
# put there, and its logs (with rotated ones). Whether or not cloud-init is still installed:
# the user data kept there holds secrets.
CLOUD_INIT_DIR = "/var/lib/cloud"
CLOUD_INIT_KEEP = ("seed",)
CLOUD_INIT_LOGS = ("cloud-init*.log", "cloud-init*.log.*")
AGENT_LOG = "/var/log/waagent.log"
AGENT_UNITS = ("walinuxagent.service", "waagent.service")
# The units that set the firewall at boot: WALinuxAgent's (named after its service) and
# ours, which takes the same name (tasks/network.py).
FIREWALL_UNITS = ("waagent-network-setup.service", "walinuxagent-network-setup.service")
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
DEFAULT_ENDPOINT = "168.63.129.16"
# udev's naming rules written for this VM's NIC (its MAC address); tasks/network.py moves
# them to Lib.Dir, which agent-state empties.
NET_RULES_FILE = "/etc/udev/rules.d/70-persistent-net.rules"


class Change(NamedTuple):
    """One thing deprovisioning will do: shown before acting, then applied."""

    kind: Literal["remove", "empty", "write", "run", "live"]
    why: str
    path: Path | None = None  # remove, empty, write: the real path inside the root
    text: str = ""  # write: the new content
    # run: a command (in a chroot of an image root); live: one on the running system only
    argv: tuple[str, ...] = ()

    def describe(self, ctx: Context) -> str:
        """A line of the list shown before acting."""
        if self.kind in ("run", "live"):
            return f"run {ctx.run.show(self.argv)}  ({self.why})"
        assert self.path is not None
        return f"{self.kind} {ctx.root.system_path(self.path)}  ({self.why})"


class Step(NamedTuple):
    """A deprovision task: what it is about and how to find what it has to do now."""

    name: str
    doc: str
    changes: Callable[[Context], list[Change]]
    after: tuple[str, ...] = ()  # steps that must run first


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() in ("y", "yes", "1", "true")


def _on_host(ctx: Context) -> bool:
    """True when the root is the running machine (not a mounted image or a sandbox)."""
    return ctx.root.is_host


# -- finding what to remove (probes: read only) ------------------------------------------

def _existing(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _removals(paths: list[Path], why: str) -> list[Change]:
    """Remove each path that exists, and the aside copy an interrupted run left behind."""
    found = []
    for path in paths:
        for candidate in (path, _aside(path)):
            if _existing(candidate):
                found.append(Change("remove", why, path=candidate))
    return found


def _contents(directory: Path, pattern: str = "*", keep: tuple[str, ...] = ()) -> list[Path]:
    """Entries of a directory (matching a glob), without `keep`; none when it is absent."""
    if not directory.is_dir() or directory.is_symlink():
        return []
    return sorted(p for p in directory.glob(pattern) if p.name not in keep)


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}{ASIDE_SUFFIX}")


def host_keys(ctx: Context) -> list[Change]:
    ssh_dir = ctx.path(ctx.conf.required_path("OS.SshDir"))
    return _removals(_contents(ssh_dir, "ssh_host_*"),
                     "SSH host key: the next provisioning makes new ones")


def dhcp_leases(ctx: Context) -> list[Change]:
    paths: list[Path] = []
    for directory in DHCP_LEASE_DIRS:
        paths += _contents(ctx.path(directory))
    for directory, pattern in DHCP_LEASE_GLOBS:
        paths += _contents(ctx.path(directory), pattern)
    return _removals(paths, "DHCP lease of this VM")


def hostname(ctx: Context) -> list[Change]:
    found = []
    etc_hostname = ctx.path("/etc/hostname")
    try:
        current = etc_hostname.read_text().strip()
    except FileNotFoundError:
        current = None
    if current != LOCALHOST:
        found.append(Change("write", f"hostname to {LOCALHOST}", path=etc_hostname,
                            text=LOCALHOST + "\n"))
    # The running hostname belongs to the host even in a chroot: only on `/`.
    if _on_host(ctx) and ctx.run.probe(["hostname"]).stdout.strip() != LOCALHOST:
        found.append(Change("live", f"running hostname to {LOCALHOST}",
                            argv=("hostname", LOCALHOST)))
    return found


def _shadow_password(ctx: Context, name: str) -> str | None:
    """The password field of a user in the shadow file, or None when the user has no line."""
    shadow = ctx.path(ctx.conf.required_path("OS.PasswordPath"))
    for line in shadow.read_text(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) > 1 and fields[0] == name:
            return fields[1]
    return None


def root_password(ctx: Context) -> list[Change]:
    field_value = _shadow_password(ctx, "root")
    # Locked means no hash at all ('!$6$...' is locked but still holds the hash).
    if field_value is None or (field_value[:1] in ("!", "*") and "$" not in field_value):
        return []
    return [Change("run", "lock root's password and drop its hash",
                   argv=tuple(osutil.usermod_argv(ctx.run, "-p", LOCKED_PASSWORD, "root")))]


def provisioned_user(ctx: Context) -> str:
    """The user named in the ovf-env copy kept at provisioning; refuse when unknown."""
    # Imported here: reading OVF media is not on the path of every boot.
    from facts.media import cached_ovf_env
    from facts.ovf import OvfError

    copy = ctx.lib_dir / "ovf-env.xml"
    try:
        env = cached_ovf_env(ctx.root, ctx.conf)
    except OvfError as err:
        raise AgentError(f"deprovision+user: cannot tell which user was provisioned: {err}; "
                         "remove the user by hand (userdel -r) or deprovision without "
                         "user=y") from None
    if env is None:
        raise AgentError(f"deprovision+user: cannot tell which user was provisioned: "
                         f"{ctx.root.system_path(copy)} (kept at provisioning) is missing; "
                         "remove the user by hand (userdel -r) or deprovision without user=y")
    if env.username == "root" or is_system_user(ctx.root, env.username):
        raise UnsafeOperation(f"deprovision+user: refusing to remove {env.username!r}, named "
                              "in the ovf-env copy: it is a system account")
    return env.username


def _without_user(text: str, name: str) -> str:
    """Sudoers text without the lines that grant `name` rights."""
    kept = [line for line in text.splitlines(keepends=True)
            if not (line.split() and line.split()[0] == name)]
    return "".join(kept)


def user(ctx: Context) -> list[Change]:
    if not _contents(ctx.lib_dir, keep=_engine_files()):
        # Lib.Dir already emptied: a deprovision ran to its last step and was stopped before
        # it could save that (the crash campaign). No user is known, and none is guessed.
        return []
    name = provisioned_user(ctx)
    found = []
    if name in users(ctx.root):
        # force: deprovision+user is often run by that very user, logged in over SSH.
        argv = osutil.userdel_argv(ctx.run, name, force=True)
        found.append(Change("run", f"the provisioned user {name}, its home and mail",
                            argv=tuple(argv)))
    for sudoers in _contents(ctx.path(ctx.conf.required_path("OS.SudoersDir"))):
        if not sudoers.is_file() or sudoers.is_symlink():
            continue
        text = sudoers.read_text(errors="replace")
        rest = _without_user(text, name)
        if rest == text:
            continue
        if any(line.strip() and not line.lstrip().startswith("#") for line in rest.splitlines()):
            found.append(Change("write", f"sudo rights of {name}", path=sudoers, text=rest))
        else:
            found.append(Change("remove", f"sudo rights of {name}", path=sudoers))
    return found


def shadow_backups(ctx: Context) -> list[Change]:
    return _removals([ctx.path(p) for p in SHADOW_BACKUPS],
                     "backup of the password file: it keeps earlier password hashes")


def resolver_manager(ctx: Context) -> str | None:
    """What owns /etc/resolv.conf: a link means a resolver manager, a file means nobody."""
    resolv = ctx.path("/etc/resolv.conf")
    if not resolv.is_symlink():
        return None
    target = os.readlink(resolv)
    if "systemd/resolve" in target:
        return "systemd-resolved"
    if "resolvconf" in target:
        return "resolvconf"
    return f"the link's target {target}"


def resolv_conf(ctx: Context) -> list[Change]:
    manager = resolver_manager(ctx)
    if manager is None:
        return _removals([ctx.path("/etc/resolv.conf")], "DNS servers of this VM's network")
    if manager == "resolvconf":
        # resolvconf keeps this VM's DHCP-given servers in its own files.
        return _removals([ctx.path("/etc/resolvconf/resolv.conf.d/original"),
                          ctx.path("/etc/resolvconf/resolv.conf.d/tail")],
                         "DNS servers of this VM's network")
    return []


def _marked(path: Path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def agent_iptables_rules(rules: str, endpoint: str | None = None) -> list[list[str]]:
    """The `-D` arguments removing the agent's rules (ours and waagent 2.x's; towards
    `endpoint`, or any) from `iptables -t security -S OUTPUT` output."""
    from system.firewall import agent_iptables_lines, iptables_delete_args

    return [iptables_delete_args(line) for line in agent_iptables_lines(rules)
            if endpoint is None or line.startswith(f"-A OUTPUT -d {endpoint}/32 ")]


def firewall(ctx: Context) -> list[Change]:
    paths: list[Path] = []
    for unit_dir in UNIT_DIRS:
        directory = ctx.path(unit_dir)
        # Each by name, not by glob: an enabling link dangles outside the image's chroot.
        for unit in FIREWALL_UNITS:
            paths.append(directory / unit)
            paths += [wants / unit for wants in _contents(directory, "*.wants")]
        paths += [p for p in _contents(directory, "*.d/*.conf") if _marked(p)]
    found = _removals(paths, "the agent's firewall service or drop-in")
    if _on_host(ctx):  # kernel rules are the host's: never from an image root
        found += _live_firewall_rules(ctx)
    return found


def _live_firewall_rules(ctx: Context) -> list[Change]:
    from system import firewall as rules

    found = []
    for family, table in (rules.NFT_TABLE, rules.WAAGENT_NFT_TABLE):
        try:
            if ctx.run.probe(["nft", "list", "table", family, table]).ok:
                found.append(Change("live", "the agent's nftables table",
                                    argv=("nft", "delete", "table", family, table)))
        except AgentError:
            pass  # no nft: no nftables rules
    try:
        listed = ctx.run.probe(["iptables", "-w", "-t", "security", "-S", "OUTPUT"])
    except AgentError:
        listed = None  # no iptables: no iptables rules
    for args in agent_iptables_rules(listed.stdout if listed is not None and listed.ok else ""):
        found.append(Change("live", "the agent's iptables rule",
                            argv=("iptables", "-w", "-t", "security", *args)))
    if rules.firewalld_running(ctx.run):
        endpoint_file = ctx.lib_dir / "WireServerEndpoint"
        endpoint = (endpoint_file.read_text().strip() if endpoint_file.is_file()
                    else DEFAULT_ENDPOINT) or DEFAULT_ENDPOINT
        for rule in rules.iptables_rules(endpoint):
            if ctx.run.probe(rules.firewalld_argv("query", rule)).ok:
                found.append(Change("live", "the agent's permanent firewalld rule",
                                    argv=tuple(rules.firewalld_argv("remove", rule))))
    return found


def net_rules(ctx: Context) -> list[Change]:
    return _removals([ctx.path(NET_RULES_FILE)],
                     "udev's persistent NIC names for this VM's MAC address")


def cloud_init(ctx: Context) -> list[Change]:
    state = _contents(ctx.path(CLOUD_INIT_DIR), keep=CLOUD_INIT_KEEP)
    found = _removals(state, "cloud-init's state: instance data, user data, semaphores")
    log_dir = ctx.path("/var/log")
    logs = sorted({p for pattern in CLOUD_INIT_LOGS for p in _contents(log_dir, pattern)})
    found += _removals(logs, "cloud-init's log")
    # A tree an interrupted run set aside is listed itself and as the aside of its name.
    return list(dict.fromkeys(found))


def machine_id(ctx: Context) -> list[Change]:
    found = []
    etc_machine_id = ctx.path("/etc/machine-id")
    if etc_machine_id.is_file() and etc_machine_id.stat().st_size > 0:
        # Empty, not absent: systemd then makes a new id at first boot.
        found.append(Change("empty", "machine id: the next boot makes a new one",
                            path=etc_machine_id))
    dbus_copy = ctx.path("/var/lib/dbus/machine-id")
    if dbus_copy.is_file() and not dbus_copy.is_symlink():
        found.append(Change("remove", "D-Bus copy of the machine id", path=dbus_copy))
    found += _removals([ctx.path("/var/lib/systemd/random-seed")],
                       "random seed: clones must not share it")
    return found


def _homes(ctx: Context) -> list[str]:
    """Home directories of root and of every regular (provisioned) user."""
    first_uid = uid_min(ctx.root)
    homes = ["/root"]
    for entry in users(ctx.root).values():
        if entry.uid >= first_uid and entry.name != "nobody" and entry.home not in homes:
            homes.append(entry.home)
    return homes


def histories(ctx: Context) -> list[Change]:
    paths = [ctx.path(home) / name for home in _homes(ctx) for name in HISTORY_FILES]
    return _removals(paths, "shell history")


def agent_logs(ctx: Context) -> list[Change]:
    paths = _contents(ctx.path(ctx.conf.required_path("Extension.LogDir")))
    log_dir = ctx.path(AGENT_LOG).parent
    paths += [ctx.path(AGENT_LOG), *_contents(log_dir, "waagent.log.*")]
    return _removals(paths, "agent and extension log")


def _engine_files() -> tuple[str, ...]:
    """Files of this run in Lib.Dir: doit's open state DB and the held lock."""
    from graph.loader import STATE_DB
    from graph.lock import LOCK_FILE

    return (STATE_DB, f"{STATE_DB}-journal", LOCK_FILE)


def agent_state(ctx: Context) -> list[Change]:
    # The ovf-env copy goes last: until Lib.Dir is empty, a rerun after a kill still knows
    # the provisioned user (deprovision+user).
    found = _contents(ctx.lib_dir, keep=_engine_files())
    last = ("ovf-env.xml", _aside(ctx.lib_dir / "ovf-env.xml").name)
    found.sort(key=lambda path: path.name in last)
    return _removals(found,
                     "agent state: certificates, keys, ovf-env, custom data, facts, extensions")


def stop_agent(ctx: Context) -> list[Change]:
    if not (_on_host(ctx) and ctx.path("/run/systemd/system").is_dir()):
        return []
    return [Change("live", "stop the agent service first", argv=("systemctl", "stop", unit))
            for unit in AGENT_UNITS
            if ctx.run.probe(["systemctl", "is-active", "--quiet", unit]).ok]


def deprovision_steps(ctx: Context) -> list[Step]:
    """The steps this configuration and these variables ask for, in order."""
    steps = [Step("stop-agent", "stop the running agent service", stop_agent)]
    if ctx.conf.flag("Provisioning.RegenerateSshHostKeyPair"):
        steps.append(Step("host-keys", "SSH host keys", host_keys, ("stop-agent",)))
    steps += [
        Step("dhcp-leases", "DHCP leases of every DHCP client", dhcp_leases, ("stop-agent",)),
        Step("hostname", f"hostname to {LOCALHOST}", hostname, ("stop-agent",)),
    ]
    if ctx.conf.flag("Provisioning.DeleteRootPassword"):
        steps.append(Step("root-password", "lock root's password", root_password,
                          ("stop-agent",)))
    if _yes(ctx.var("user")):
        steps.append(Step("user", "the provisioned user (deprovision+user) and its sudo rights",
                          user, ("stop-agent",)))
    steps += [
        Step("shadow-backups", "password file backups holding earlier hashes", shadow_backups,
             ("root-password", "user")),
        Step("resolv-conf", "/etc/resolv.conf unless a resolver manager owns it", resolv_conf,
             ("stop-agent",)),
        Step("firewall", "the agent's firewall rules and service drop-ins", firewall,
             ("stop-agent",)),
        Step("net-rules", f"{NET_RULES_FILE} (this VM's NIC names)", net_rules,
             ("stop-agent",)),
        Step("cloud-init", "cloud-init's state (but its seed) and logs, as cloud-init clean "
             "--logs", cloud_init, ("stop-agent",)),
        Step("machine-id", "machine id emptied, random seed removed", machine_id,
             ("stop-agent",)),
        Step("histories", "shell histories of root and every provisioned user", histories,
             ("stop-agent", "user")),
        Step("agent-logs", "the agent log and extension logs", agent_logs, ("stop-agent",)),
    ]
    # Last: the other steps read the ovf-env copy and the endpoint from Lib.Dir.
    steps.append(Step("agent-state", "Lib.Dir contents (the state DB at the end of the run)",
                      agent_state, tuple(s.name for s in steps)))
    return steps


# -- acting -----------------------------------------------------------------------------

def _check_inside_root(ctx: Context, path: Path) -> None:
    """Refuse a path whose directory leads out of the root (a link in an image)."""
    parent = path.parent.resolve()
    if parent != ctx.root.base and ctx.root.base not in parent.parents:
        raise UnsafeOperation(f"refusing to change {ctx.root.system_path(path)}: its directory "
                              f"resolves to {parent}, outside the root {ctx.root.base}")


def remove_whole(ctx: Context, path: Path, why: str) -> None:
    """Remove a file, link or tree so that no half-removed file is ever left."""
    _check_inside_root(ctx, path)
    if ctx.run.plan or path.is_symlink() or not path.is_dir():
        ctx.fs.remove(path, why=why)  # unlink is atomic; the plan shows one line
        return
    aside = path if path.name.endswith(ASIDE_SUFFIX) else _aside(path)
    if aside != path:
        ctx.fs.move(path, aside, why=why)
    ctx.fs.remove(aside, why=why)


def apply_change(ctx: Context, change: Change) -> None:
    """Do one change through the system boundary."""
    if change.kind == "run":
        ctx.run.change(list(change.argv), why=change.why)
        return
    if change.kind == "live":
        ctx.run.live(list(change.argv), why=change.why)
        return
    assert change.path is not None
    if change.kind == "remove":
        remove_whole(ctx, change.path, change.why)
        return
    _check_inside_root(ctx, change.path)
    if change.kind == "empty":
        ctx.fs.truncate(change.path, why=change.why)
    else:
        ctx.fs.write(change.path, change.text, why=change.why)


def apply_step(ctx: Context, step: Step) -> None:
    """Find what the step has to do now (the real state may have moved on) and do it."""
    for change in step.changes(ctx):
        apply_change(ctx, change)


def pending(ctx: Context, step: Step) -> str | None:
    """Probe: None when the step has nothing to do, else what is left."""
    found = step.changes(ctx)
    if not found:
        return None
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    return f"{found[0].describe(ctx)}{more}"


def confirm(ctx: Context, steps: list[Step]) -> None:
    """List what will be removed, warn, and ask y/n on stdin unless force=y or plan mode."""
    lines = []
    for step in steps:
        found = step.changes(ctx)  # raises (nothing removed yet) when a step must refuse
        lines += [f"  {change.describe(ctx)}" for change in found]
    out = sys.stdout
    if not lines:
        out.write(f"deprovision: nothing to remove in {ctx.root.base}\n")
        return
    out.write(f"deprovision will change {ctx.root.base}:\n" + "\n".join(lines) + "\n")
    out.write(WARNING + "\n")
    if ctx.run.plan or _yes(ctx.var("force")):
        out.flush()
        return
    out.write("Do you want to proceed (y/n)? ")
    out.flush()
    answer = sys.stdin.readline() if sys.stdin is not None else ""
    if answer.strip().lower() not in ("y", "yes"):
        got = repr(answer.strip()) if answer.strip() else "no answer"
        message = (f"deprovision cancelled ({got} on stdin): nothing was removed; "
                   "answer y, or pass -force (force=y) to skip the question")
        # The run's reporter prints this one line and nothing about the steps not run.
        ctx.state.deprovision_cancelled = message
        raise AgentError(message)


def remove_state_db(ctx: Context) -> None:
    """Teardown: doit has saved and closed its state DB; remove it so that the image
    provisions from scratch (deleting it only ever causes rework, DESIGN rule 5)."""
    from graph.loader import STATE_DB

    for name in (STATE_DB, f"{STATE_DB}-journal"):
        remove_whole(ctx, ctx.lib_dir / name, "agent state DB")


def generate(ctx: Context) -> Iterator[TaskDict]:
    """deprovision:confirm, then one task per step (all after confirm)."""
    steps = deprovision_steps(ctx)
    names = {step.name for step in steps}
    yield {
        "name": "confirm",
        "doc": "list what deprovisioning removes, warn, ask y/n unless force=y",
        "actions": [(confirm, [ctx, steps])],
        # Not captured: the operator must see the list and the question.
        "verbosity": 2,
    }
    for step in steps:
        task: TaskDict = {
            "name": step.name,
            "doc": step.doc,
            "task_dep": ["deprovision:confirm",
                         *(f"deprovision:{name}" for name in step.after if name in names)],
            "actions": [(apply_step, [ctx, step])],
        }
        if step.name == "agent-state":
            # Always runs: the state DB is removed after doit wrote and closed it.
            task["teardown"] = [(remove_state_db, [ctx])]
        else:
            task["uptodate"] = [Probe(step.name, partial(pending, ctx, step))]
        yield task
