"""The facts store: gathered facts as JSON under `<Lib.Dir>/facts/<name>.json`.

Files are written atomically through FileSystem and only when their content
changes, so a task's file_dep on a facts file (or a fingerprint of a subset)
reruns it exactly when what it uses changed. Secrets never enter the store:
the OVF is stored as OvfEnv.public_facts() (a password flag, a custom data
sha256), and a document holding any registered secret is refused.
"""

import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, overload

# No `from __future__ import annotations`: the TypedDicts' annotations would be strings,
# each compiled into a ForwardRef when the module loads (on every boot).
from conf.config import Config
from system.errors import AgentError, ProbeFailed
from system.fs import FileSystem
from system.redact import MASK, redact
from system.root import Root

log = logging.getLogger("waagent.facts.store")

FACTS_DIR = "facts"
_NAME = re.compile(r"[a-z][a-z0-9_-]*")
# Keys whose values are shown masked in redacted views, whatever they hold.
SECRET_KEYS = frozenset({"password", "user_password", "custom_data", "private_key", "secret"})


class SecretInFacts(AgentError):
    """A facts document would have stored a secret; nothing was written."""


# Stored facts as `load` gives them back, typed. TypedDicts rather than NamedTuples: the
# tasks fingerprint and record these values as stored (graph.uptodate.Inputs, tasks/once.py
# compare JSON objects), a plan keeps them as the JSON the store would give back, and facts
# stored by an older agent may lack a key (NotRequired); a TypedDict is that very JSON
# object, checked by mypy key by key, where a NamedTuple would need converting both ways.

class OvfKey(TypedDict):
    """An SSH key of the OVF: an authorized key (value, or a certificate's fingerprint) or
    a key pair (fingerprint and path, no value)."""

    path: str
    fingerprint: str | None
    value: NotRequired[str | None]


class OvfFacts(TypedDict):
    """"ovf": the OVF's public facts (OvfEnv.public_facts) and where they were read."""

    username: str
    hostname: str | None
    password_set: bool
    custom_data_sha256: str | None
    disable_ssh_password_authentication: bool
    public_keys: list[OvfKey]
    key_pairs: list[OvfKey]
    provision_guest_agent: bool
    preprovisioned_vm: bool
    preprovisioned_vm_type: str | None
    source: NotRequired[str]


class GoalStateFacts(TypedDict):
    """"goalstate": the goal state the agent handled last."""

    incarnation: str
    container_id: str
    role_instance_id: str | None
    has_certificates: NotRequired[bool]  # not kept by older agents: assume some
    sha256: NotRequired[str]  # of the document (older agents kept none)


class VmFacts(TypedDict):
    """"vm": this VM's id and distribution."""

    vm_id: str
    family: str
    distro: str
    version: str
    init_system: str
    dhcp_client: str | None
    sshd_service: str
    cloud_init_enabled: bool


class CertificateFacts(TypedDict):
    """"certificates": the certificates installed for a goal state."""

    incarnation: str
    thumbprints: list[str]


class CertificateKey(TypedDict):
    """An SSH public key made from a delivered certificate (its sha256 says which)."""

    sha256: str
    key: str


def facts_path(root: Root, conf: Config, name: str) -> Path:
    """The real path of a facts file, `<Lib.Dir>/facts/<name>.json`."""
    return root / conf.required_path("Lib.Dir") / FACTS_DIR / _file_name(name)


