"""The provisioned user: account, password hash, sudoers; root's password.

user:account   create the OVF's UserName (home, bash, the family's admin groups)
user:password  set its password as a crypt(3) hash (PasswordCryptId, salt from a CSPRNG)
user:sudoers   /etc/sudoers.d/waagent (NOPASSWD without a password), checked by visudo
user:rootpw    lock root's password (Provisioning.DeleteRootPassword)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graph.context import Context
from system.errors import AgentError, CommandFailed
from tasks import TaskDict, inputs
from tasks.once import once

if TYPE_CHECKING:
    from system.runner import Runner

log = logging.getLogger("waagent.user")

# POSIX portable user names, as useradd accepts them by default: at most 32 characters,
# a `$` allowed last.
# (Compiled where used, by re's cache: a no-op boot checks no user name.)
_USER_NAME = r"[a-z_][a-z0-9_.-]{0,30}[a-z0-9_.$-]?"
SUDOERS_FILE = "waagent"
_CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Salt lengths the schemes allow; PasswordCryptSaltLength is capped to them.
_MAX_SALT = {"1": 8, "5": 16, "6": 16}


class UserError(AgentError):
    """The provisioned user cannot be created or configured as asked."""


def generate(ctx: Context) -> Iterator[TaskDict]:
    """User tasks, only when this agent provisions."""
    if inputs.mode(ctx) != "waagent":
        return
    conf = ctx.conf
    # Once per VM (tasks/once.py): after that the admin owns the account, its password and
    # its sudo rights; only a change of these inputs makes a task run again.
    yield once(ctx, "user", {
        "name": "account",
        "doc": "create the provisioned user with a home directory",
        "actions": [(ensure_account, [ctx])],
        "task_dep": ["gather:ovf"],
    }, lambda: account_inputs(ctx))
    yield once(ctx, "user", {
        "name": "password",
        "doc": "set the user's password hash (Provisioning.PasswordCryptId)",
        "actions": [(ensure_password, [ctx])],
        "task_dep": ["user:account"],
    }, lambda: {**account_inputs(ctx), "password_set": inputs.ovf_facts(ctx)["password_set"],
                **conf.subset(["Provisioning.PasswordCryptId",
                               "Provisioning.PasswordCryptSaltLength"])})
    yield once(ctx, "user", {
        "name": "sudoers",
        "doc": "sudo for the user in /etc/sudoers.d/waagent",
        "actions": [(ensure_sudoers, [ctx])],
        "task_dep": ["user:account"],
    }, lambda: {**account_inputs(ctx), "password_set": inputs.ovf_facts(ctx)["password_set"],
                **conf.subset(["OS.SudoersDir"])})
    if conf.flag("Provisioning.DeleteRootPassword"):
        yield once(ctx, "user", {
            "name": "rootpw",
            "doc": "lock root's password (Provisioning.DeleteRootPassword=y)",
            "actions": [(lock_root_password, [ctx])],
            "task_dep": ["gather:vm"],
        }, lambda: {"vm_id": inputs.vm_id(ctx),
                    **conf.subset(["Provisioning.DeleteRootPassword"])})


def username(ctx: Context) -> str:
    """The OVF's UserName, checked to be a name useradd accepts."""
    name = str(inputs.ovf_facts(ctx)["username"])
    if not re.fullmatch(_USER_NAME, name):
        raise UserError(f"UserName {name!r} in ovf-env.xml is not a valid user name "
                        "(lower-case letters, digits, '_', '-', '.', at most 32 characters)")
    return name


def account_inputs(ctx: Context) -> dict[str, Any]:
    return {"vm_id": inputs.vm_id(ctx), "username": str(inputs.ovf_facts(ctx)["username"]),
            **ctx.conf.subset(["OS.HomeDir"])}


