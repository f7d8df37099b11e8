"""The Instance Metadata Service client (`Metadata: true`, never through a proxy)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, NamedTuple

from wire import parse_json
from wire.errors import DocumentError
from wire.http import RETRY_STATUSES, HttpClient, RetryPolicy

IMDS_URL = "http://169.254.169.254"
IMDS_API_VERSION = "2021-02-01"
# IMDS answers 404/410 while it starts and 408 when slow: worth another try there.
IMDS_RETRY = RetryPolicy(attempts=10, max_delay=10.0, throttle_attempts=10, throttle_delay=5.0,
                         budget=120.0,
                         retry_statuses=RETRY_STATUSES | frozenset({404, 408, 410}),
                         throttle_statuses=frozenset({429}))


class PublicKey(NamedTuple):
    """An SSH public key IMDS gives for the admin user, and where it belongs."""

    key_data: str
    path: str | None


class InstanceMetadata(NamedTuple):
    """The compute part of `/metadata/instance` that provisioning uses."""

    vm_id: str
    name: str | None
    location: str | None
    vm_size: str | None
    os_type: str | None
    admin_username: str | None
    computer_name: str | None
    disable_password_authentication: bool | None
    public_keys: tuple[PublicKey, ...]
    user_data: str | None  # base64, as IMDS gives it
    raw: Mapping[str, Any]

    @property
    def user_data_bytes(self) -> bytes | None:
        """User data decoded (None when absent or empty)."""
        if not self.user_data:
            return None
        try:
            return base64.b64decode(self.user_data, validate=True)
        except (binascii.Error, ValueError):
            raise DocumentError("IMDS instance", "compute.userData is not base64") from None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_instance_metadata(text: str | bytes) -> InstanceMetadata:
    """Parse an IMDS instance document; DocumentError names the missing field."""
    doc = "IMDS instance"
    decoded = parse_json(text, doc)
    if not isinstance(decoded, dict) or not isinstance(decoded.get("compute"), dict):
        raise DocumentError(doc, "required object compute is missing")
    compute: dict[str, Any] = decoded["compute"]
    vm_id = _text(compute.get("vmId"))
    if vm_id is None:
        raise DocumentError(doc, "required field compute.vmId is missing or empty")
    found_profile = compute.get("osProfile")
    profile: dict[str, Any] = found_profile if isinstance(found_profile, dict) else {}
    disable = profile.get("disablePasswordAuthentication")
    keys = []
    for item in compute.get("publicKeys") or []:
        if not isinstance(item, dict) or not _text(item.get("keyData")):
            raise DocumentError(doc, "an entry of compute.publicKeys has no keyData")
        keys.append(PublicKey(item["keyData"].strip(), _text(item.get("path"))))
    return InstanceMetadata(
        vm_id=vm_id,
        name=_text(compute.get("name")),
        location=_text(compute.get("location")),
        vm_size=_text(compute.get("vmSize")),
        os_type=_text(compute.get("osType")),
        admin_username=_text(profile.get("adminUsername")),
        computer_name=_text(profile.get("computerName")),
        disable_password_authentication=(None if disable is None
                                         else str(disable).lower() == "true"),
        public_keys=tuple(keys),
        user_data=_text(compute.get("userData")),
        raw=decoded,
    )


class ImdsClient:
    """Reads instance metadata. `base_url` is a parameter so tests use 127.0.0.1."""

    def __init__(self, base_url: str = IMDS_URL, *, http: HttpClient | None = None,
                 api_version: str = IMDS_API_VERSION, retry: RetryPolicy = IMDS_RETRY) -> None:
        self.base = base_url.rstrip("/")
        self.http = http or HttpClient()
        self.api_version = api_version
        self.retry = retry

    def __repr__(self) -> str:
        return f"ImdsClient({self.base!r})"

    def instance_document(self) -> bytes:
        """The raw `/metadata/instance` JSON."""
        url = f"{self.base}/metadata/instance?api-version={self.api_version}"
        return self.http.request("GET", url, headers={"Metadata": "true"},
                                 retry=self.retry).body

    def instance(self) -> InstanceMetadata:
        """The parsed instance metadata."""
        return parse_instance_metadata(self.instance_document())