@functools.cache
def _file_name(name: str) -> str:
    """`<name>.json`, one string per name for the process's life: pathlib interns every
    part of a path, and a part made anew at each use would be interned anew each time,
    wasting a slot of CPython's interned-string table each time (the daemon's memory)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"facts name {name!r} must be lower-case letters, digits, '-' or '_'")
    return f"{name}.json"


def to_jsonable(value: Any) -> Any:
    """NamedTuples, tuples, sets and paths as plain JSON values (dict keys as strings).

    A NamedTuple becomes an object; one with public_facts() is stored as that view.
    """
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        public = getattr(value, "public_facts", None)
        if callable(public):
            return to_jsonable(public())
        return {name: to_jsonable(item) for name, item in value._asdict().items()}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(to_jsonable(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} as a fact")


def dumps(facts: Mapping[str, Any]) -> str:
    """The canonical text of a facts document: sorted keys, so equal facts give equal bytes."""
    return json.dumps(to_jsonable(facts), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def save(fs: FileSystem, conf: Config, name: str, facts: Mapping[str, Any]) -> bool:
    """Store a facts document (0600); True when the file changed."""
    text = dumps(facts)
    if redact(text) != text:
        raise SecretInFacts(f"facts {name!r} hold a secret (password or custom data); "
                            "not stored")
    path = facts_path(fs.runner.root, conf, name)
    directory = path.parent
    if not directory.is_dir():
        fs.mkdir(directory, mode=0o700, why="facts store")
    return fs.write(path, text, mode=0o600, why=f"facts {name} changed")


@overload
def load(root: Root, conf: Config, name: Literal["ovf"]) -> OvfFacts | None: ...
@overload
def load(root: Root, conf: Config, name: Literal["goalstate"]) -> GoalStateFacts | None: ...
@overload
def load(root: Root, conf: Config, name: Literal["vm"]) -> VmFacts | None: ...
@overload
def load(root: Root, conf: Config, name: Literal["certificates"]) -> CertificateFacts | None: ...
@overload
def load(root: Root, conf: Config,
         name: Literal["certificate_keys"]) -> dict[str, CertificateKey] | None: ...
@overload
def load(root: Root, conf: Config, name: str) -> Mapping[str, Any] | None: ...
def load(root: Root, conf: Config, name: str) -> Mapping[str, Any] | None:
    """A stored facts document, or None when it was never gathered.

    A file that is not a JSON object (a disk that lost blocks, an editor) is None too, with
    a warning: facts are a cache of what is gathered, so the gather task runs again and
    replaces it. One-shot work is recorded elsewhere (per VM id), never here.
    """
    path = facts_path(root, conf, name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ProbeFailed(f"facts {name}: cannot read {root.system_path(path)}: "
                          f"{err.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        log.warning("facts %s: %s is not JSON (%s); gathering it again", name,
                    root.system_path(path), err)
        return None
    if not isinstance(value, dict):
        log.warning("facts %s: %s is not a JSON object; gathering it again", name,
                    root.system_path(path))
        return None
    return value


_MISSING = {"missing": True}


def subset(facts: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Exactly these keys ("a.b" reaches into nested objects); an absent key is marked missing."""
    chosen: dict[str, Any] = {}
    for key in sorted(set(keys)):
        value: Any = facts
        for part in key.split("."):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            else:
                value = _MISSING
                break
        chosen[key] = to_jsonable(value)
    return chosen


