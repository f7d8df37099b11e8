"""SSH: authorized keys, key pairs, sshd_config, host keys, and the sshd reload.

ssh:certificates     the certificates the OVF's keys and key pairs name, when one is not
                     in Lib.Dir yet (the certificates area installs them all after Ready)
ssh:authorized_keys  keys from the OVF (by value, or by certificate thumbprint)
ssh:keypairs         private keys the platform delivered, installed where the OVF says
ssh:hostkeys         new host keys for this VM (Provisioning.RegenerateSshHostKeyPair)
ssh:config           PasswordAuthentication & co. and ClientAliveInterval, checked by sshd -t
ssh:reload           sshd reads the changes, only when its files changed

The host key's fingerprint goes to the platform after Ready (report:hostkey).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from graph.context import Context
from graph.uptodate import Inputs, Probe
from system.errors import AgentError, CommandFailed
from tasks import TaskDict, certificates, inputs
from tasks.once import once

log = logging.getLogger("waagent.ssh")

MARKER = "# Managed by waagent-graph"
DROPIN_NAME = "00-waagent.conf"
HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")  # what "auto" makes (DSA is gone from OpenSSH)
# An OpenSSH public key line: `[options] TYPE BASE64 [comment]` (sshd(8) AUTHORIZED_KEYS).
# The options, when present, are one word (as the OVF and our files write them).
# (Compiled where used, by re's cache: a no-op boot reads no key line.)
_KEY_LINE = (r"(?s)(?:\S+\s+)?(ssh-(?:rsa|dss|ed25519)|ecdsa-sha2-nistp[0-9]+|sk-[a-z0-9@.-]+)"
             r"\s+([A-Za-z0-9+/=]+)(?:\s.*)?")


class SshError(AgentError):
    """An SSH setting cannot be applied as asked."""


def host_key_types(ctx: Context) -> tuple[str, ...]:
    chosen = ctx.conf.text("Provisioning.SshHostKeyPairType") or "rsa"
    return HOST_KEY_TYPES if chosen == "auto" else (chosen,)


def ssh_dir(ctx: Context) -> Path:
    return ctx.root / ctx.conf.required_path("OS.SshDir")


def generate(ctx: Context) -> Iterator[TaskDict]:
    """SSH tasks: all when this agent provisions; with cloud-init, only the fingerprint."""
    if inputs.mode(ctx) != "waagent":
        return
    conf = ctx.conf
    # The host keys, sshd settings, authorized keys and key pairs are done once per VM
    # (tasks/once.py): after that they are the admin's, and only a change of a task's
    # inputs (a conf option, new platform data, a new VM id) makes it run again.
    if conf.flag("Provisioning.RegenerateSshHostKeyPair"):
        yield once(ctx, "ssh", {
            "name": "hostkeys",
            "doc": f"new SSH host keys ({', '.join(host_key_types(ctx))}) for this VM",
            "actions": [(regenerate_host_keys, [ctx])],
            "task_dep": ["gather:vm"],
        }, lambda: {"vm_id": inputs.vm_id(ctx),
                    **conf.subset(["Provisioning.SshHostKeyPairType", "OS.SshDir"])})
    yield once(ctx, "ssh", {
        "name": "config",
        "doc": "sshd_config: password logins per the OVF, ClientAliveInterval; sshd -t",
        "actions": [(configure_sshd, [ctx])],
        "task_dep": ["gather:ovf", *(["ssh:hostkeys"] if conf.flag(
            "Provisioning.RegenerateSshHostKeyPair") else [])],
    }, lambda: {"vm_id": inputs.vm_id(ctx), **sshd_settings(ctx),
                **conf.subset(["OS.SshDir"])})
    yield {
        "name": "reload",
        "doc": "reload sshd when its configuration or host keys changed",
        "actions": [(reload_sshd, [ctx])],
        "task_dep": ["ssh:config"],
        # Reruns exactly when a file sshd reads changed since the last reload.
        "uptodate": [Inputs("sshd-files", lambda: sshd_file_digests(ctx))],
    }
    # Ready waits for the certificates only when a key or key pair needs one: it is then
    # fetched here, and waits for the transport key pair (see the provision group in
    # tasks/__init__.py). A thumbprint names one certificate's content: one in Lib.Dir
    # needs no new fetch.
    yield {
        "name": "certificates",
        "doc": "fetch the certificates the OVF's SSH keys and key pairs name",
        "actions": [(certificates.install, [ctx])],
        "task_dep": ["gather:ovf", "gather:goalstate"],
        "uptodate": [Probe("named-certificates", lambda: named_certificates_missing(ctx))],
    }
    yield once(ctx, "ssh", {
        "name": "authorized_keys",
        "doc": "authorized_keys of the user from the OVF keys and certificates",
        "actions": [(install_authorized_keys, [ctx])],
        "task_dep": ["user:account", "ssh:certificates"],
    }, lambda: key_inputs(ctx))
    yield once(ctx, "ssh", {
        "name": "keypairs",
        "doc": "install the key pairs the platform delivered (private key 0600)",
        "actions": [(install_key_pairs, [ctx])],
        "task_dep": ["user:account", "ssh:certificates"],
    }, lambda: keypair_inputs(ctx))


def named_certificates_missing(ctx: Context) -> str | None:
    """What the OVF's keys and key pairs need from the certificates and Lib.Dir lacks."""
    missing = [thumb + suffix for thumb, suffix in certificates.named_by_ovf(ctx).items()
               if not (ctx.lib_dir / (thumb + suffix)).exists()]
    return f"not in Lib.Dir: {', '.join(missing)}" if missing else None


