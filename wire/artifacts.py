"""Extension artifacts: manifests and packages, through the HostGAPlugin or directly.

Each artifact is asked for through the HostGAPlugin (`GET /extensionArtifact`, never
through a proxy) at each of its locations in turn, then straight from those locations
(location, failoverlocation, additional locations), which is where `HttpProxy.Host/Port`
(or the usual proxy environment variables) apply. A round over every channel is retried
with backoff. A direct download through a proxy or over TLS uses `requests` (redirects
followed); plain HTTP without a proxy uses the agent's own client (wire.http), because
`requests`, once imported, stays in the agent's memory for as long as it runs.

`pick_version` chooses the manifest entry a goal state asks for, as waagent does: the
highest version whose leading components are the requested ones ("1.0" takes 1.0.7).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from wire.errors import WireError
from wire.handlers import ManifestVersion, PluginVersionManifest
from wire.proxy import bypassed
from wire.versions import version_key, version_matches

log = logging.getLogger("waagent.wire.artifacts")

MAX_MANIFEST_BYTES = 1024 * 1024
MAX_PACKAGE_BYTES = 256 * 1024 * 1024
DIRECT_TIMEOUT = 60.0


class ArtifactUnavailable(WireError):
    """No channel delivered the artifact; the message lists what each said."""


def pick_version(manifest: PluginVersionManifest, requested: str) -> ManifestVersion | None:
    """The highest offered version that matches the requested one; None when none does."""
    matching = [v for v in manifest.versions if version_matches(requested, v.version)]
    return max(matching, key=lambda v: version_key(v.version)) if matching else None


class ArtifactClient:
    """Fetches artifacts through `hostplugin` (a wire.hostplugin.HostPluginClient, or None
    when there is none) and directly. `proxy` is an http(s) proxy URL for the direct
    downloads only; None: the proxy environment variables' (http_proxy, https_proxy,
    no_proxy), as `requests` reads them."""

    def __init__(self, hostplugin: Any | None, *, proxy: str | None = None, rounds: int = 3,
                 backoff: float = 2.0, sleep: Callable[[float], None] = time.sleep,
                 timeout: float = DIRECT_TIMEOUT) -> None:
        self.hostplugin = hostplugin
        self.proxy = proxy
        self.rounds = rounds
        self.backoff = backoff
        self.sleep = sleep
        self.timeout = timeout
        self._session: Any = None  # requests', for downloads through a proxy or TLS
        self._http: Any = None  # wire.http's, for plain HTTP straight to the location

    def fetch(self, uris: Sequence[str], *, what: str, max_bytes: int) -> bytes:
        """The artifact from the first channel that delivers it."""
        locations = [u for u in dict.fromkeys(uris) if u]
        if not locations:
            raise ArtifactUnavailable(f"{what}: the goal state names no location")
        problems: list[str] = []
        for round_no in range(1, self.rounds + 1):
            for channel, uri in self._channels(locations):
                try:
                    data = self._fetch_one(channel, uri, max_bytes)
                except (WireError, OSError) as err:
                    problems.append(f"{channel} {_shown(uri)}: {err}")
                    log.debug("%s through %s from %s failed: %s", what, channel, _shown(uri), err)
                    continue
                except Exception as err:  # noqa: BLE001 - requests' own exceptions
                    problems.append(f"{channel} {_shown(uri)}: {type(err).__name__}: {err}")
                    continue
                log.debug("%s: %d bytes through %s from %s", what, len(data), channel,
                          _shown(uri))
                return data
            if round_no < self.rounds:
                self.sleep(self.backoff * 2 ** (round_no - 1))
        shown = "; ".join(problems[-6:])
        raise ArtifactUnavailable(f"could not download {what} after {self.rounds} rounds over "
                                  f"the HostGAPlugin and {len(locations)} location(s): {shown}")

    def close(self) -> None:
        """Close the connections this client keeps open."""
        for http in (self._http, getattr(self.hostplugin, "http", None)):
            if http is not None:
                http.close()
        if self._session is not None:
            self._session.close()

    def _channels(self, locations: Sequence[str]) -> list[tuple[str, str]]:
        via_plugin = [("HostGAPlugin", u) for u in locations] if self.hostplugin else []
        return via_plugin + [("direct", u) for u in locations]

    def _fetch_one(self, channel: str, uri: str, max_bytes: int) -> bytes:
        if channel == "HostGAPlugin" and self.hostplugin is not None:
            return bytes(self.hostplugin.fetch_artifact(uri, max_bytes=max_bytes))
        return self._direct(uri, max_bytes)

    def _direct(self, uri: str, max_bytes: int) -> bytes:
        if uri.lower().startswith("http://") and not self._proxied(uri):
            from wire.http import NO_RETRY, HttpClient

            if self._http is None:
                self._http = HttpClient(retry=NO_RETRY, timeout=self.timeout)
            return bytes(self._http.request("GET", uri, max_bytes=max_bytes).body)
        import requests

        if self._session is None:
            self._session = requests.Session()
        proxies = {"http": self.proxy, "https": self.proxy} if self.proxy else None
        with self._session.get(uri, timeout=self.timeout, proxies=proxies, stream=True) as answer:
            if answer.status_code != 200:
                raise WireError(f"HTTP {answer.status_code}", url=_shown(uri),
                                status=answer.status_code)
            chunks, size = [], 0
            for chunk in answer.iter_content(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise WireError(f"larger than {max_bytes} bytes: refused", url=_shown(uri))
                chunks.append(chunk)
        return b"".join(chunks)

    def _proxied(self, uri: str) -> bool:
        """A plain HTTP download of `uri` goes through a proxy: `proxy`, else http_proxy
        unless no_proxy names the host (requests' reading of the environment)."""
        if self.proxy:
            return True
        host = (urlsplit(uri).hostname or "").lower()
        found = os.environ.get("http_proxy") or os.environ.get("HTTP_PROXY")
        skip = os.environ.get("no_proxy") or os.environ.get("NO_PROXY")
        return bool(found) and not bypassed(host, skip)

    def manifest(self, uris: Sequence[str], *, handler: str) -> PluginVersionManifest:
        """The handler's PluginVersionManifest."""
        from wire.extensions_config import parse_manifest

        return parse_manifest(self.fetch(uris, what=f"the manifest of {handler}",
                                         max_bytes=MAX_MANIFEST_BYTES))

    def package(self, uris: Sequence[str], *, handler: str, version: str) -> bytes:
        """The handler's zip."""
        return self.fetch(uris, what=f"the package of {handler} {version}",
                          max_bytes=MAX_PACKAGE_BYTES)


def _shown(uri: str) -> str:
    """A URL without its query (SAS tokens are credentials)."""
    return uri.split("?", 1)[0]
