"""The fabric: WireServer, HostGAPlugin (with blob storage) and IMDS over real HTTP.

Three stdlib ThreadingHTTPServers bound to one address (127.0.0.1 by default,
ports picked by the OS unless given). Every request goes through one path:
resolve its route, record it, apply an armed fault, answer. The goal state
is a snapshot rebuilt on every incarnation, so all documents of one
incarnation agree, and sub-documents of an older one answer 410 Gone.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fabric import documents, status_blob
from fabric.certs import (
    CertificateError,
    Delivered,
    build_pkcs12,
    encrypt_settings,
    envelope_pkcs12,
    transport_cert_from_header,
)
from fabric.control import ControlServer, Timeline, parse_address, perform
from fabric.faults import Faults
from fabric.keys import thumbprint
from fabric.packages import package_bytes
from fabric.record import Record
from fabric.scenario import (
    AgentFamily,
    AgentVersion,
    Certificate,
    Extension,
    ExtensionConfig,
    Fault,
    Scenario,
    ScenarioError,
    default_scenario,
    load_scenario,
    parse_field,
)

log = logging.getLogger("fabric")

TELEMETRY_LIMIT = 64512  # bytes a telemetry request may carry (PLATFORM.md section 2)
XML = "text/xml; charset=utf-8"
JSON = "application/json; charset=utf-8"

# Fixture file names used by replay mode, by route.
REPLAY_FILES = {
    "versions": "version_info.xml",
    "goalstate": "goal_state.xml",
    "hostingenv": "hosting_env.xml",
    "sharedconfig": "shared_config.xml",
    "extensionsconfig": "ext_conf.xml",
    "certificates": "certs.xml",
}


@dataclass
class Request:
    """One HTTP request as the routes see it."""

    server: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw_path: str

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        return self.headers.get(name.lower())


@dataclass
class Response:
    """What a route answers."""

    status: int
    body: bytes = b""
    content_type: str = XML
    headers: dict[str, str] = field(default_factory=dict)
    truncated: bool = False  # send half the body, then close (Content-Length says all of it)


def _text(status: int, text: str, content_type: str = XML) -> Response:
    return Response(status, text.encode("utf-8"), content_type)


def _error(status: int, message: str) -> Response:
    return _text(status, f"<Error><Code>{status}</Code><Message>{message}</Message></Error>\n")


@dataclass
class GoalState:
    """Every document of one incarnation, rendered once."""

    incarnation: int
    documents: dict[str, str]
    delivered: list[Delivered]
    vm_settings: bytes | None = None
    etag: str = ""
    scenario: Scenario | None = None
    created_ticks: int = 0  # extensions goal state creation time (.NET ticks) of the newest one served

    @cached_property
    def pfx(self) -> bytes:
        """The PKCS#12 of the delivered certificates, built once: its key derivations
        (5 x 2000 SHA-1 rounds in Python) would otherwise delay every Certificates answer."""
        return build_pkcs12(self.delivered)


def _typed_field(name: str, value: Any) -> Any:
    if isinstance(value, list) and value and all(isinstance(v, ExtensionConfig) for v in value):
        return value
    try:
        return parse_field(Extension, name, value)
    except ScenarioError as error:
        raise ValueError(f"extension field {error}".replace("<control>:1: ", "")) from error


def _delivered_or_error(entry: Certificate, scenario: Scenario) -> None:
    probe = scenario.copy()
    probe.certificates.append(entry)
    try:
        probe.certificate(entry.name)
    except (ScenarioError, ValueError) as error:
        raise ValueError(f"certificate {entry.name!r}: {error}") from error


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], name: str, fabric: Fabric) -> None:
        self.name = name
        self.fabric = fabric
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in separate writes: without this, Nagle holds the body until
    # the client's delayed ACK of the head, as no real server makes an agent wait.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.server.name, format % args)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        split = urlsplit(self.path)
        request = Request(
            server=self.server.name,
            method=self.command,
            path=split.path,
            query={k.lower(): v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._read_body(),
            raw_path=self.path,
        )
        response = self.server.fabric.handle(request, list(self.headers.items()))
        if response is None:  # a dropped connection: no answer at all
            self.close_connection = True
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body[:len(response.body) // 2] if response.truncated
                             else response.body)
        if response.truncated:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class Fabric:
    """The platform side for one VM: start it, point the agent at it, read its record.

    >>> with Fabric(load_scenario("scenario.yaml")) as fabric:
    ...     run_agent(endpoint=fabric.wire_url)
    ...     assert fabric.record.wait_for_health("Ready")
    """

    def __init__(
        self,
        scenario: Scenario | str | Path | None = None,
        *,
        bind: str = "127.0.0.1",
        wire_port: int = 0,
        hostplugin_port: int = 0,
        imds_port: int = 0,
        imds_bind: str | None = None,
        record_path: str | Path | None = None,
        replay_dir: str | Path | None = None,
        replay_files: dict[str, str] | None = None,
        control: str | None = None,
        control_remote: bool = False,
    ) -> None:
        if scenario is None and replay_dir is None:
            scenario = default_scenario()
        if isinstance(scenario, (str, Path)):
            scenario = load_scenario(scenario)
        self.scenario: Scenario | None = scenario.copy() if scenario is not None else None
        self.bind = bind
        self.imds_bind = imds_bind or bind
        self._ports = {"wire": wire_port, "hostplugin": hostplugin_port, "imds": imds_port}
        self.record = Record()
        self.record_path = Path(record_path) if record_path is not None else None
        self.faults = Faults()
        # The control channel: "ADDR:PORT" or "PORT"; loopback only unless control_remote.
        self._control_address = parse_address(control, control_remote) if control is not None else None
        self._control: ControlServer | None = None
        self._replay_dir = Path(replay_dir) if replay_dir is not None else None
        self._replay_files = {**REPLAY_FILES, **(replay_files or {})}
        self._lock = threading.RLock()
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []
        self._blobs: dict[str, bytearray] = {}
        self._extensions: dict[tuple[str, str], Extension] = {}
        self._agents: dict[str, Path] = {}  # agent version -> its zip, every one ever offered
        self._goal_state: GoalState | None = None
        self._previous_goal_state: GoalState | None = None
        self.incarnation = self.scenario.incarnation if self.scenario else 1
        # Counts published extensions goal states (incarnations and FastTrack changes):
        # their creation time, so that the newest always has the latest time.
        self._generation = self.incarnation
        self.vm_settings_enabled = self.scenario.vm_settings if self.scenario else True
        self._hostplugin_down: tuple[int | None] | None = None  # (status or None = drop) while gone
        self._timeline = Timeline(self)
        for fault in self.scenario.faults if self.scenario else []:
            self.faults.add(fault)

    # --- life cycle -----------------------------------------------------------------

    def start(self) -> Fabric:
        """Bind the three servers and build the first goal state; returns self."""
        if self._servers:
            return self
        try:
            for name in ("wire", "hostplugin", "imds"):
                address = self.imds_bind if name == "imds" else self.bind
                server = _Server((address, self._ports[name]), name, self)
                self._servers[name] = server
                self._ports[name] = server.server_address[1]
            if self._control_address is not None:
                self._control = ControlServer(self._control_address, self)
        except OSError:
            self._close_servers()
            raise
        with self._lock:
            self._goal_state = self._build_goal_state()
            self._record_published("start")
        for server in self._servers.values():
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.1},
                name=f"fabric-{server.name}", daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        if self._control is not None:
            self._control.start()
        self._timeline.start(self.scenario.timeline if self.scenario else [])
        return self

    def stop(self) -> None:
        """Stop serving and write the record (when a record path was given)."""
        self._timeline.stop()
        if self._control is not None:
            self._control.stop()
            self._control = None
        for server in self._servers.values():
            server.shutdown()
        for thread in self._threads:
            thread.join(timeout=5)
        self._close_servers()
        self._threads.clear()
        self.write_record()

    def _close_servers(self) -> None:
        for server in self._servers.values():
            server.server_close()
        self._servers.clear()

    def write_record(self, path: str | Path | None = None) -> None:
        """Dump the record as JSON now (to path, or the record path given at construction)."""
        target = Path(path) if path is not None else self.record_path
        if target is not None:
            self.record.dump(target)

    def __enter__(self) -> Fabric:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- where it is ---------------------------------------------------------------------

    def _url(self, name: str) -> str:
        host = self.imds_bind if name == "imds" else self.bind
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._ports[name]}"

    @property
    def wire_url(self) -> str:
        """http://address:port of the WireServer."""
        return self._url("wire")

    @property
    def hostplugin_url(self) -> str:
        """http://address:port of the HostGAPlugin (and the fabric's blob storage)."""
        return self._url("hostplugin")

    @property
    def imds_url(self) -> str:
        """http://address:port of IMDS (GET /metadata/instance?api-version=...)."""
        return self._url("imds")

    @property
    def control_url(self) -> str | None:
        """http://address:port of the control channel (POST /control), when one was asked for."""
        return self._control.url if self._control is not None else None

    @property
    def ports(self) -> dict[str, int]:
        """The bound ports by server name: wire, hostplugin, imds."""
        return dict(self._ports)

    @property
    def urls(self) -> documents.Urls:
        """The URLs documents point to."""
        return documents.Urls(self.wire_url, self.hostplugin_url, self.imds_url)

    # --- goal state -------------------------------------------------------------------------

    @property
    def goal_state(self) -> GoalState:
        """The current goal state snapshot."""
        with self._lock:
            if self._goal_state is None:
                self._goal_state = self._build_goal_state()
            return self._goal_state

    def _build_goal_state(self) -> GoalState:
        if self._replay_dir is not None:
            return self._replay_goal_state()
        assert self.scenario is not None
        scenario, urls, incarnation = self.scenario, self.urls, self.incarnation
        self._register_packages(scenario)
        protected = self._protected(scenario)
        created = documents.ticks(self._generation)
        delivered = scenario.delivered()
        docs = {
            "versions": documents.versions_xml(),
            "goalstate": documents.goal_state_xml(scenario, incarnation, urls, bool(delivered)),
            "hostingenv": documents.hosting_env_xml(scenario, incarnation),
            "sharedconfig": documents.shared_config_xml(scenario, incarnation),
            "extensionsconfig": documents.extensions_config_xml(scenario, incarnation, urls, protected, created),
            "fullconfig": f'<FullConfig goalStateIncarnation="{incarnation}" />\n',
        }
        settings, etag = self._render_vm_settings(scenario, protected, created)
        return GoalState(incarnation, docs, delivered, settings, etag, scenario.copy(), created)

    def _render_vm_settings(
        self, scenario: Scenario, protected: dict[str, tuple[str, str]], created: int
    ) -> tuple[bytes, str]:
        document = documents.vm_settings(scenario, self.incarnation, self.urls, protected, created)
        settings = json.dumps(document, indent=2).encode()
        return settings, str(int.from_bytes(hashlib.sha256(settings).digest()[:8], "big"))

    def _register_packages(self, scenario: Scenario) -> None:
        # Every version ever published stays in the manifests and storage, as on the platform.
        for ext in scenario.extensions:
            self._extensions[(ext.name, ext.version)] = copy.deepcopy(ext)
        for agent in scenario.ga_family.versions:
            self._agents[agent.version] = scenario.agent_package_path(agent)

    @staticmethod
    def _protected(scenario: Scenario) -> dict[str, tuple[str, str]]:
        """Encrypted protected settings by documents.protected_key: (thumbprint, CMS base64)."""
        protected: dict[str, tuple[str, str]] = {}
        for ext in scenario.extensions:
            cert = None
            entries = [(ext.name, ext.protected_settings)] if not ext.multi_config else [
                (documents.protected_key(ext, config), config.protected_settings) for config in ext.multi_config]
            for key, value in entries:
                if value is not None:
                    cert = cert or scenario.certificate(ext.certificate or "extensions").cert
                    protected[key] = (thumbprint(cert), encrypt_settings(json.dumps(value).encode(), cert))
        return protected

    def _replay_goal_state(self) -> GoalState:
        assert self._replay_dir is not None
        docs = {}
        for route, name in self._replay_files.items():
            path = self._replay_dir / name
            if path.is_file():
                docs[route] = documents.rewrite_platform_urls(path.read_text(encoding="utf-8"), self.urls)
        incarnation = self.incarnation
        text = docs.get("goalstate", "")
        if "<Incarnation>" in text:
            incarnation = int(text.split("<Incarnation>", 1)[1].split("<", 1)[0])
            self.incarnation = incarnation
        vm_settings = docs.pop("vmsettings", None)
        etag = hashlib.sha256((vm_settings or "").encode()).hexdigest()[:16]
        return GoalState(incarnation, docs, [], vm_settings.encode() if vm_settings else None, etag,
                         created_ticks=documents.ticks(self._generation))

    def goal_state_thumbprints(self) -> list[str]:
        """Thumbprints the current certificates document delivers."""
        return [thumbprint(d.cert) for d in self.goal_state.delivered]

    def replayed_document(self, route: str) -> str | None:
        """What replay mode serves for route (the fixture with rewritten addresses)."""
        return self.goal_state.documents.get(route)

    def bump_incarnation(
        self,
        *,
        extensions: dict[str, dict[str, Any]] | None = None,
        add_certificates: Iterable[str | Certificate] = (),
        change: Callable[[Scenario], None] | None = None,
    ) -> int:
        """Publish a new goal state; returns its incarnation.

        extensions: name -> Extension fields to change (a new name adds an
        extension); when settings change and seq_no is not given, seq_no goes up
        by one, as the platform does. add_certificates: names of certificates to
        generate (or Certificate entries) delivered from now on. change: any
        other edit of the scenario. Sub-documents of the old incarnation now
        answer 410 Gone.
        """
        with self._lock:
            if self.scenario is not None:
                scenario = self.scenario
                for name, updates in (extensions or {}).items():
                    existing = [e for e in scenario.extensions if e.name == name]
                    if not existing:
                        scenario.extensions.append(Extension(name=name, **updates))
                        continue
                    ext = existing[0]
                    for key, value in updates.items():
                        if not hasattr(ext, key):
                            raise ValueError(f"extension has no field {key!r}")
                        setattr(ext, key, value)
                    touched = {"public_settings", "protected_settings"} & set(updates)
                    if touched and "seq_no" not in updates:
                        ext.seq_no += 1
                for cert in add_certificates:
                    scenario.certificates.append(Certificate(name=cert) if isinstance(cert, str) else cert)
                if change is not None:
                    change(scenario)
            self.incarnation += 1
            self._generation += 1
            self._previous_goal_state = self._goal_state
            self._goal_state = self._build_goal_state()
            if self._replay_dir is not None:
                # A replayed goal state keeps its fixture text; only the number moves.
                self._goal_state.incarnation = self.incarnation
            self._record_published("incarnation")
            return self.incarnation

    def inject(
        self,
        route: str,
        status: int | None = None,
        *,
        count: int = 1,
        skip: int = 0,
        delay: float = 0.0,
        drop: bool = False,
        bump_incarnation: bool = False,
        body: str | None = None,
        retry_after: int | None = None,
        truncate: bool = False,
        stale: bool = False,
    ) -> Fault:
        """Arm a fault on a route (scenario.ROUTES): the next `count` calls after `skip` fail."""
        return self.faults.add(Fault(route=route, status=status, count=count, skip=skip, delay=delay,
                                     drop=drop, bump_incarnation=bump_incarnation, body=body,
                                     retry_after=retry_after, truncate=truncate, stale=stale))

    # --- control: what the platform publishes while the agent runs ------------------------

    def new_incarnation(self) -> int:
        """Publish a new goal state with the same content; returns its incarnation."""
        return self.bump_incarnation()

    def add_certificate(self, name: str, cert_pem: str | None = None, key_pem: str | None = None) -> int:
        """Deliver one more certificate (generated from the seed unless given) in a new incarnation."""
        entry = Certificate(name=name, cert_pem=cert_pem, key_pem=key_pem)
        with self._lock:
            scenario = self._editable()
            if any(c.name == name for c in scenario.certificates):
                raise ValueError(f"certificate {name!r} is already delivered")
            _delivered_or_error(entry, scenario)
            return self.bump_incarnation(add_certificates=[entry])

    def remove_certificate(self, name: str) -> int:
        """Stop delivering a certificate of `certificates`, in a new incarnation."""
        with self._lock:
            scenario = self._editable()
            if not any(c.name == name for c in scenario.certificates):
                known = ", ".join(c.name for c in scenario.certificates) or "none"
                raise ValueError(f"no certificate named {name!r} (delivered: {known})")
            users = [e.name for e in scenario.extensions if e.certificate == name]
            if users:
                raise ValueError(f"certificate {name!r} encrypts the protected settings of {', '.join(users)}")
            scenario.certificates = [c for c in scenario.certificates if c.name != name]
            return self.bump_incarnation()

    def set_extension(self, name: str, *, fast_track: bool = False, **fields: Any) -> int | str:
        """Add an extension handler or change its fields, then publish it.

        fields are Extension's (version, state, seq_no, public_settings, protected_settings,
        dependency_level, depends_on, multi_config, package, certificate), as plain data or typed.
        When settings change without seq_no, seq_no goes up by one. Published in a new
        incarnation (returns it), or with fast_track=True only through vmSettings, with a new
        ETag and a newer creation time (returns the ETag).
        """
        typed = {key: _typed_field(key, value) for key, value in fields.items()}
        with self._lock:
            scenario = self._editable()
            existing = [e for e in scenario.extensions if e.name == name]
            if existing:
                ext = existing[0]
                before = copy.deepcopy(ext)
                for key, value in typed.items():
                    setattr(ext, key, value)
                touched = {"public_settings", "protected_settings"} & set(typed)
                if touched and "seq_no" not in typed:
                    ext.seq_no += 1
            else:
                before = None
                ext = Extension(name=name, **typed)
                scenario.extensions.append(ext)
            try:
                self._check_certificates(scenario, fast_track)
            except ValueError:
                if before is None:
                    scenario.extensions.remove(ext)
                else:
                    scenario.extensions[scenario.extensions.index(ext)] = before
                raise
            return self.publish_vm_settings() if fast_track else self.bump_incarnation()

    def remove_extension(self, name: str, *, fast_track: bool = False) -> int | str:
        """Remove a handler from the goal state (the agent uninstalls it); see set_extension."""
        with self._lock:
            scenario = self._editable()
            if not any(e.name == name for e in scenario.extensions):
                raise ValueError(f"no extension named {name!r}")
            scenario.extensions = [e for e in scenario.extensions if e.name != name]
            return self.publish_vm_settings() if fast_track else self.bump_incarnation()

    def set_hostname(self, hostname: str) -> int:
        """Rename the VM in the platform's documents (hosting environment, IMDS, vmSettings)."""
        if not hostname or any(c.isspace() for c in hostname):
            raise ValueError(f"not a hostname: {hostname!r}")
        with self._lock:
            self._editable().hostname = hostname
            return self.bump_incarnation()

    def set_agent_family(self, **fields: Any) -> int:
        """Change the guest agent family (AgentFamily's fields: name, versions (each
        {version, package}: a zip), version, is_version_from_rsm,
        is_vm_enabled_for_rsm_upgrades) and publish it in a new incarnation."""
        typed: dict[str, Any] = {}
        for key, value in fields.items():
            if key == "versions" and all(isinstance(v, AgentVersion) for v in value):
                typed[key] = list(value)
                continue
            try:
                typed[key] = parse_field(AgentFamily, key, value)
            except ScenarioError as error:
                raise ValueError(f"agent family field {error}".replace("<control>:1: ", "")) from error
        with self._lock:
            family = self._editable().ga_family
            for key, value in typed.items():
                setattr(family, key, value)
            return self.bump_incarnation()

    def set_goal_state(self, *, fast_track: bool = False, **fields: Any) -> int | str:
        """Change `on_hold` (the InVMArtifactsProfileBlob's onHold; None: no profile) or
        `required_features` (besides MultipleExtensionsPerHandler) and publish them, in a new
        incarnation, or with fast_track=True only through vmSettings."""
        typed = {}
        for key, value in fields.items():
            try:
                typed[key] = parse_field(Scenario, key, value)
            except ScenarioError as error:
                raise ValueError(f"goal state field {error}".replace("<control>:1: ", "")) from error
        with self._lock:
            scenario = self._editable()
            for key, value in typed.items():
                setattr(scenario, key, value)
            return self.publish_vm_settings() if fast_track else self.bump_incarnation()

    def set_vm_settings(self, enabled: bool) -> None:
        """FastTrack on (GET /vmSettings answers) or off (404: this HostGAPlugin does not support it)."""
        with self._lock:
            self.vm_settings_enabled = enabled
            self.record.add_published({"what": "vm-settings", "enabled": enabled, **self._published_ids()})

    def publish_vm_settings(self) -> str:
        """A new FastTrack extensions goal state from the current extensions: vmSettings gets a new
        ETag and a newer creation time; the WireServer's documents stay as they are. Returns the ETag."""
        with self._lock:
            scenario = self._editable()
            self._check_certificates(scenario, fast_track=True)
            self._register_packages(scenario)
            self._generation += 1
            created = documents.ticks(self._generation)
            settings, etag = self._render_vm_settings(scenario, self._protected(scenario), created)
            self._goal_state = dataclasses.replace(self.goal_state, vm_settings=settings, etag=etag,
                                                   created_ticks=created)
            self._record_published("fast-track")
            return etag

    def set_hostplugin(self, available: bool, *, status: int | None = None) -> None:
        """Make the HostGAPlugin disappear (its calls get no answer, or `status`) or come back.
        The fabric's storage on the same port keeps answering: the direct status upload works."""
        with self._lock:
            self._hostplugin_down = None if available else (status,)
            self.record.add_published({"what": "hostplugin", "available": available, "status": status,
                                       **self._published_ids()})

    @property
    def hostplugin_available(self) -> bool:
        """Whether the HostGAPlugin answers (see set_hostplugin)."""
        return self._hostplugin_down is None

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Perform one control request ({"action": ..., ...}, fabric/README.md); returns the state."""
        return perform(self, request)

    def state(self) -> dict[str, Any]:
        """What the fabric serves now: incarnation, vmSettings ETag, extensions, certificates, ..."""
        with self._lock:
            goal_state = self.goal_state
            scenario = self.scenario
            return {
                "incarnation": self.incarnation,
                "etag": goal_state.etag if goal_state.vm_settings is not None else None,
                "created_ticks": goal_state.created_ticks,
                "vm_settings": self.vm_settings_enabled,
                "hostplugin": self.hostplugin_available,
                "hostname": scenario.hostname if scenario else None,
                "extensions": [dataclasses.asdict(e) for e in scenario.extensions] if scenario else [],
                "certificates": [c.name for c in scenario.certificates] if scenario else [],
                "thumbprints": [thumbprint(d.cert) for d in goal_state.delivered],
                "status_blobs": self.record.status_blob_count(),
                "urls": {"wire": self.wire_url, "hostplugin": self.hostplugin_url, "imds": self.imds_url},
            }

    def _editable(self) -> Scenario:
        if self.scenario is None:
            raise ValueError("a replayed goal state cannot be edited; only new-incarnation works in replay mode")
        return self.scenario

    def _check_certificates(self, scenario: Scenario, fast_track: bool) -> None:
        for ext in scenario.extensions:
            if ext.certificate is not None and ext.certificate != "extensions" and \
                    not any(c.name == ext.certificate for c in scenario.certificates):
                raise ValueError(f"extension {ext.name}: no certificate named {ext.certificate!r}")
        if fast_track:
            # FastTrack cannot deliver certificates: those it encrypts to must be out already.
            delivered = {thumbprint(d.cert) for d in self.goal_state.delivered}
            for name in scenario.extension_certificate_names():
                if thumbprint(scenario.certificate(name).cert) not in delivered:
                    raise ValueError(f"certificate {name!r} is not delivered yet: publish it in a new "
                                     "incarnation first (FastTrack carries no certificates)")

    def _published_ids(self) -> dict[str, Any]:
        goal_state = self._goal_state
        return {"incarnation": self.incarnation, "etag": goal_state.etag if goal_state else None,
                "created_ticks": goal_state.created_ticks if goal_state else None}

    def _record_published(self, what: str) -> None:
        self.record.add_published({"what": what, **self._published_ids()})

    # --- request path ------------------------------------------------------------------------

    def handle(self, request: Request, raw_headers: list[tuple[str, str]]) -> Response | None:
        """Route, record, apply faults, answer. None means: drop the connection."""
        route = self._route_of(request)
        fault = self.faults.take(route) if route != "unknown" else None
        response: Response | None
        gone = self._hostplugin_down
        if gone is not None and request.server == "hostplugin" and route != "storage":
            # The HostGAPlugin is away; the storage on its port is not the HostGAPlugin.
            response = None if gone[0] is None else _error(gone[0], "the HostGAPlugin is unavailable")
            self.record.add_request(request.server, route, request.method, request.raw_path, raw_headers,
                                    request.body, response.status if response is not None else None)
            return response
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.bump_incarnation:
                self.bump_incarnation()
        if fault is not None and fault.drop:
            response = None
        elif fault is not None and fault.status is not None:
            response = _text(fault.status, fault.body if fault.body is not None else f"fabric: injected {fault.status}\n")
            if fault.retry_after is not None:
                response.headers["Retry-After"] = str(fault.retry_after)
        elif fault is not None and fault.stale and route == "goalstate" and self._previous_goal_state:
            # An incarnation going backwards: the platform serves the goal state before the last.
            response = _text(200, self._previous_goal_state.documents["goalstate"])
        else:
            try:
                response = self._answer(route, request)
            except Exception as error:  # a bug in the fabric must not look like a dropped connection
                log.exception("fabric: %s %s failed", request.method, request.raw_path)
                response = _error(500, f"fabric error: {type(error).__name__}: {error}")
            if fault is not None and fault.truncate:
                response.truncated = True
        self.record.add_request(
            request.server, route, request.method, request.raw_path, raw_headers, request.body,
            response.status if response is not None else None,
        )
        return response

    def _route_of(self, request: Request) -> str:
        if request.path.startswith("/metadata/") and request.server in ("wire", "imds"):
            # IMDS answers on the WireServer address too: agents fall back to it there.
            return "imds"
        if request.server == "wire":
            if request.path.rstrip("/").lower() == "/healthservice":
                return "healthservice"
            comp = request.query.get("comp", "").lower()
            if comp == "config":
                kinds = {"hostingenvironmentconfig": "hostingenv", "sharedconfig": "sharedconfig",
                         "extensionsconfig": "extensionsconfig", "fullconfig": "fullconfig"}
                return kinds.get(request.query.get("type", "").lower(), "unknown")
            comps = {"versions": "versions", "goalstate": "goalstate", "certificates": "certificates",
                     "remoteaccess": "remoteaccess", "health": "health",
                     "roleproperties": "roleproperties", "telemetrydata": "telemetry"}
            return comps.get(comp, "unknown")
        if request.server == "hostplugin":
            if request.path.startswith("/storage/"):
                return "storage"
            paths = {"/versions": "hgap.versions", "/health": "hgap.health",
                     "/extensionartifact": "artifact", "/status": "status",
                     "/vmagentlog": "vmagentlog", "/vmsettings": "vmsettings"}
            return paths.get(request.path.rstrip("/").lower(), "unknown")
        return "unknown"

    def _answer(self, route: str, request: Request) -> Response:
        if route == "unknown":
            return _error(404, f"no such resource on the {request.server}: {request.raw_path}")
        if route == "imds":
            return self._imds(request)
        if request.server == "wire":
            return self._wire(route, request)
        if request.server == "hostplugin":
            return self._hostplugin(route, request)
        return self._imds(request)

    # --- WireServer ---------------------------------------------------------------------------

    def _wire(self, route: str, request: Request) -> Response:
        posts = {"health", "roleproperties", "telemetry", "healthservice"}
        expected = "POST" if route in posts else "GET"
        if request.method != expected:
            return _error(405, f"{route} takes {expected}")
        # The published agent asks for versions and posts HealthService observations
        # without any x-ms-* header; every other call has them.
        if route not in ("versions", "healthservice") and request.header("x-ms-version") is None:
            return _error(400, "missing header x-ms-version")
        goal_state = self.goal_state
        if route == "versions":
            return _text(200, goal_state.documents["versions"] if self._replay_dir is None
                         else goal_state.documents.get("versions", documents.versions_xml()))
        if route == "goalstate":
            return _text(200, goal_state.documents["goalstate"])
        if route in ("hostingenv", "sharedconfig", "extensionsconfig", "fullconfig", "certificates", "remoteaccess"):
            asked = request.query.get("incarnation")
            if asked is not None and asked != str(goal_state.incarnation):
                return _error(410, f"incarnation {asked} is stale; current is {goal_state.incarnation}")
            if route == "certificates":
                return self._certificates(request, goal_state)
            text = goal_state.documents.get(route)
            return _text(200, text) if text is not None else _error(404, f"no {route} document")
        if route == "health":
            try:
                report = documents.parse_health(request.body)
            except Exception as error:  # defusedxml raises several kinds
                return _error(400, f"health report is not valid XML: {error}")
            self.record.add_health(report)
            self._record_changed()
            return Response(200)
        if route == "roleproperties":
            try:
                properties = documents.parse_role_properties(request.body)
            except Exception as error:
                return _error(400, f"role properties are not valid XML: {error}")
            self.record.add_role_properties(properties)
            self._record_changed()
            return Response(202)
        if route == "healthservice":
            try:
                observations = json.loads(request.body).get("Observations", [])
            except (ValueError, AttributeError) as error:
                return _error(400, f"HealthService body is not JSON: {error}")
            self.record.add_observations(observations)
            return Response(200)
        # telemetry
        self.record.add_telemetry(request.body)
        if len(request.body) > TELEMETRY_LIMIT:
            return _error(413, f"telemetry request of {len(request.body)} bytes is over {TELEMETRY_LIMIT}")
        return Response(200)

    def _certificates(self, request: Request, goal_state: GoalState) -> Response:
        if self._replay_dir is not None:
            text = goal_state.documents.get("certificates")
            return _text(200, text) if text is not None else _error(404, "no certificates document")
        header = request.header("x-ms-guest-agent-public-x509-cert")
        if not header:
            return _error(400, "missing header x-ms-guest-agent-public-x509-cert")
        try:
            transport = transport_cert_from_header(header)
            cipher = request.header("x-ms-cipher-name")
            envelope = envelope_pkcs12(goal_state.pfx, transport, cipher) if goal_state.delivered else None
        except CertificateError as error:
            return _error(400, str(error))
        self.record.add_certificates({
            "incarnation": goal_state.incarnation,
            "thumbprints": [thumbprint(d.cert) for d in goal_state.delivered],
            "cipher": request.header("x-ms-cipher-name"),
            "transport_subject": transport.subject.rfc4514_string(),
        })
        return _text(200, documents.certificates_xml(goal_state.incarnation, envelope))

    # --- HostGAPlugin and storage ---------------------------------------------------------------

    def _hostplugin(self, route: str, request: Request) -> Response:
        if route == "hgap.versions":
            return _text(200, documents.hostplugin_versions_xml())
        if route == "hgap.health":
            return _text(200, "<Health><State>Healthy</State></Health>\n")
        if route == "artifact":
            location = request.header("x-ms-artifact-location")
            if not location:
                return _error(400, "missing header x-ms-artifact-location")
            return self._storage_get(urlsplit(location).path)
        if route == "status":
            if request.method != "PUT":
                return _error(405, "status takes PUT")
            return self._hostplugin_status(request)
        if route == "vmagentlog":
            if request.method != "PUT":
                return _error(405, "vmAgentLog takes PUT")
            self.record.add_log(request.body, {k: v for k, v in request.headers.items() if k.startswith("x-ms-")})
            self._record_changed()
            return Response(200)
        if route == "vmsettings":
            return self._vm_settings(request)
        # storage
        if request.method == "PUT":
            return self._blob_put(request.path, request.query, request.headers, request.body, via="direct")
        if request.method in ("GET", "HEAD"):
            return self._storage_get(request.path)
        return _error(405, "storage takes GET and PUT")

    def _vm_settings(self, request: Request) -> Response:
        goal_state = self.goal_state
        if goal_state.vm_settings is None or not self.vm_settings_enabled:
            return _error(404, "vmSettings is not supported by this HostGAPlugin")
        headers = {"ETag": goal_state.etag, "x-ms-server-version": documents.HOSTGAPLUGIN_VERSION}
        if request.header("if-none-match") == goal_state.etag:
            return Response(304, b"", JSON, headers)
        return Response(200, goal_state.vm_settings, JSON, headers)

    def _storage_get(self, path: str) -> Response:
        prefix = "/storage/"
        if not path.startswith(prefix):
            return _error(404, f"artifact {path} is not in the fabric's storage")
        name = path[len(prefix):]
        with self._lock:
            blob = self._blobs.get(path)
            known = dict(self._extensions)
        if blob is not None:
            return Response(200, bytes(blob), "application/octet-stream")
        urls = self.urls
        family = self.goal_state.scenario.ga_family if self.goal_state.scenario else AgentFamily()
        if name == f"manifests/WALinuxAgent_{family.name}_manifest.xml":
            return _text(200, documents.manifest_xml(
                [(a.version, documents.agent_package_url(urls, a.version)) for a in family.versions]))
        if name == documents.ARTIFACTS_PROFILE and self.scenario is not None \
                and self.scenario.on_hold is not None:
            return Response(200, json.dumps({"onHold": self.scenario.on_hold}).encode(), JSON)
        if name.startswith("agents/WALinuxAgent-") and name.endswith(".zip"):
            package = self._agents.get(name[len("agents/WALinuxAgent-"):-len(".zip")])
            if package is not None:
                return Response(200, package.read_bytes(), "application/zip")
        if name.startswith("manifests/") and name.endswith("_manifest.xml"):
            ext_name = name[len("manifests/"):-len("_manifest.xml")]
            versions = [(v, documents.package_url(urls, e)) for (n, v), e in sorted(known.items()) if n == ext_name]
            if versions:
                return _text(200, documents.manifest_xml(versions))
        if name.startswith("packages/") and name.endswith(".zip") and "__" in name:
            ext_name, version = name[len("packages/"):-len(".zip")].rsplit("__", 1)
            ext = known.get((ext_name, version))
            if ext is not None and self.scenario is not None:
                return Response(200, package_bytes(self.scenario, ext), "application/zip")
        return _error(404, f"no blob {path}")

    def _hostplugin_status(self, request: Request) -> Response:
        try:
            payload = json.loads(request.body)
            uri = payload["requestUri"]
            headers = {h["headerName"].lower(): h["headerValue"] for h in payload.get("headers", [])}
            content = base64.b64decode(payload["content"]) if payload.get("content") is not None else b""
        except (ValueError, KeyError, TypeError) as error:
            return _error(400, f"status request is not the HostGAPlugin's JSON: {error}")
        split = urlsplit(uri)
        query = {k.lower(): v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        response = self._blob_put(split.path, query, headers, content, via="hostplugin")
        # The HostGAPlugin answers 200 for a blob the storage created (201).
        return Response(200) if response.status == 201 else response

    def _blob_put(self, path: str, query: dict[str, str], headers: dict[str, str], body: bytes, via: str) -> Response:
        blob_type = headers.get("x-ms-blob-type")
        with self._lock:
            if query.get("comp") == "page":
                blob = self._blobs.get(path)
                if blob is None:
                    return _error(404, f"page write to blob {path} that was not created")
                byte_range = headers.get("x-ms-range") or headers.get("range") or ""
                try:
                    start, end = (int(x) for x in byte_range.split("=", 1)[1].split("-"))
                except (IndexError, ValueError):
                    return _error(400, f"bad x-ms-range {byte_range!r}")
                if (end + 1 - start) != len(body) or start % 512 or len(body) % 512:
                    return _error(400, f"page range {byte_range} does not match {len(body)} bytes in 512-byte pages")
                if end + 1 > len(blob):
                    return _error(416, f"page range {byte_range} beyond the blob's {len(blob)} bytes")
                blob[start:end + 1] = body
                kind = "PageBlob"
            elif blob_type == "PageBlob":
                size = int(headers.get("x-ms-blob-content-length") or 0)
                if size % 512:
                    return _error(400, f"page blob size {size} is not a multiple of 512")
                self._blobs[path] = bytearray(size)
                return Response(201)
            elif blob_type == "BlockBlob":
                self._blobs[path] = bytearray(body)
                kind = "BlockBlob"
            else:
                return _error(400, "missing header x-ms-blob-type")
            content = bytes(self._blobs[path])
        self._record_status_blob(path, kind, content, via)
        return Response(201)

    def _record_status_blob(self, path: str, kind: str, content: bytes, via: str) -> None:
        text = content.rstrip(b"\x00").decode("utf-8", errors="replace").rstrip()
        try:
            status: Any = json.loads(text)
        except ValueError:
            if kind == "PageBlob":
                return  # pages still arriving
            status = None
        entry: dict[str, Any] = {"via": via, "blob_type": kind, "path": path, "status": status}
        if status is None:
            entry["raw"] = text
            entry["problems"] = ["the status blob is not JSON"]
        else:
            entry["problems"] = status_blob.problems(status)
        for problem in entry["problems"]:
            # Logged and recorded, never refused: the platform takes what it gets.
            log.warning("fabric: status blob %s: %s", path, problem)
        self.record.add_status_blob(entry)
        self._record_changed()

    # --- IMDS ---------------------------------------------------------------------------------

    def _imds(self, request: Request) -> Response:
        # IMDS takes the header's value in any case: waagent 2.7.3 sends "Metadata: True".
        if (request.header("metadata") or "").lower() != "true":
            return _text(400, json.dumps({"error": "Bad request. Required metadata header not specified"}), JSON)
        if "api-version" not in request.query:
            return _text(400, json.dumps({"error": "Bad request. api-version was not specified in the request",
                                          "newest-versions": ["2023-07-01"]}), JSON)
        if self.scenario is None:
            return _text(404, json.dumps({"error": "Not found"}), JSON)
        document: Any = documents.imds_instance(self.scenario)
        parts = [p for p in request.path.split("/") if p][2:]  # below /metadata/instance
        if request.path.rstrip("/").split("/")[:3] != ["", "metadata", "instance"]:
            return _text(404, json.dumps({"error": "Not found"}), JSON)
        for part in parts:
            if not isinstance(document, dict) or part not in document:
                return _text(404, json.dumps({"error": "Not found"}), JSON)
            document = document[part]
        if request.query.get("format") == "text" and isinstance(document, str):
            return _text(200, document, "text/plain; charset=utf-8")
        return _text(200, json.dumps(document), JSON)

    # --- record -------------------------------------------------------------------------------

    def _record_changed(self) -> None:
        # Keep the file current while serving, so a test in another process can read it.
        if self.record_path is not None:
            try:
                self.write_record()
            except OSError:
                log.warning("fabric: cannot write the record to %s", self.record_path)
