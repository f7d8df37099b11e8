"""Where do the planted secrets end up? A search over everything an agent run leaves behind.

The secrets of a scenario (`planted(scenario, root)`): the password, the custom data, each
protected setting's value, the private key of a delivered key pair, and the private keys made
or placed on the VM (certificate .prv files, TransportPrivate.pem, ssh host keys), found by
lines of their PEM bodies. `audit(...)` searches:

- every regular file under the root (logs, run reports, the facts store and the state DB
  are files there too), except a secret's own home where the protocol puts it (the .prv
  files, TransportPrivate.pem, the host keys, the key pair's file, CustomData and the
  ovf-env.xml copy for the custom data), whose modes must be 0600 (and 0700 for .ssh);
  core files among them are named as findings whatever they hold;
- texts the caller hands over: the agent's stdout/stderr (the journal's input), its log;
- the fabric's record: what the agent sent (requests, status blobs, health, logs). The
  password never goes there, protected settings only encrypted;
- `/proc/<pid>/cmdline` and `/proc/<pid>/environ` of every process below the agent, sampled
  while it runs (`ProcSampler`).

The answer counts locations checked and lists findings ("password in var/log/waagent.log");
the target is none. The shadow hash is not the password: it never matches.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Directories of a root never searched: kernel views (a sandbox builds small fakes there)
# and the image's own software.
SKIPPED_TOP = ("proc", "sys", "dev", "usr", "lib", "lib64", "bin", "sbin")
MAX_FILE_BYTES = 64 * 1024 * 1024
# Files in the fabric's record of the agent's requests where a secret may go encrypted only.
LIB = "var/lib/waagent"


@dataclass(frozen=True)
class Secret:
    """A planted secret: a name for findings, the needles that reveal it, and its homes
    (paths relative to the root where the protocol puts it; their modes are checked)."""

    name: str
    needles: tuple[bytes, ...]
    homes: tuple[str, ...] = ()


@dataclass
class AuditResult:
    locations: int = 0
    findings: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)  # per kind of location

    def add(self, kind: str, n: int = 1) -> None:
        self.locations += n
        self.checked[kind] = self.checked.get(kind, 0) + n

    def merge(self, other: AuditResult) -> None:
        self.locations += other.locations
        self.findings += other.findings
        for kind, n in other.checked.items():
            self.checked[kind] = self.checked.get(kind, 0) + n


def pem_needles(text: str, lines: int = 3, public: Iterable[Path] = ()) -> tuple[bytes, ...]:
    """A few full base64 lines from the second half of a PEM body, where the private part
    is: any copy of the key in the same encoding holds them. Lines that a public file holds
    too (an OpenSSH key repeats its public point there) are left out."""
    body = [line.strip() for line in text.splitlines()
            if line.strip() and not line.startswith("-----") and len(line.strip()) >= 40]
    shown = b"".join(path.read_bytes() for path in public if path.is_file())
    private = [line.encode() for line in body[len(body) // 2:]]
    return tuple(line for line in private if line not in shown)[:lines]


def planted(scenario: Any, root: Path) -> list[Secret]:
    """The scenario's secrets, and the private keys found on the VM root."""
    secrets: list[Secret] = []
    if scenario.password:
        secrets.append(Secret("password", (scenario.password.encode(),)))
    if scenario.custom_data:
        text = scenario.custom_data.strip()
        secrets.append(Secret("custom data", (text.encode(),
                                              base64.b64encode(scenario.custom_data.encode())),
                              homes=(f"{LIB}/CustomData", f"{LIB}/ovf-env.xml")))
    for ext in scenario.extensions:
        configs = [ext, *(getattr(ext, "multi_config", None) or [])]
        for config in configs:
            for key, value in (getattr(config, "protected_settings", None) or {}).items():
                needle = value if isinstance(value, str) else json.dumps(value)
                if len(needle) >= 6:
                    secrets.append(Secret(f"protected setting {ext.name}.{key}",
                                          (needle.encode(),)))
    for index, pair in enumerate(scenario.key_pairs):
        home = (pair.path or f"$HOME/{scenario.username}/.ssh/id_rsa").replace(
            "$HOME", "home").lstrip("/")
        secrets.append(Secret(f"key pair {pair.name}",
                              pem_needles(scenario.key_pair_private_key_pem(index)),
                              homes=(home,)))
    lib = root / LIB
    for path in sorted(lib.glob("*.prv")) + [lib / "TransportPrivate.pem"]:
        if path.is_file():
            public = [path.with_suffix(".crt"), lib / "TransportCert.pem"]
            secrets.append(Secret(path.name, pem_needles(path.read_text(), public=public),
                                  homes=(f"{LIB}/{path.name}",)))
    for path in sorted((root / "etc/ssh").glob("ssh_host_*_key")):
        if path.is_file():
            public = [path.with_name(path.name + ".pub")]
            secrets.append(Secret(path.name, pem_needles(path.read_text(), public=public),
                                  homes=(f"etc/ssh/{path.name}",)))
    return [s for s in secrets if s.needles]