def fingerprint(facts: Mapping[str, Any], keys: Iterable[str]) -> str:
    """A stable digest of exactly a subset of facts: a task reruns when exactly those change."""
    text = json.dumps(subset(facts, keys), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def redacted(facts: Any) -> Any:
    """A copy for printing: values of secret-named keys and every registered secret masked."""
    if isinstance(facts, Mapping):
        return {str(k): (MASK if str(k).lower() in SECRET_KEYS and v is not None
                         else redacted(v)) for k, v in facts.items()}
    if isinstance(facts, (list, tuple)):
        return [redacted(v) for v in facts]
    if isinstance(facts, str):
        return redact(facts)
    return facts


# --- gathering -------------------------------------------------------------------------------

def vm_facts(root: Root, conf: Config) -> dict[str, Any]:
    """The VM id (its own section: without DMI it fails alone)."""
    from facts import hardware

    return {"vm_id": hardware.vm_id(root)}


def hardware_facts(root: Root, conf: Config) -> dict[str, Any]:
    """Kernel release and NICs."""
    from facts import hardware

    return {"kernel_release": hardware.kernel_release(root),
            "nics": to_jsonable(hardware.nics(root))}


def distro_facts(root: Root, conf: Config) -> dict[str, Any]:
    """The distribution and its family facts."""
    from facts import distro, users

    found = distro.distro(root)
    return {**to_jsonable(found), "family_facts": to_jsonable(found.family_facts),
            "uid_min": users.uid_min(root)}


def resource_disk_facts(root: Root, conf: Config) -> dict[str, Any]:
    """The resource disk, its partitions and their filesystem signatures."""
    from facts import disks

    device = disks.resource_disk_device(root)
    if device is None:
        return {"device": None}
    disk = disks.block_device(root, device)
    partitions = []
    for part in disk.partitions:
        signature = disks.filesystem_signature(root, part.device)
        partitions.append({**to_jsonable(part), "filesystem": to_jsonable(signature)})
    return {"device": device, "size_bytes": disk.size_bytes,
            "partition_table": disk.partition_table, "partitions": partitions,
            "filesystem": to_jsonable(disks.filesystem_signature(root, device))}


def mount_facts(root: Root, conf: Config) -> dict[str, Any]:
    """Mounts and active swaps."""
    from facts import mounts

    return {"mounts": to_jsonable(mounts.mounts(root)),
            "swaps": to_jsonable(mounts.active_swaps(root))}


def ovf_facts(root: Root, conf: Config, image: Path | None = None) -> dict[str, Any]:
    """The OVF on the provisioning media (the DVD, or the `image` file) with its secrets
    masked, where it was looked for, and the kept copy (no secrets)."""
    from facts import media

    found, source, looked = media.media_ovf_env(root, image)
    kept = media.cached_ovf_env(root, conf)
    facts: dict[str, Any] = {"looked_at": list(looked), "source": source,
                             "media": ovf_view(found) if found is not None else None,
                             "cached": kept.public_facts() if kept is not None else None}
    if found is None:
        facts["note"] = (f"no provisioning media: looked for {media.DVD_NAMES} under "
                         f"{root.system_path(root / 'dev')} and found "
                         f"{'no disc in ' + ', '.join(looked) if looked else 'no such device'}"
                         "; media=IMAGE reads an image file")
    return facts


def ovf_view(env: Any) -> dict[str, Any]:
    """An OvfEnv for people: its public facts, the password and custom data masked (the
    custom data's size shown)."""
    view: dict[str, Any] = env.public_facts()
    view["password"] = MASK if env.password is not None else None
    view["custom_data"] = MASK if env.custom_data is not None else None
    view["custom_data_bytes"] = (len(env.custom_data.encode())
                                 if env.custom_data is not None else None)
    return view


SECTIONS: dict[str, Callable[[Root, Config], dict[str, Any]]] = {
    "vm": vm_facts,
    "hardware": hardware_facts,
    "distro": distro_facts,
    "resource_disk": resource_disk_facts,
    "mounts": mount_facts,
    "ovf": ovf_facts,
}


def gather(root: Root, conf: Config, names: Iterable[str] | None = None, *,
           image: Path | None = None) -> dict[str, Any]:
    """Facts sections by name; a section whose probe failed is {"error": message}.
    `image`: the provisioning media as an image file (media=), for the ovf section."""
    gathered: dict[str, Any] = {}
    for name in names if names is not None else SECTIONS:
        try:
            gathered[name] = (ovf_facts(root, conf, image) if name == "ovf"
                              else SECTIONS[name](root, conf))
        except (AgentError, OSError, ValueError) as err:
            log.debug("facts %s: %s", name, err)
            gathered[name] = {"error": redact(str(err))}
    return gathered


def save_all(fs: FileSystem, conf: Config, gathered: Mapping[str, Any]) -> list[str]:
    """Store each gathered section that has no error; the names of files that changed."""
    changed = []
    for name, facts in gathered.items():
        if isinstance(facts, Mapping) and "error" not in facts and save(fs, conf, name, facts):
            changed.append(name)
    return changed


def describe_all(root: Root, conf: Config, image: Path | None = None) -> dict[str, Any]:
    """Every facts section gathered now, redacted, for `waagent facts` to print."""
    return dict(redacted(gather(root, conf, image=image)))