def delivered(ctx: Context, suffix: str) -> list[str]:
    """The certificates the OVF's keys (`.crt`) or key pairs (`.prv`) name that are in
    Lib.Dir: others, delivered after Ready, are no input of the key tasks. Read from the
    files, not from the certificate facts, which a VM provisioned by waagent has not yet
    when this agent first checks its keys (tasks/once.py adopts them then)."""
    return [thumb for thumb, kind in certificates.named_by_ovf(ctx).items()
            if kind == suffix and (ctx.lib_dir / (thumb + suffix)).exists()]


# -- authorized keys --------------------------------------------------------------------------

def _user_and_owner(ctx: Context) -> tuple[str, tuple[int, int]]:
    from facts import users  # the accounts are read by actions only, not at every boot

    name = str(inputs.ovf_facts(ctx)["username"])
    entry = users.user(ctx.root, name)
    if entry is None and ctx.run.plan:
        return name, (-1, -1)  # user:account would create it first: its ids are not known
    if entry is None:
        raise SshError(f"user {name} does not exist: SSH keys cannot be installed")
    return name, (entry.uid, entry.gid)


def key_inputs(ctx: Context) -> dict[str, Any]:
    ovf = inputs.ovf_facts(ctx)
    by_cert = [k["fingerprint"] for k in ovf["public_keys"] if not k.get("value")]
    return {"vm_id": inputs.vm_id(ctx), "username": ovf["username"],
            "keys": ovf["public_keys"], "certificates": sorted(by_cert),
            # A certificate the OVF names may come with a later incarnation only.
            "delivered": delivered(ctx, ".crt"),
            **ctx.conf.subset(["OS.HomeDir"])}


def wanted_keys(ctx: Context) -> dict[str, list[str]]:
    """Authorized-key lines per file (as the VM sees it), from values and certificates."""
    ovf = inputs.ovf_facts(ctx)
    name = str(ovf["username"])
    found: dict[str, list[str]] = {}
    for key in ovf["public_keys"]:
        path = inputs.expand_ovf_path(ctx, key.get("path") or
                                      f"$HOME/{name}/.ssh/authorized_keys", name)
        if key.get("value"):
            line = " ".join(str(key["value"]).split())
            if key_fields(line) is None:
                raise SshError(f"SSH public key for {path} in ovf-env.xml is not an OpenSSH "
                               f"public key: {line[:40]!r}...")
        else:
            line = key_from_certificate(ctx, str(key["fingerprint"]).upper())
        found.setdefault(path, []).append(line)
    return found


def key_from_certificate(ctx: Context, thumb: str) -> str:
    """The OpenSSH public key of `<Lib.Dir>/<thumb>.crt`.

    Derived once per certificate and kept in the facts store: deriving it needs
    cryptography, which the up-to-date check of every boot should not import.
    """
    from facts import store

    cert = ctx.lib_dir / f"{thumb}.crt"
    try:
        data = cert.read_bytes()
    except FileNotFoundError:
        if ctx.run.plan:  # ssh:certificates would fetch it; a plan fetches none
            return f"certificate {thumb}"
        raise SshError(f"SSH key by certificate {thumb}: {ctx.root.system_path(cert)} "
                       "was not delivered in the goal state's certificates") from None
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    known: dict[str, store.CertificateKey] = (
        store.load(ctx.root, ctx.conf, "certificate_keys") or {})
    kept = known.get(thumb)
    if kept is not None and kept.get("sha256") == digest:
        return str(kept["key"])
    from wire.x509 import ssh_public_key

    line = ssh_public_key(data)
    if not ctx.run.plan:
        store.save(ctx.fs, ctx.conf, "certificate_keys",
                   {**known, thumb: {"sha256": digest, "key": line}})
    return line