def _holds(data: bytes, secret: Secret) -> bool:
    return any(needle in data for needle in secret.needles)


def search_root(root: Path, secrets: list[Secret], result: AuditResult) -> None:
    """Every regular file under root (but SKIPPED_TOP), and the homes' modes."""
    homes = {home: secret for secret in secrets for home in secret.homes}
    # One key may live in several homes (a .prv and the key pair's file): homes of any
    # secret are allowed for every secret.
    for top, dirs, files in os.walk(root):
        relative_top = os.path.relpath(top, root)
        if relative_top == ".":
            dirs[:] = [d for d in dirs if d not in SKIPPED_TOP]
        for name in files:
            path = Path(top) / name
            relative = os.path.normpath(os.path.join(relative_top, name))
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
                continue
            result.add("files")
            if name == "core" or name.startswith("core."):
                result.findings.append(f"a core file: {relative}")
            if relative in homes:
                if info.st_mode & 0o077:
                    result.findings.append(f"{relative} holds {homes[relative].name} with mode "
                                           f"{stat.S_IMODE(info.st_mode):04o} (want 0600)")
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            for secret in secrets:
                if _holds(data, secret):
                    result.findings.append(f"{secret.name} in {relative}")
    for relative in homes:
        ssh = (root / relative).parent
        if ssh.name == ".ssh" and ssh.is_dir() and ssh.stat().st_mode & 0o077:
            result.findings.append(f"{os.path.relpath(ssh, root)} has mode "
                                   f"{stat.S_IMODE(ssh.stat().st_mode):04o} (want 0700)")


def search_texts(texts: Mapping[str, str | bytes], secrets: list[Secret],
                 result: AuditResult, kind: str = "outputs") -> None:
    for where, text in texts.items():
        result.add(kind)
        data = text.encode() if isinstance(text, str) else text
        for secret in secrets:
            if _holds(data, secret):
                result.findings.append(f"{secret.name} in {where}")


def search_record(record: Any, secrets: list[Secret], result: AuditResult) -> None:
    """What the agent sent the fabric: no secret in the clear, ever."""
    document = record.to_json()
    for kind, entries in document.items():
        for index, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            result.add("fabric record")
            data = json.dumps(entry, default=str).encode()
            for secret in secrets:
                if _holds(data, secret):
                    result.findings.append(f"{secret.name} in the fabric record "
                                           f"({kind} #{index})")


def descendants(pid: int) -> set[int]:
    """pid and every process below it, from /proc/<pid>/stat."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[-1].split()
        parents[int(entry)] = int(fields[1])
    found = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in found and child not in found:
                found.add(child)
                grew = True
    return found


def pid_with_arg(arg: str) -> int | None:
    """The oldest process with `arg` as one of its arguments (e.g. `root=/tmp/vm`)."""
    wanted = arg.encode()
    for entry in sorted((e for e in os.listdir("/proc") if e.isdigit()), key=int):
        try:
            if wanted in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                return int(entry)
        except OSError:
            continue
    return None


class ProcSampler:
    """Samples /proc/<pid>/cmdline and environ of the processes below `pid()` while running.

    `secrets` may be given later (`.secrets = ...`, e.g. once the host keys exist); what it
    read is kept per process (by pid and command) and searched at the end as well.
    """

    def __init__(self, pid: Any, secrets: list[Secret] | None = None,
                 period: float = 0.02) -> None:
        self._pid = pid if callable(pid) else (lambda: pid)
        self.secrets = secrets or []
        self.period = period
        self.seen: dict[tuple[int, bytes], bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            top = self._pid()
            if top:
                for pid in descendants(top):
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                        environ = Path(f"/proc/{pid}/environ").read_bytes()
                    except OSError:
                        continue
                    self.seen[(pid, cmdline)] = cmdline + b"\0\0" + environ
            time.sleep(self.period)

    def commands(self) -> list[str]:
        return sorted({cmd.replace(b"\0", b" ").decode(errors="replace").strip()[:80]
                       for _pid, cmd in self.seen})

    def search(self, secrets: list[Secret] | None, result: AuditResult) -> None:
        for (pid, cmdline), data in self.seen.items():
            result.add("processes")
            for secret in secrets or self.secrets:
                if _holds(data, secret):
                    shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:60]
                    result.findings.append(f"{secret.name} in /proc/{pid} ({shown})")


def audit(root: Path, scenario: Any, *, texts: Mapping[str, str | bytes] | None = None,
          record: Any = None, sampler: ProcSampler | None = None,
          extra: Iterable[Secret] = ()) -> AuditResult:
    """Search everything for every planted secret; see the module docstring."""
    secrets = planted(scenario, root) + list(extra)
    result = AuditResult()
    search_root(root, secrets, result)
    search_texts(texts or {}, secrets, result)
    if record is not None:
        search_record(record, secrets, result)
    if sampler is not None:
        sampler.search(secrets, result)
    return result
