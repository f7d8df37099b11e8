"""Scenario files: one VM as the platform sees it, loaded from YAML into typed dataclasses.

Errors name the key and the line: the YAML is composed to a node tree (which
keeps marks) and validated against the dataclass fields before any value is
built. Generated key material derives from the scenario's seed (fabric.keys),
so the same file gives the same keys and thumbprints in every process.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import json
import types
import typing
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from fabric import keys
from fabric.certs import Delivered

ExtensionState = Literal["enabled", "disabled", "uninstall"]
KeyType = Literal["ed25519", "rsa"]
T = TypeVar("T")


class ScenarioError(Exception):
    """A scenario file is invalid; the message names the file, line and key."""

    def __init__(self, message: str, *, key: str = "", line: int | None = None, source: str = "") -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}" if where else message)
        self.key = key
        self.line = line
        self.source = source


@dataclass
class SshKey:
    """An SSH public key for the user: by value in the OVF, or delivered as a certificate."""

    value: str | None = None  # OpenSSH public key line; generated from the seed when absent
    path: str | None = None  # default $HOME/<user>/.ssh/authorized_keys
    as_certificate: bool = False  # OVF has only Fingerprint + Path; the cert comes with the certificates
    type: KeyType = "ed25519"  # key type when generated (as_certificate keys are always RSA)
    name: str | None = None  # label for the key material; default "ssh-key-<index>"


@dataclass
class KeyPair:
    """A key pair whose private half reaches the VM through the certificates channel."""

    name: str | None = None  # default "key-pair-<index>"
    path: str | None = None  # default $HOME/<user>/.ssh/id_rsa


@dataclass
class Certificate:
    """An extra certificate to deliver: generated from the seed, or given as PEM."""

    name: str
    cert_pem: str | None = None
    key_pem: str | None = None  # delivered with the certificate when given (or generated)


@dataclass
class Extension:
    """An extension handler in the extensions config."""

    name: str
    version: str = "1.0.0"
    package: str | None = None  # directory or zip, relative to the scenario file; a no-op handler if absent
    state: ExtensionState = "enabled"
    seq_no: int = 0
    public_settings: Any = None
    protected_settings: Any = None
    certificate: str | None = None  # certificate encrypting protected settings; default "extensions"
    dependency_level: int | None = None  # DependsOn@dependencyLevel: only the level orders handlers
    depends_on: list[str] = field(default_factory=list)  # handlers it waits for ("Handler" or "Handler/ext")
    multi_config: list[ExtensionConfig] = field(default_factory=list)  # non-empty: a multi-config handler


@dataclass
class ExtensionConfig:
    """One extension of a multi-config handler (ExtensionRuntimeSettings@name)."""

    name: str
    seq_no: int = 0
    state: ExtensionState = "enabled"
    public_settings: Any = None
    protected_settings: Any = None
    dependency_level: int | None = None
    depends_on: list[str] = field(default_factory=list)


@dataclass
class AgentVersion:
    """A version of the guest agent the agent family's manifest offers."""

    version: str
    package: str  # the agent's zip, relative to the scenario file


@dataclass
class AgentFamily:
    """The guest agent family of ExtensionsConfig's GAFamilies (and vmSettings' gaFamilies)."""

    name: str = "Prod"
    versions: list[AgentVersion] = field(default_factory=list)  # the manifest: none = no updates
    version: str | None = None  # a version the platform pins (RSM)
    is_version_from_rsm: bool | None = None  # IsVersionFromRSM; left out when None
    is_vm_enabled_for_rsm_upgrades: bool | None = None  # IsVMEnabledForRSMUpgrades; likewise


@dataclass
class TimelineStep:
    """A control operation the fabric performs by itself, after a time or a number of status uploads."""

    do: dict[str, Any]  # a control request: {"action": ..., ...} (fabric/README.md, "Control channel")
    after_seconds: float | None = None  # seconds after the fabric started
    after_status_uploads: int | None = None  # status blobs received since the fabric started


@dataclass
class Fault:
    """A fault on a route: for `count` calls after `skip` good ones, delay, drop, bump or answer `status`."""

    route: str
    status: int | None = None
    count: int = 1  # 0 = for ever
    skip: int = 0
    delay: float = 0.0
    drop: bool = False  # close the connection without an answer
    bump_incarnation: bool = False  # a new goal state appears before this call is answered
    body: str | None = None
    retry_after: int | None = None  # with `status`: a Retry-After header (seconds)
    truncate: bool = False  # the real answer, cut in half: the connection closes mid-body
    stale: bool = False  # goalstate: the previous incarnation's document (the number goes back)