def key_fields(line: str) -> tuple[str, str] | None:
    """The key type and base64 body of an authorized-key line, or None when it is not one."""
    match = re.fullmatch(_KEY_LINE, line.strip())
    return (match[1], match[2]) if match else None


def _key_body(line: str) -> str | None:
    fields = key_fields(line)
    return f"{fields[0]} {fields[1]}" if fields else None


def install_authorized_keys(ctx: Context) -> None:
    """Add the OVF keys to each authorized_keys file, keeping keys already there."""
    _name, owner = _user_and_owner(ctx)
    for path, lines in wanted_keys(ctx).items():
        real = ctx.root / path
        ensure_private_dir(ctx, real.parent, owner)
        try:
            existing = real.read_text().splitlines()
        except FileNotFoundError:
            existing = []
        present = {_key_body(x) for x in existing}
        merged = existing + [x for x in lines if _key_body(x) not in present]
        ctx.fs.write(real, "\n".join(merged) + "\n", mode=0o600, owner=owner,
                     why="authorized SSH keys from the OVF: "
                         + ", ".join(key_label(line) for line in lines))


def key_label(line: str) -> str:
    """A key as people compare it: its type and `ssh-keygen -l` fingerprint."""
    import base64
    import hashlib

    fields = key_fields(line)
    if fields is None:
        return line
    digest = hashlib.sha256(base64.b64decode(fields[1] + "==")).digest()
    return f"{fields[0]} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def ensure_private_dir(ctx: Context, directory: Path, owner: tuple[int, int]) -> None:
    """The user's ~/.ssh: 0700 and theirs (sshd's StrictModes refuses anything looser)."""
    ctx.fs.mkdir(directory, why="SSH directory", mode=0o700, owner=owner)


# -- key pairs --------------------------------------------------------------------------------

def keypair_inputs(ctx: Context) -> dict[str, Any]:
    ovf = inputs.ovf_facts(ctx)
    return {"vm_id": inputs.vm_id(ctx), "username": ovf["username"],
            "key_pairs": ovf["key_pairs"], "delivered": delivered(ctx, ".prv"),
            **ctx.conf.subset(["OS.HomeDir"])}


def _key_pair_targets(ctx: Context) -> list[tuple[str, Path]]:
    ovf = inputs.ovf_facts(ctx)
    name = str(ovf["username"])
    return [(str(k["fingerprint"]).upper(),
             ctx.root / inputs.expand_ovf_path(ctx, str(k["path"]), name))
            for k in ovf["key_pairs"]]


def install_key_pairs(ctx: Context) -> None:
    """Copy `<THUMB>.prv` to the OVF path (0600, the user's) and write its `.pub`."""
    from wire.errors import CertificateError
    from wire.x509 import private_key_openssh

    _name, owner = _user_and_owner(ctx)
    for thumb, target in _key_pair_targets(ctx):
        source = ctx.lib_dir / f"{thumb}.prv"
        try:
            pem = source.read_bytes()
        except FileNotFoundError:
            if ctx.run.plan:  # ssh:certificates would fetch it; a plan fetches none
                ensure_private_dir(ctx, target.parent, owner)
                ctx.run.record("write", ctx.root.system_path(target), f"private key of key "
                               f"pair {thumb}, from the goal state's certificates")
                continue
            raise SshError(f"key pair {thumb}: {ctx.root.system_path(source)} was not "
                           "delivered in the goal state's certificates") from None
        try:
            public = private_key_openssh(pem).encode()
        except CertificateError as err:
            raise SshError(f"key pair {thumb}: {ctx.root.system_path(source)} is not a usable "
                           f"private key: {err}") from None
        ensure_private_dir(ctx, target.parent, owner)
        ctx.fs.write(target, pem, mode=0o600, owner=owner, secret=True,
                     why=f"private key of key pair {thumb}")
        ctx.fs.write(target.with_name(target.name + ".pub"), public + b"\n", mode=0o644,
                     owner=owner, why=f"public key of key pair {thumb}")


# -- host keys --------------------------------------------------------------------------------

