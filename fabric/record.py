"""What the agent did: every request, and the reports decoded from them.

Thread-safe (the servers answer on many threads); queried by tests through
Fabric.record and dumped as JSON for the command line.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _body_text(body: bytes) -> dict[str, str]:
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode()}


class Record:
    """The fabric's log of the agent's calls; lists of plain dicts, JSON-ready."""

    def __init__(self, max_body: int = 1 << 20) -> None:
        self._lock = threading.Condition()
        self._max_body = max_body
        self._data: dict[str, list[dict[str, Any]]] = {
            "requests": [], "health": [], "role_properties": [], "status_blobs": [],
            "logs": [], "telemetry": [], "certificates": [], "observations": [], "published": [],
        }

    def _add(self, kind: str, entry: dict[str, Any]) -> None:
        with self._lock:
            entry.setdefault("time", time.time())
            self._data[kind].append(entry)
            self._lock.notify_all()

    # --- writers (the servers) ---

    def add_request(
        self, server: str, route: str, method: str, path: str,
        headers: list[tuple[str, str]], body: bytes, status: int | None,
    ) -> None:
        """One HTTP request (status None: the connection was dropped on purpose)."""
        entry: dict[str, Any] = {
            "server": server, "route": route, "method": method, "path": path,
            "headers": {k.lower(): v for k, v in headers}, "status": status,
            "body_size": len(body),
        }
        entry.update(_body_text(body[: self._max_body]))
        self._add("requests", entry)

    def add_health(self, report: dict[str, Any]) -> None:
        """A parsed health report (state, substatus, description, incarnation, ids)."""
        self._add("health", report)

    def add_role_properties(self, properties: dict[str, Any]) -> None:
        """Parsed role properties."""
        self._add("role_properties", properties)

    def add_status_blob(self, entry: dict[str, Any]) -> None:
        """A status blob as uploaded (via, blob_type, url, status JSON or raw text)."""
        self._add("status_blobs", entry)

    def add_published(self, entry: dict[str, Any]) -> None:
        """A goal state (or a change of what is served) the fabric published: what, incarnation, etag."""
        self._add("published", entry)

    def add_log(self, body: bytes, headers: dict[str, str]) -> None:
        """An uploaded log archive (PUT /vmAgentLog)."""
        self._add("logs", {"size": len(body), "headers": headers,
                           "content_base64": base64.b64encode(body).decode()})

    def add_telemetry(self, body: bytes) -> None:
        """A telemetry POST body."""
        self._add("telemetry", {"size": len(body), **_body_text(body)})

    def add_observations(self, observations: list[dict[str, Any]]) -> None:
        """HealthService observations (POST /HealthService on the WireServer address)."""
        for observation in observations:
            self._add("observations", dict(observation))

    def add_certificates(self, entry: dict[str, Any]) -> None:
        """A certificates document served (thumbprints, cipher, transport subject)."""
        self._add("certificates", entry)

    # --- readers (tests) ---

    def requests(self, route: str | None = None, server: str | None = None) -> list[dict[str, Any]]:
        """Requests so far, optionally only one route (see scenario.ROUTES) or one server."""
        with self._lock:
            return [copy.deepcopy(r) for r in self._data["requests"]
                    if (route is None or r["route"] == route) and (server is None or r["server"] == server)]

    def health_reports(self) -> list[dict[str, Any]]:
        """Health reports, oldest first: dicts with state, substatus, description, incarnation."""
        return self._get("health")

    def role_properties(self) -> list[dict[str, Any]]:
        """Role property reports, oldest first."""
        return self._get("role_properties")

    def status_blobs(self) -> list[dict[str, Any]]:
        """Status blob uploads, oldest first: "time" it arrived, "via", "blob_type", "path",
        "status" (the decoded JSON, or None with "raw") and "problems" (fabric.status_blob:
        what is wrong with its shape; empty when it is right)."""
        return self._get("status_blobs")

    def status_blob_count(self) -> int:
        """How many status blobs arrived."""
        with self._lock:
            return len(self._data["status_blobs"])

    def status_blob_problems(self) -> list[str]:
        """Every shape problem of every status blob, "#index: problem"."""
        with self._lock:
            return [f"#{i}: {p}" for i, b in enumerate(self._data["status_blobs"]) for p in b.get("problems", [])]

    def wait_for_status_blobs(self, count: int = 1, timeout: float = 30.0) -> bool:
        """Block until `count` status blobs arrived in all."""
        return self.wait_for(lambda r: r.status_blob_count() >= count, timeout)

    def published(self) -> list[dict[str, Any]]:
        """What the fabric published, oldest first: {"what": start | incarnation | fast-track |
        vm-settings | hostplugin, "incarnation", "etag", "created_ticks", "time", ...}."""
        return self._get("published")

    def logs(self) -> list[dict[str, Any]]:
        """Uploaded log archives."""
        return self._get("logs")

    def telemetry(self) -> list[dict[str, Any]]:
        """Telemetry bodies."""
        return self._get("telemetry")

    def observations(self) -> list[dict[str, Any]]:
        """HealthService observations (HostGAPlugin health as the agent saw it)."""
        return self._get("observations")

    def certificates(self) -> list[dict[str, Any]]:
        """Certificates documents served."""
        return self._get("certificates")

    def _get(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._data[kind])

    def wait_for(self, predicate: Callable[[Record], bool], timeout: float = 30.0) -> bool:
        """Block until predicate(record) is true or timeout passes; return whether it became true."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if predicate(self):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.5))

    def wait_for_health(self, state: str = "Ready", timeout: float = 30.0) -> bool:
        """Block until a health report with this state arrives."""
        return self.wait_for(lambda r: any(h["state"] == state for h in r.health_reports()), timeout)

    def to_json(self) -> dict[str, Any]:
        """Everything, as one JSON-ready dict."""
        with self._lock:
            return copy.deepcopy(self._data)

    def dump(self, path: str | Path) -> None:
        """Write the record as JSON, atomically (readers never see half a file)."""
        path = Path(path)
        text = json.dumps(self.to_json(), indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=".record-", dir=str(path.parent or "."))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