@dataclass
class Scenario:
    """One VM as the platform sees it. Fields match the YAML keys."""

    username: str
    hostname: str = "demo-vm"
    password: str | None = None
    ssh_keys: list[SshKey] = field(default_factory=list)
    key_pairs: list[KeyPair] = field(default_factory=list)
    custom_data: str | None = None
    disable_ssh_password_authentication: bool = False
    provision_guest_agent: bool = True
    vm_id: str = ""
    container_id: str = ""
    instance_id: str = ""
    incarnation: int = 1
    location: str = "westeurope"
    vm_size: str = "Standard_D2s_v3"
    certificates: list[Certificate] = field(default_factory=list)
    extensions: list[Extension] = field(default_factory=list)
    resource_disk_size_mb: int = 4096
    imds: dict[str, Any] = field(default_factory=dict)  # merged over the generated compute document
    vm_settings: bool = True  # HostGAPlugin serves FastTrack vmSettings; false = 404 unsupported
    # InVMArtifactsProfileBlob {"onHold": on_hold} in ExtensionsConfig (and vmSettings' onHold);
    # None: no artifacts profile
    on_hold: bool | None = None
    # features the goal state requires besides MultipleExtensionsPerHandler (an agent without
    # them fails the goal state with 2001)
    required_features: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    timeline: list[TimelineStep] = field(default_factory=list)
    ga_family: AgentFamily = field(default_factory=AgentFamily)
    # More files in the DVD's root directory, name -> text (System Center VMM's
    # linuxosconfiguration.xml and install, for DetectScvmmEnv tests).
    dvd_files: dict[str, str] = field(default_factory=dict)
    seed: str = ""  # derives every generated key; default: the hostname and user
    source: str = ""  # the file it came from (not a YAML key)
    base_dir: str = ""  # relative extension packages resolve here (not a YAML key)

    def __post_init__(self) -> None:
        if not self.seed:
            self.seed = f"{self.hostname}/{self.username}"
        # Stable ids from the seed: the same scenario is the same VM.
        if not self.vm_id:
            self.vm_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fabric:{self.seed}:vm"))
        if not self.container_id:
            self.container_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fabric:{self.seed}:container"))
        if not self.instance_id:
            self.instance_id = f"{self.vm_id}.{self.hostname}"

    # --- generated material -------------------------------------------------

    def home_path(self, tail: str) -> str:
        """A path under the user's home as the platform writes it: $HOME/<user>/<tail>."""
        return f"$HOME/{self.username}/{tail}"

    def ssh_key_label(self, index: int) -> str:
        """The label generated material for ssh_keys[index] derives from."""
        return self.ssh_keys[index].name or f"ssh-key-{index}"

    def _ssh_private_key(self, index: int) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | None:
        key = self.ssh_keys[index]
        if key.value is not None:
            return None
        label = self.ssh_key_label(index)
        if key.as_certificate or key.type == "rsa":
            return keys.rsa_key(self.seed, label)
        return keys.ed25519_key(self.seed, label)

    def ssh_public_key(self, index: int) -> str:
        """The OpenSSH public key line of ssh_keys[index] (given or generated)."""
        key = self.ssh_keys[index]
        if key.value is not None:
            return key.value.strip()
        private = self._ssh_private_key(index)
        assert private is not None
        return keys.openssh_public_key(private.public_key(), f"{self.username}@{self.hostname}")

    def ssh_private_key_pem(self, index: int = 0) -> str:
        """The OpenSSH private key of a generated ssh_keys[index], for login tests."""
        private = self._ssh_private_key(index)
        if private is None:
            raise ScenarioError(f"ssh_keys[{index}] was given by value: the fabric has no private key")
        return keys.private_key_pem(private, openssh=True)

    def ssh_key_certificate(self, index: int) -> x509.Certificate:
        """The certificate delivering ssh_keys[index] (only for as_certificate keys)."""
        key = self.ssh_keys[index]
        if not key.as_certificate:
            raise ScenarioError(f"ssh_keys[{index}] is not delivered as a certificate")
        label = self.ssh_key_label(index)
        if key.value is None:
            private = keys.rsa_key(self.seed, label)
            return keys.self_signed_cert(private, label, self.seed)
        public = serialization.load_ssh_public_key(key.value.strip().encode())
        if not isinstance(public, rsa.RSAPublicKey):
            raise ScenarioError(f"ssh_keys[{index}]: a key delivered as a certificate must be ssh-rsa")
        return keys.issue_cert(public, label, self.issuer_key(), "fabric-issuer", self.seed)

    def issuer_key(self) -> rsa.RSAPrivateKey:
        """The fabric's signing key for certificates of public keys it has no private half of."""
        return keys.rsa_key(self.seed, "fabric-issuer")

    def key_pair_label(self, index: int) -> str:
        """The label generated material for key_pairs[index] derives from."""
        return self.key_pairs[index].name or f"key-pair-{index}"

    def key_pair_private_key(self, index: int = 0) -> rsa.RSAPrivateKey:
        """The private key of key_pairs[index]."""
        return keys.rsa_key(self.seed, self.key_pair_label(index))

    def key_pair_private_key_pem(self, index: int = 0) -> str:
        """The private key of key_pairs[index] as PKCS#8 PEM."""
        return keys.private_key_pem(self.key_pair_private_key(index))

    def key_pair_certificate(self, index: int) -> x509.Certificate:
        """The certificate of key_pairs[index]."""
        label = self.key_pair_label(index)
        return keys.self_signed_cert(self.key_pair_private_key(index), label, self.seed)

    def certificate(self, name: str) -> Delivered:
        """A named certificate from `certificates` (or the implicit "extensions" one), with its key."""
        for entry in self.certificates:
            if entry.name == name:
                return _delivered(entry, self.seed)
        if name == "extensions":
            return _delivered(Certificate(name="extensions"), self.seed)
        raise ScenarioError(f"no certificate named {name!r}")

    def extension_certificate_names(self) -> list[str]:
        """Certificates used for protected settings (delivered with the others)."""
        names: list[str] = []
        for ext in self.extensions:
            if ext.protected_settings is not None or any(c.protected_settings is not None for c in ext.multi_config):
                name = ext.certificate or "extensions"
                if name not in names:
                    names.append(name)
        return names

    def delivered(self) -> list[Delivered]:
        """Everything the certificates document carries, in a stable order."""
        items: list[Delivered] = []
        for index, key in enumerate(self.ssh_keys):
            if key.as_certificate:
                items.append(Delivered(self.ssh_key_certificate(index)))
        for index in range(len(self.key_pairs)):
            items.append(Delivered(self.key_pair_certificate(index), self.key_pair_private_key(index)))
        names = [entry.name for entry in self.certificates]
        names += [n for n in self.extension_certificate_names() if n not in names]
        items += [self.certificate(name) for name in names]
        return items

    def thumbprints(self) -> list[str]:
        """Thumbprints of the delivered certificates, in delivery order."""
        return [keys.thumbprint(item.cert) for item in self.delivered()]

    def package_path(self, ext: Extension) -> Path | None:
        """The extension's package (dir or zip) as an absolute path, or None for the no-op handler."""
        if ext.package is None:
            return None
        path = Path(ext.package)
        return path if path.is_absolute() else Path(self.base_dir or ".") / path

    def agent_package_path(self, agent: AgentVersion) -> Path:
        """An agent version's zip as an absolute path."""
        path = Path(agent.package)
        return path if path.is_absolute() else Path(self.base_dir or ".") / path

    def copy(self) -> Scenario:
        """A deep copy (incarnation bumps change the copy the server holds)."""
        return copy.deepcopy(self)