def host_key_path(ctx: Context, key_type: str) -> Path:
    return ssh_dir(ctx) / f"ssh_host_{key_type}_key"


def regenerate_host_keys(ctx: Context) -> None:
    """Remove every host key (they came with the image) and make this VM's own.

    Each key is made under a name of this run's own, then renamed into place: an
    ssh-keygen left running by a killed agent may still write the old names, and
    ssh-keygen refuses to overwrite a file (it asks, and nobody answers)."""
    for old in sorted(ssh_dir(ctx).glob("ssh_host_*key*")):
        ctx.fs.remove(old, why="host keys of the captured image")
    for key_type in host_key_types(ctx):
        path = host_key_path(ctx, key_type)
        fresh = path.with_name(f".{path.name}.new-{os.getpid()}")
        for leftover in (fresh, fresh.with_name(fresh.name + ".pub")):
            ctx.fs.remove(leftover, why="an unfinished host key", quiet=True)
        ctx.run.change(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "",
                        "-f", ctx.command_path(fresh)],
                       why=f"new {key_type} host key")
        ctx.fs.move(fresh, path, why=f"the new {key_type} host key in place")
        ctx.fs.move(fresh.with_name(fresh.name + ".pub"), path.with_suffix(".pub"),
                    why=f"the new {key_type} host key in place")


def host_key_thumbprint(ctx: Context) -> str:
    """The fingerprint waagent reports: `ssh-keygen -lf` of the configured type without
    colons ("SHA256" + unpadded base64 of the key blob's SHA-256), computed here."""
    import base64
    import hashlib

    key_type = host_key_types(ctx)[0]
    pub = host_key_path(ctx, key_type).with_suffix(".pub")
    try:
        blob = base64.b64decode(pub.read_text().split()[1])
    except (FileNotFoundError, IndexError, ValueError):
        raise SshError(f"no usable {key_type} host key at {ctx.root.system_path(pub)} "
                       "to report") from None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256{digest}"


# -- sshd_config ------------------------------------------------------------------------------

def sshd_settings(ctx: Context) -> dict[str, str]:
    """The sshd options this agent owns, from the OVF and waagent.conf."""
    disable = bool(inputs.ovf_facts(ctx)["disable_ssh_password_authentication"])
    settings = {
        "PasswordAuthentication": "no" if disable else "yes",
        "KbdInteractiveAuthentication": "no",
        "ChallengeResponseAuthentication": "no",
    }
    interval = ctx.conf.number("OS.SshClientAliveInterval")
    if interval:
        settings["ClientAliveInterval"] = str(interval)
    return settings


def edit_sshd_config(text: str, settings: Mapping[str, str]) -> str:
    """Set each option once, before the first `Match` block (options inside Match blocks
    apply only to their matches and are left alone); other lines are kept as they are."""
    lines = text.splitlines()
    match_at = next((i for i, line in enumerate(lines)
                     if line.strip().lower().startswith("match ")), len(lines))
    head, tail = lines[:match_at], lines[match_at:]
    keys = {k.lower() for k in settings}
    kept = [line for line in head
            if not (line.split() and line.split()[0].lower() in keys) and line != MARKER]
    while kept and not kept[-1].strip():
        kept.pop()
    ours = [MARKER, *(f"{k} {v}" for k, v in settings.items())]
    return "\n".join([*kept, *ours, *([""] if tail else []), *tail]) + "\n"


def sshd_config_path(ctx: Context) -> Path:
    return ssh_dir(ctx) / "sshd_config"