def ensure_account(ctx: Context) -> None:
    """Create the user unless it exists; refuse to take over a system account."""
    from facts import users  # the accounts are read by actions only, not at every boot
    from system import osutil

    name = username(ctx)
    existing = users.user(ctx.root, name)
    if existing is not None:
        if existing.uid < users.uid_min(ctx.root) and not ctx.conf.flag(
                "Provisioning.AllowResetSysUser"):
            raise UserError(f"user {name} is a system account (uid {existing.uid} < UID_MIN "
                            f"{users.uid_min(ctx.root)}); refusing to provision it: choose "
                            "another UserName or set Provisioning.AllowResetSysUser=y")
        log.debug("user %s exists (uid %s)", name, existing.uid)
        return
    family = inputs.distro(ctx).family
    argv = osutil.useradd_argv(ctx.run, family, name, inputs.home_dir(ctx, name),
                               list(users.groups(ctx.root)))
    groups = argv[argv.index("-G") + 1] if "-G" in argv else "its own only"
    try:
        ctx.run.change(argv, why=f"create user {name}, home {inputs.home_dir(ctx, name)}, "
                                 f"groups: {groups}")
    except CommandFailed as err:
        raise UserError(f"cannot create user {name}: {err}") from None


def password_hash(password: str, crypt_id: str, salt_length: int, *,
                  run: Runner | None = None, openssl: str = "openssl") -> str:
    """A crypt(3) hash of `password`: `$1$`, `$2a$`, `$5$` or `$6$`, salt from a CSPRNG.

    With a Runner, `openssl passwd` computes `$1$`/`$5$`/`$6$` hashes (the password on its
    stdin): passlib costs ~2 MB and ~50 modules on the way to Ready. passlib does what
    openssl cannot: bcrypt, a password with a line break or longer than openssl reads,
    or no openssl binary at all.
    """
    if crypt_id == "2a":  # bcrypt makes its own 22-character salt from os.urandom
        from passlib.hash import bcrypt

        return str(bcrypt.using(ident="2a", rounds=10).hash(password))
    import secrets

    length = max(1, min(salt_length, _MAX_SALT[crypt_id]))
    salt = "".join(secrets.choice(_CRYPT_ALPHABET) for _ in range(length))
    if run is not None:
        hashed = _openssl_password_hash(run, openssl, password, crypt_id, salt)
        if hashed is not None:
            return hashed
    from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

    if crypt_id == "1":
        return str(md5_crypt.using(salt=salt).hash(password))
    scheme = sha256_crypt if crypt_id == "5" else sha512_crypt
    # 5000 rounds is crypt(3)'s default, written without a rounds= field.
    return str(scheme.using(salt=salt, rounds=5000).hash(password))


# `openssl passwd -stdin` reads one line of at most 256 bytes per password.
_OPENSSL_PASSWORD_MAX = 255


def _openssl_password_hash(run: Runner, openssl: str, password: str, crypt_id: str,
                           salt: str) -> str | None:
    """`openssl passwd -<id> -salt SALT -stdin`, or None when openssl cannot do it."""
    if ("\n" in password or "\r" in password
            or len(password.encode()) > _OPENSSL_PASSWORD_MAX):
        return None
    try:
        result = run.probe([openssl, "passwd", f"-{crypt_id}", "-salt", salt, "-stdin"],
                           input=password + "\n", check=True)
    except CommandFailed as err:
        log.info("%s cannot hash the password (%s): using passlib", openssl, err)
        return None
    hashed = result.stdout.strip()
    if not hashed.startswith(f"${crypt_id}${salt}$") or "\n" in hashed:
        log.info("%s passwd gave an unexpected answer: using passlib", openssl)
        return None
    return hashed


def shadow_fields(ctx: Context, name: str) -> list[str] | None:
    """The user's line of the shadow file, split; None when absent."""
    path = ctx.root.follow(ctx.conf.required_path("OS.PasswordPath"))
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if fields and fields[0] == name:
            return fields
    return None