def _delivered(entry: Certificate, seed: str) -> Delivered:
    if entry.cert_pem is None:
        private = keys.rsa_key(seed, f"certificate:{entry.name}")
        return Delivered(keys.self_signed_cert(private, entry.name, seed), private)
    cert = x509.load_pem_x509_certificate(entry.cert_pem.encode())
    key = None
    if entry.key_pem is not None:
        loaded = serialization.load_pem_private_key(entry.key_pem.encode(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ScenarioError(f"certificate {entry.name!r}: only RSA private keys can be delivered")
        key = loaded
    return Delivered(cert, key)


# --- loading ---------------------------------------------------------------

_NOT_YAML_KEYS = {"source", "base_dir"}
_CONSTRUCTOR = yaml.SafeLoader("")  # only its constructor is used, on nodes from compose


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _plain(node: yaml.Node) -> Any:
    return _CONSTRUCTOR.construct_object(node, deep=True)


def _kind(node: yaml.Node) -> str:
    return {"ScalarNode": "single value", "SequenceNode": "list", "MappingNode": "mapping"}.get(
        type(node).__name__, "node"
    )


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


class _Loader:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, message: str, key: str, node: yaml.Node) -> ScenarioError:
        return ScenarioError(
            f"key {key!r}: {message}" if key else message, key=key, line=_line(node), source=self.source
        )

    def build(self, hint: Any, node: yaml.Node, key: str) -> Any:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if hint is Any:
            return _plain(node)
        if origin in (types.UnionType, typing.Union):
            if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
                if type(None) in args:
                    return None
            inner = [a for a in args if a is not type(None)]
            return self.build(inner[0], node, key)
        if origin is Literal:
            value = self.scalar(node, key)
            if value not in args:
                choices = ", ".join(str(a) for a in args)
                raise self.error(f"expected one of {choices}, got {value!r}", key, node)
            return value
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                raise self.error(f"expected a list, got {_describe(_plain(node))}", key, node)
            return [self.build(args[0], item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                raise self.error(f"expected a mapping, got {_describe(_plain(node))}", key, node)
            return _plain(node)
        if dataclasses.is_dataclass(hint):
            return self.dataclass(typing.cast(type, hint), node, key)
        return self.typed_scalar(hint, node, key)

    def scalar(self, node: yaml.Node, key: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error("expected a single value", key, node)
        return str(node.value)

    def typed_scalar(self, hint: Any, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(f"expected a {hint.__name__}, got a {_kind(node)}", key, node)
        if hint is str:
            # The text as written: "version: 1.10" stays "1.10", not the float 1.1.
            if node.tag == "tag:yaml.org,2002:null":
                raise self.error("expected a str, got nothing", key, node)
            return str(node.value)
        value = _plain(node)
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if hint is bool and not isinstance(value, bool):
            raise self.error(f"expected true or false, got {node.value!r}", key, node)
        if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.error(f"expected an integer, got {node.value!r}", key, node)
        if hint is float and not isinstance(value, float):
            raise self.error(f"expected a number, got {node.value!r}", key, node)
        return value

    def dataclass(self, cls: type, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            what = f"{key!r}" if key else "the scenario"
            raise ScenarioError(
                f"{what} must be a mapping of keys, got a {_kind(node)}",
                key=key, line=_line(node), source=self.source,
            )
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _NOT_YAML_KEYS}
        values: dict[str, Any] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value)
            full = f"{key}.{name}" if key else name
            if name not in fields:
                known = ", ".join(sorted(fields))
                raise self.error(f"unknown key (known keys: {known})", full, key_node)
            if name in values:
                raise self.error("given twice", full, key_node)
            values[name] = self.build(hints[name], value_node, full)
        for name, f in fields.items():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and name not in values:
                full = f"{key}.{name}" if key else name
                raise self.error("missing (required)", full, node)
        return cls(**values)


def parse_scenario(text: str, source: str = "<scenario>", base_dir: str = "") -> Scenario:
    """Build a Scenario from YAML text; raise ScenarioError naming key and line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ScenarioError(
            f"YAML syntax error: {error.problem or error}", line=line, source=source
        ) from error
    if root is None:
        raise ScenarioError("empty scenario: at least 'username' is required", key="username", source=source)
    scenario: Scenario = _Loader(source).dataclass(Scenario, root, "")
    scenario.source = source
    scenario.base_dir = base_dir
    _check(scenario, root, source)
    return scenario


def _check(scenario: Scenario, root: yaml.Node, source: str) -> None:
    """Cross-field rules that the types alone cannot say."""

    def fail(message: str, key: str) -> ScenarioError:
        return ScenarioError(f"key {key!r}: {message}", key=key, line=_find_line(root, key), source=source)

    if not scenario.username.strip():
        raise fail("must not be empty", "username")
    names = [c.name for c in scenario.certificates]
    for i, ext in enumerate(scenario.extensions):
        if ext.certificate is not None and ext.certificate not in names and ext.certificate != "extensions":
            raise fail(f"no certificate named {ext.certificate!r} in 'certificates'", f"extensions[{i}].certificate")
    for i, cert in enumerate(scenario.certificates):
        if cert.key_pem is not None and cert.cert_pem is None:
            raise fail("a key_pem needs its cert_pem", f"certificates[{i}].key_pem")
    for i, key in enumerate(scenario.ssh_keys):
        if key.value is not None and not key.value.strip().startswith(("ssh-", "ecdsa-", "sk-")):
            raise fail("expected an OpenSSH public key line (ssh-rsa AAAA... comment)", f"ssh_keys[{i}].value")
        if key.as_certificate and key.value is not None and not key.value.strip().startswith("ssh-rsa"):
            raise fail("a key delivered as a certificate must be ssh-rsa", f"ssh_keys[{i}].value")
    for i, fault in enumerate(scenario.faults):
        if fault.route not in ROUTES:
            raise fail(f"unknown route {fault.route!r} (routes: {', '.join(ROUTES)})", f"faults[{i}].route")
    for i, step in enumerate(scenario.timeline):
        if (step.after_seconds is None) == (step.after_status_uploads is None):
            raise fail("give exactly one of after_seconds and after_status_uploads", f"timeline[{i}]")
        action = step.do.get("action")
        if action not in ACTIONS:
            raise fail(f"unknown action {action!r} (actions: {', '.join(ACTIONS)})", f"timeline[{i}].do")


def _find_line(root: yaml.Node, key: str) -> int | None:
    """The line of a dotted/indexed key in the node tree (best effort, for cross-field errors)."""
    node: yaml.Node = root
    for part in key.replace("]", "").replace("[", ".").split("."):
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == part]
            if not match:
                return _line(node)
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
    return _line(node)


def _json_node(value: Any) -> yaml.Node:
    node = yaml.compose(json.dumps(value), Loader=yaml.SafeLoader)
    assert node is not None  # json.dumps never gives an empty document
    return node


def parse_entry(cls: type[T], value: Any, source: str = "<control>") -> T:
    """A scenario dataclass (Extension, Certificate, Fault, ...) from plain JSON-like data,
    checked as the scenario file's entries are (JSON is YAML); ScenarioError names the key."""
    node = _json_node(value)
    entry: T = _Loader(source).dataclass(cls, node, "")
    return entry


def parse_field(cls: type, name: str, value: Any, source: str = "<control>") -> Any:
    """One field of a scenario dataclass from plain data, typed and checked; ScenarioError otherwise."""
    fields = {f.name for f in dataclasses.fields(cls) if f.name not in _NOT_YAML_KEYS}
    if name not in fields:
        raise ScenarioError(f"key {name!r}: unknown key (known keys: {', '.join(sorted(fields))})",
                            key=name, source=source)
    node = _json_node(value)
    return _Loader(source).build(typing.get_type_hints(cls)[name], node, name)


def load_scenario(path: str | Path) -> Scenario:
    """Load a scenario file; relative extension packages resolve against its directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ScenarioError(f"cannot read scenario: {error.strerror}", source=str(path)) from error
    return parse_scenario(text, source=str(path), base_dir=str(path.resolve().parent))


def default_scenario_path() -> Path:
    """The bundled demo scenario (fabric/scenarios/default.yaml)."""
    return Path(str(importlib.resources.files("fabric") / "scenarios" / "default.yaml"))


def default_scenario() -> Scenario:
    """The bundled demo scenario, loaded."""
    return load_scenario(default_scenario_path())


# Routes faults can name: the WireServer, HostGAPlugin, IMDS and storage calls.
ROUTES = (
    "versions", "goalstate", "hostingenv", "sharedconfig", "extensionsconfig", "fullconfig",
    "certificates", "remoteaccess", "health", "roleproperties", "telemetry", "healthservice",
    "hgap.versions", "hgap.health", "artifact", "status", "vmagentlog", "vmsettings",
    "imds", "storage",
)

# Control operations (fabric.control): the HTTP control channel, Fabric.control() and timelines.
ACTIONS = (
    "new-incarnation", "add-certificate", "remove-certificate", "set-extension", "remove-extension",
    "set-hostname", "vm-settings", "fast-track", "hostplugin", "fault", "state", "set-agent-family",
    "set-goal-state",
)
