"""The HostGAPlugin client (port 32526, `x-ms-version: 2015-09-01`; PLATFORM.md section 3).

Artifacts (manifests, packages), the status blob, the logs zip and FastTrack
vmSettings go through it. It is never reached through an HTTP proxy.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from wire import decode_text, parse_json
from wire.blob import BlobType, status_blob_requests
from wire.documents import parse_versions
from wire.errors import DocumentError, HttpStatusError, WireError
from wire.http import NO_RETRY, HttpClient, base_url
from wire.wireserver import AgentIdentity

log = logging.getLogger("waagent.wire.hostplugin")

HOSTPLUGIN_PORT = 32526
HOSTPLUGIN_API_VERSION = "2015-09-01"
MAX_ARTIFACT_BYTES = 1024 * 1024 * 1024


class VmSettings(NamedTuple):
    """The answer to `GET /vmSettings`.

    `status` is "changed" (a new document and ETag), "unchanged" (304: the ETag we
    sent is current) or "unsupported" (404: no FastTrack on this host).
    """

    status: Literal["changed", "unchanged", "unsupported"]
    etag: str | None = None
    document: Mapping[str, Any] | None = None
    raw: bytes = b""


class HostPluginClient:
    """Speaks to the HostGAPlugin for one goal state (its container id and config name)."""

    def __init__(self, endpoint: str, *, container_id: str, role_config_name: str | None,
                 http: HttpClient | None = None, identity: AgentIdentity | None = None,
                 port: int = HOSTPLUGIN_PORT) -> None:
        self.base = base_url(endpoint, port)
        self.container_id = container_id
        self.role_config_name = role_config_name
        self.http = http or HttpClient()
        self.identity = identity or AgentIdentity()

    def __repr__(self) -> str:
        return f"HostPluginClient({self.base!r})"

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers the HostGAPlugin needs to tie a request to this VM's goal state."""
        found = {"x-ms-version": HOSTPLUGIN_API_VERSION,
                 "x-ms-containerid": self.container_id,
                 "x-ms-host-config-name": self.role_config_name or "",
                 "User-Agent": self.identity.user_agent}
        found.update(extra or {})
        return found

    def versions(self) -> tuple[str, ...]:
        """`GET /versions`: the API versions the plugin speaks.

        The plugin answers a JSON list (`["2015-09-01"]`); an XML <Versions> document
        is read too.
        """
        body = self.http.request("GET", f"{self.base}/versions", headers=self.headers()).body
        text = decode_text(body).strip()
        if text.startswith("<"):
            found = parse_versions(text)
            return tuple(dict.fromkeys(v for v in (found.preferred, *found.supported) if v))
        listed = parse_json(text or "[]", "HostGAPlugin versions")
        if not isinstance(listed, list):
            raise DocumentError("HostGAPlugin versions", "not a JSON list")
        return tuple(str(v) for v in listed)

    def is_healthy(self) -> bool:
        """`GET /health` answered 200 (one try: the caller falls back to direct storage)."""
        try:
            self.http.request("GET", f"{self.base}/health", headers=self.headers(),
                              retry=NO_RETRY, timeout=10.0)
        except WireError as err:
            log.info("HostGAPlugin at %s is not healthy: %s", self.base, err)
            return False
        return True

    def fetch_artifact(self, location: str, *, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes:
        """`GET /extensionArtifact`: a manifest or package fetched on our behalf."""
        return self.http.request(
            "GET", f"{self.base}/extensionArtifact",
            headers=self.headers({"x-ms-artifact-location": location}),
            max_bytes=max_bytes).body

    def put_status(self, sas_url: str, content: bytes, blob_type: BlobType = "BlockBlob") -> None:
        """Upload the status blob through `PUT /status` (a page blob takes several PUTs)."""
        for request in status_blob_requests(sas_url, content, blob_type):
            envelope: dict[str, Any] = {
                "requestUri": request.url,
                "headers": [{"headerName": name, "headerValue": value}
                            for name, value in request.headers.items()],
            }
            if request.body or blob_type == "BlockBlob":
                envelope["content"] = base64.b64encode(request.body).decode()
            self.http.request("PUT", f"{self.base}/status",
                              body=json.dumps(envelope).encode(),
                              headers=self.headers({"Content-Type": "application/json"}))

    def put_vm_agent_log(self, zip_data: bytes) -> None:
        """`PUT /vmAgentLog`: the collected logs zip."""
        deployment = (self.role_config_name or "").split(".")[0]
        self.http.request("PUT", f"{self.base}/vmAgentLog", body=zip_data,
                          headers=self.headers({
                              "Content-Type": "application/octet-stream",
                              "x-ms-vmagentlog-deploymentid": deployment,
                              "x-ms-client-name": self.identity.name,
                              "x-ms-client-version": self.identity.version}))

    def vm_settings(self, etag: str | None = None) -> VmSettings:
        """`GET /vmSettings` (FastTrack), conditional on the ETag we already have."""
        extra = {"x-ms-client-correlationid": str(uuid.uuid4())}
        if etag:
            extra["if-none-match"] = etag
        url = f"{self.base}/vmSettings"
        try:
            response = self.http.request("GET", url, headers=self.headers(extra), allow=(304,))
        except HttpStatusError as err:
            if err.status == 404:
                return VmSettings("unsupported")
            raise
        if response.status == 304:
            return VmSettings("unchanged", etag)
        document = parse_json(response.body, "vmSettings")
        if not isinstance(document, dict):
            raise DocumentError("vmSettings", "not a JSON object")
        return VmSettings("changed", response.header("etag"), document, response.body)
