"""Changing what the fabric serves while it runs: control requests, their HTTP channel, timelines.

A control request is a small JSON object, {"action": ..., <arguments>}; the same
request comes from `POST /control` on the control channel (`waagent-fabric serve
--control ADDR:PORT`), from `Fabric.control()` in a test, or from a scenario's
`timeline`. Each action is one `Fabric` method; fabric/README.md lists them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from fabric.scenario import ACTIONS, TimelineStep

if TYPE_CHECKING:
    from fabric.server import Fabric

log = logging.getLogger("fabric")


class ControlError(ValueError):
    """A control request that cannot be done; the message says why."""


@dataclass(frozen=True)
class _Action:
    required: tuple[str, ...]
    optional: tuple[str, ...]
    run: Callable[[Fabric, dict[str, Any]], Any]


_EXTENSION_FIELDS = ("version", "state", "seq_no", "public_settings", "protected_settings",
                     "dependency_level", "depends_on", "multi_config", "package", "certificate")
_AGENT_FAMILY_FIELDS = ("name", "versions", "version", "is_version_from_rsm",
                        "is_vm_enabled_for_rsm_upgrades")
_FAULT_FIELDS = ("status", "count", "skip", "delay", "drop", "bump_incarnation", "body",
                 "retry_after", "truncate", "stale")


def _extension_fields(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k in _EXTENSION_FIELDS}


_ACTIONS: dict[str, _Action] = {
    "state": _Action((), (), lambda f, a: None),
    "new-incarnation": _Action((), (), lambda f, a: f.new_incarnation()),
    "add-certificate": _Action(("name",), ("cert_pem", "key_pem"), lambda f, a: f.add_certificate(
        a["name"], a.get("cert_pem"), a.get("key_pem"))),
    "remove-certificate": _Action(("name",), (), lambda f, a: f.remove_certificate(a["name"])),
    "set-extension": _Action(("name",), ("fast_track", *_EXTENSION_FIELDS), lambda f, a: f.set_extension(
        a["name"], fast_track=bool(a.get("fast_track", False)), **_extension_fields(a))),
    "remove-extension": _Action(("name",), ("fast_track",), lambda f, a: f.remove_extension(
        a["name"], fast_track=bool(a.get("fast_track", False)))),
    "set-hostname": _Action(("hostname",), (), lambda f, a: f.set_hostname(a["hostname"])),
    "vm-settings": _Action(("enabled",), (), lambda f, a: f.set_vm_settings(_flag(a, "enabled"))),
    "fast-track": _Action((), (), lambda f, a: f.publish_vm_settings()),
    "hostplugin": _Action(("available",), ("status",), lambda f, a: f.set_hostplugin(
        _flag(a, "available"), status=a.get("status"))),
    "set-goal-state": _Action((), ("on_hold", "required_features", "fast_track"),
                              lambda f, a: f.set_goal_state(
        fast_track=bool(a.get("fast_track", False)),
        **{k: v for k, v in a.items() if k in ("on_hold", "required_features")})),
    "set-agent-family": _Action((), _AGENT_FAMILY_FIELDS, lambda f, a: f.set_agent_family(
        **{k: v for k, v in a.items() if k in _AGENT_FAMILY_FIELDS})),
    "fault": _Action(("route",), _FAULT_FIELDS, lambda f, a: str(f.inject(
        a["route"], **{k: v for k, v in a.items() if k in _FAULT_FIELDS}))),
}
assert set(_ACTIONS) == set(ACTIONS), "scenario.ACTIONS lists the actions for timeline checks"


def _flag(args: dict[str, Any], name: str) -> bool:
    value = args[name]
    if not isinstance(value, bool):
        raise ControlError(f"{name!r} must be true or false, got {value!r}")
    return value


def perform(fabric: Fabric, request: Any) -> dict[str, Any]:
    """Do one control request; returns {"ok": true, "action", "result", "state"}.

    result: the new incarnation (WireServer changes), the new vmSettings ETag (FastTrack
    changes), or null. Raises ControlError for a request it cannot do.
    """
    if not isinstance(request, dict):
        raise ControlError(f"a control request is a JSON object, got {type(request).__name__}")
    args = dict(request)
    action = args.pop("action", None)
    spec = _ACTIONS.get(action) if isinstance(action, str) else None
    if spec is None:
        raise ControlError(f"unknown action {action!r}; actions: {', '.join(_ACTIONS)}")
    missing = [k for k in spec.required if k not in args]
    unknown = [k for k in args if k not in spec.required + spec.optional]
    if missing or unknown:
        allowed = ", ".join(spec.required + spec.optional) or "none"
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unknown {', '.join(unknown)}"] if unknown else [])
        raise ControlError(f"{action}: {'; '.join(parts)} (arguments: {allowed})")
    try:
        result = spec.run(fabric, args)
    except ControlError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        raise ControlError(f"{action}: {error}") from error
    if action != "state":
        log.info("fabric: control %s -> %s", action, result)
    return {"ok": True, "action": action, "result": result, "state": fabric.state()}


# --- the HTTP channel -----------------------------------------------------------------------


def parse_address(text: str, allow_remote: bool = False) -> tuple[str, int]:
    """"ADDR:PORT", "[v6]:PORT" or "PORT" (on 127.0.0.1); a non-loopback address only when allowed."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ControlError(f"control address {text!r}: expected ADDR:PORT or PORT") from None
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise ControlError(f"control address {text!r}: {host!r} is not an IP address") from None
        if not loopback and not allow_remote:
            raise ControlError(f"control address {text!r} is not a loopback address: anyone who reaches "
                               "it can change the goal state (allow it explicitly to bind it anyway)")
    return host, number