def ensure_password(ctx: Context) -> None:
    """Set the hash from the OVF password; without the DVD keep the hash already set."""
    from system import osutil

    name = username(ctx)
    if not inputs.ovf_facts(ctx)["password_set"]:
        log.info("no password in the OVF data: %s logs in with SSH keys only", name)
        if ctx.run.plan:
            ctx.run.record("keep", f"no password for {name}", "none in the OVF: SSH keys only")
        return
    data = inputs.provisioning_data(ctx)
    # The kept copy in Lib.Dir never holds the password: ours leaves the element out,
    # waagent's says "*" in its place, which must not become the password.
    password = data.env.password if data is not None and not data.from_cache else None
    if password is None:
        fields = shadow_fields(ctx, name)
        if fields and len(fields) > 1 and fields[1].startswith("$"):
            log.info("password of %s kept: the provisioning media with the password is gone",
                     name)
            return
        raise UserError(f"the OVF gave {name} a password but the provisioning media is gone "
                        "and no hash is set; attach the DVD again or set a password by hand")
    crypt_id = ctx.conf.text("Provisioning.PasswordCryptId") or "6"
    salt_length = ctx.conf.number("Provisioning.PasswordCryptSaltLength") or 10
    if ctx.run.plan:  # a plan makes no hash: it says what would be set, never the password
        ctx.run.record("set", f"password of {name}", f"from the OVF, as a ${crypt_id}$ hash "
                       f"with a {salt_length}-character salt")
        return
    hashed = password_hash(password, crypt_id, salt_length, run=ctx.run,
                           openssl=inputs.openssl(ctx))
    osutil.set_password_hash(ctx.run, name, hashed, why=f"password of {name}")


def sudoers_text(name: str, password_set: bool) -> str:
    rule = "ALL=(ALL) ALL" if password_set else "ALL=(ALL) NOPASSWD: ALL"
    return f"# Managed by waagent-graph: sudo for the provisioned user\n{name} {rule}\n"


def sudoers_path(ctx: Context) -> Path:
    return ctx.root / ctx.conf.required_path("OS.SudoersDir") / SUDOERS_FILE


def ensure_sudoers(ctx: Context) -> None:
    """Write the sudoers drop-in after visudo accepts it (0440; a bad file locks sudo out)."""
    name = username(ctx)
    text = sudoers_text(name, bool(inputs.ovf_facts(ctx)["password_set"]))
    path = sudoers_path(ctx)
    if not ctx.run.plan:
        check_sudoers_syntax(ctx, path, text)
    ctx.fs.mkdir(path.parent, why="sudoers drop-ins", mode=0o750)
    rule = text.splitlines()[-1]
    ctx.fs.write(path, text, mode=0o440, owner=(0, 0), why=f"sudo for {name}: {rule}")


def check_sudoers_syntax(ctx: Context, path: Path, text: str) -> None:
    """`visudo -c -f` on a candidate before the target is replaced: a bad drop-in would
    lock everybody out of sudo."""
    with ctx.fs.scratch_file(text, name=SUDOERS_FILE, directory=ctx.scratch_dir) as candidate:
        try:
            result = ctx.run.probe(["visudo", "-c", "-q", "-f", ctx.command_path(candidate)])
        except CommandFailed as err:
            if err.returncode != 127:
                raise
            log.warning("visudo not found: %s written without a syntax check",
                        ctx.root.system_path(path))
            return
    if not result.ok:
        raise UserError(f"visudo rejects the sudoers rule for {ctx.root.system_path(path)}: "
                        f"{(result.stderr or result.stdout).strip()}")


# Shadow password fields that hold no hash: no password matches them, and none can be
# unlocked back (`passwd -l` keeps the hash behind a `!`, an empty field needs none).
_NO_HASH = frozenset({"*", "!", "!!", "!*", "*LOCK*"})


def lock_root_password(ctx: Context) -> None:
    """Replace root's hash by a lock (the hash is removed, not just disabled); a root
    without a hash (cloud images lock it) is left as it is."""
    from system import osutil

    fields = shadow_fields(ctx, "root")
    if fields and len(fields) > 1 and fields[1] in _NO_HASH:
        log.debug("root has no password hash (%r): nothing to delete", fields[1])
        return
    osutil.set_password_hash(ctx.run, "root", "*LOCK*", why="delete root's password")
