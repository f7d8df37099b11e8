"""The one place that decides whether a request goes through an HTTP proxy.

Only downloads from storage and extension artifacts (their manifests and packages) and the
status blob's direct upload may use a proxy (PLATFORM.md section 2). The WireServer,
the HostGAPlugin and IMDS are never reached through one: their clients never ask this
module, and `wire.http` never reads proxy variables itself.

The proxy, as waagent 2.7.3 chooses it:
- `HttpProxy.Host` and `HttpProxy.Port` from waagent.conf, when the host is set (a host
  without a port means no proxy, as in waagent);
- else `https_proxy`/`HTTPS_PROXY` for an https URL, `http_proxy`/`HTTP_PROXY` for http;
- none for a host that `no_proxy`/`NO_PROXY` names (a domain suffix, an address, or a
  CIDR network), nor for the platform's fixed addresses, whatever a caller asks.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Collection, Mapping

from conf.config import Config

# The WireServer's and IMDS's fixed addresses: never through a proxy.
PLATFORM_ADDRESSES = frozenset({"168.63.129.16", "169.254.169.254"})


def download_proxy(conf: Config, url: str, *, environ: Mapping[str, str] | None = None,
                   platform: Collection[str] = ()) -> str | None:
    """The proxy URL (`http://host:port`) a storage or artifact download of `url` goes
    through, or None for a direct connection. `platform`: more hosts never proxied (the
    resolved endpoint, when the caller knows it)."""
    env = os.environ if environ is None else environ
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host or host in PLATFORM_ADDRESSES or host in {p.lower() for p in platform}:
        return None
    if bypassed(host, _env(env, "no_proxy")):
        return None
    if conf.text("HttpProxy.Host"):
        return configured_proxy(conf)
    proxy = _env(env, "https_proxy" if parts.scheme == "https" else "http_proxy")
    return proxy or None


def configured_proxy(conf: Config) -> str | None:
    """`HttpProxy.Host`/`HttpProxy.Port` as a proxy URL; None unless both are set."""
    host = conf.text("HttpProxy.Host")
    port = conf.number("HttpProxy.Port")
    if not host or port is None:
        return None
    return _with_port(host, port)


def _env(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(name) or environ.get(name.upper())


def _with_port(host: str, port: int) -> str:
    if "://" in host:
        return f"{host.rstrip('/')}:{port}"
    return f"http://{host}:{port}"


def bypassed(host: str, no_proxy: str | None) -> bool:
    """True when `no_proxy` (comma-separated) names the host: an address, a CIDR network
    holding it, or a domain suffix."""
    if not no_proxy:
        return False
    entries = [entry.strip() for entry in no_proxy.split(",") if entry.strip()]
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in entries:
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        elif host.endswith(entry.lower().lstrip("*")):
            return True
    return False