def include_dirs(ctx: Context, text: str) -> list[str]:
    """Directories of `Include` globs that come before the first Match (first value wins,
    so a drop-in read there overrides the main file)."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0].lower() == "match":
            break
        if words[0].lower() == "include":
            for pattern in words[1:]:
                full = pattern if pattern.startswith("/") else \
                    f"{ctx.conf.required_path('OS.SshDir')}/{pattern}"
                found.append(full)
    return found


def dropin_target(ctx: Context, text: str) -> Path | None:
    """Our drop-in, when the main file includes a `*.conf` directory before anything else."""
    for pattern in include_dirs(ctx, text):
        if pattern.endswith("/*.conf"):
            return ctx.root / pattern[: -len("*.conf")] / DROPIN_NAME
    return None


def overriding_dropins(ctx: Context, text: str, settings: Mapping[str, str]) -> list[str]:
    """Included files, other than ours, that set one of our options."""
    import glob  # only when sshd_config is edited, not at every boot

    keys = {k.lower() for k in settings}
    found = []
    for pattern in include_dirs(ctx, text):
        for real in sorted(glob.glob(str(ctx.root / pattern))):
            if real.endswith("/" + DROPIN_NAME):
                continue
            try:
                words = [line.split() for line in
                         ctx.root.contain(real, follow=True).read_text().splitlines()]
            except OSError:
                continue
            if any(w and w[0].lower() in keys for w in words):
                found.append(ctx.root.system_path(real))
    return found


def _read_main(ctx: Context) -> str:
    path = sshd_config_path(ctx)
    try:
        return ctx.root.contain(path, follow=True).read_text()
    except FileNotFoundError:
        raise SshError(f"{ctx.root.system_path(path)} not found: is openssh-server "
                       "installed in this image?") from None


def desired_files(ctx: Context) -> dict[Path, str]:
    """The file(s) to write: our drop-in where one is read first, else the main file."""
    text = _read_main(ctx)
    settings = sshd_settings(ctx)
    dropin = dropin_target(ctx, text)
    if dropin is not None:
        body = "\n".join([MARKER, "# Read before other drop-ins: the first value wins.",
                          *(f"{k} {v}" for k, v in settings.items())]) + "\n"
        return {dropin: body}
    return {sshd_config_path(ctx): edit_sshd_config(text, settings)}


def configure_sshd(ctx: Context) -> None:
    """Write the settings, check the whole configuration with sshd -t, and put the old
    file back when sshd rejects it (a broken sshd_config locks everyone out)."""
    text = _read_main(ctx)
    for other in overriding_dropins(ctx, text, sshd_settings(ctx)):
        log.warning("%s also sets password/keep-alive options; %s is read first and wins",
                    other, DROPIN_NAME)
    for path, want in desired_files(ctx).items():
        try:
            before: bytes | None = path.read_bytes()
        except FileNotFoundError:
            before = None
        settings = ", ".join(f"{k} {v}" for k, v in sshd_settings(ctx).items())
        if not ctx.fs.write(path, want, mode=0o644 if before is None else None,
                            why=f"sshd settings from the OVF and waagent.conf: {settings}"):
            continue
        if ctx.run.plan:
            continue
        try:
            check_sshd_config(ctx)
        except SshError:
            if before is None:
                ctx.fs.remove(path, why="sshd rejected the new settings")
            else:
                ctx.fs.write(path, before, why="sshd rejected the new settings: old file back")
            raise


def check_sshd_config(ctx: Context) -> None:
    """`sshd -t` over the root's configuration, as the root's sshd reads it: the running
    system's sshd, the image's with chroot=y, else the host's (no program of the image
    runs without chroot=y, DESIGN rule 8)."""
    from system import osutil

    ssh_dir = ctx.conf.required_path("OS.SshDir")
    config = ssh_dir + "/sshd_config"
    argv = osutil.sshd_test_argv(ctx.run, ssh_dir)
    if argv is None:
        log.warning("sshd -t cannot check %s in %s here (it needs root, unshare, sshd and "
                    "ssh-keygen on this host): not checked", config, ctx.root.base)
        return
    if ctx.root.is_host or ctx.run.chroot:
        # sshd -t insists on its privilege separation directory, a runtime directory
        # (elsewhere the host's sshd gets one in a private /run).
        ctx.fs.mkdir(ctx.root / "run/sshd", why="sshd privilege separation directory",
                     mode=0o755, quiet=True)
    try:
        result = ctx.run.probe(argv)
    except CommandFailed as err:
        raise SshError(f"cannot check sshd_config: {err}") from None
    if not result.ok:
        raise SshError(f"sshd -t rejects {config}: {(result.stderr or result.stdout).strip()}")


def sshd_file_digests(ctx: Context) -> dict[str, str]:
    """Digests of the files sshd reads that this agent changes."""
    import hashlib

    files = [sshd_config_path(ctx), *desired_files(ctx)]
    files += [host_key_path(ctx, t).with_suffix(".pub") for t in host_key_types(ctx)]
    found = {}
    for path in dict.fromkeys(files):
        try:
            found[ctx.root.system_path(path)] = hashlib.sha256(
                ctx.root.contain(path, follow=True).read_bytes()).hexdigest()
        except FileNotFoundError:
            found[ctx.root.system_path(path)] = "absent"
    return found


def reload_sshd(ctx: Context) -> None:
    """Reload sshd the distribution's way (skipped for a root that is not running)."""
    from system import osutil

    osutil.reload_sshd(ctx.run, inputs.distro(ctx).sshd_service)