class _ControlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ControlServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("control %s", format % args)

    def _send(self, status: int, answer: Any) -> None:
        body = (json.dumps(answer, indent=1) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/control":
            self._send(200, {"ok": True, "action": "state", "result": None, "state": self.server.fabric.state()})
        elif path == "/control/record":
            self._send(200, self.server.fabric.record.to_json())
        else:
            self._send(404, {"ok": False, "error": f"no {path}: GET /control, GET /control/record, POST /control"})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.split("?", 1)[0].rstrip("/") != "/control":
            self._send(404, {"ok": False, "error": f"no {self.path}: POST /control"})
            return
        try:
            answer = perform(self.server.fabric, json.loads(body or b"null"))
        except ValueError as error:  # ControlError, or a body that is not JSON
            self._send(400, {"ok": False, "error": str(error)})
            return
        except Exception as error:  # a bug in the fabric: say so, keep serving
            log.exception("fabric: control request failed")
            self._send(500, {"ok": False, "error": f"{type(error).__name__}: {error}"})
            return
        self._send(200, answer)


class ControlServer(ThreadingHTTPServer):
    """The control channel: JSON over HTTP, served on its own thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fabric: Fabric) -> None:
        self.fabric = fabric
        super().__init__(address, _ControlHandler)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="fabric-control", daemon=True)

    @property
    def url(self) -> str:
        address, port = self.server_address[:2]
        host = address.decode() if isinstance(address, bytes) else str(address)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self._thread.join(timeout=5)
        self.server_close()


def send(url: str, request: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """A control request to a running fabric (its control URL); None asks for the state.
    Raises ControlError with the fabric's message when it refuses."""
    data = json.dumps(request).encode() if request is not None else None
    http = urllib.request.Request(f"{url.rstrip('/')}/control", data=data, method="POST" if data else "GET",
                                  headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(http, timeout=timeout) as response:  # noqa: S310 - our own URL
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("error", str(error))
        except ValueError:
            message = str(error)
        raise ControlError(message) from error
    return answer


# --- timelines ------------------------------------------------------------------------------------


class Timeline:
    """Runs a scenario's timeline steps when their time or status upload count comes."""

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.done: list[tuple[TimelineStep, dict[str, Any] | str]] = []  # step, answer or error

    def start(self, steps: list[TimelineStep]) -> None:
        if not steps or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(list(steps), time.monotonic()),
                                        name="fabric-timeline", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _due(self, step: TimelineStep, started: float) -> bool:
        if step.after_seconds is not None:
            return time.monotonic() - started >= step.after_seconds
        assert step.after_status_uploads is not None
        return self.fabric.record.status_blob_count() >= step.after_status_uploads

    def _run(self, pending: list[TimelineStep], started: float) -> None:
        while pending and not self._stop.wait(0.1):
            for step in [s for s in pending if self._due(s, started)]:
                pending.remove(step)
                try:
                    answer: dict[str, Any] | str = perform(self.fabric, step.do)
                except Exception as error:  # one bad step must not stop the others
                    answer = str(error)
                    log.error("fabric: timeline step %s failed: %s", step.do.get("action"), error)
                self.done.append((step, answer))
