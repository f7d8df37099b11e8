"""HTTP transport for the platform: timeouts on every request, retries with backoff, a budget.

The WireServer, HostGAPlugin and IMDS are reached over plain HTTP with `wire.http1` (cheap
to import, and it never consults proxy variables: those endpoints must never be reached
through a proxy); a client keeps one connection per endpoint open between its requests. HTTPS URLs use the standard library's
`http.client`; `requests` is imported only when a caller asks for a download through
`HttpProxy.Host/Port`.
"""

import logging
import time
import urllib.parse
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import NamedTuple

from wire import decode_text
from wire.errors import HttpStatusError, WireError
from wire.http1 import BadResponse, Connections

log = logging.getLogger("waagent.wire.http")

# Server-side trouble worth another try (PLATFORM.md section 2, "Retries").
RETRY_STATUSES = frozenset({500, 502, 503, 504, 507})
# The platform throttles with 429, and with 403 on the WireServer: wait longer, try more.
THROTTLE_STATUSES = frozenset({429, 403})
DEFAULT_TIMEOUT = 30.0
# Platform documents are small; a larger answer is a fault, not something to hold in memory.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

Sleep = Callable[[float], None]


class RetryPolicy(NamedTuple):
    """How hard to try: attempts on errors, on throttling, and a bound on total waiting.

    `attempts` counts tries that failed with a retryable status or a connection error;
    `throttle_attempts` counts throttled tries separately; `budget` caps the seconds slept.
    """

    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 30.0
    throttle_attempts: int = 20
    throttle_delay: float = 15.0
    budget: float = 300.0
    retry_statuses: frozenset[int] = RETRY_STATUSES
    throttle_statuses: frozenset[int] = THROTTLE_STATUSES

    def backoff(self, failures: int) -> float:
        """Delay before the next try after `failures` consecutive failures: 1, 2, 4, ... capped."""
        return float(min(self.max_delay, self.base_delay * (2 ** max(0, failures - 1))))


DEFAULT_RETRY = RetryPolicy()
# One try only: probes whose caller has its own fallback (e.g. HostGAPlugin health).
NO_RETRY = RetryPolicy(attempts=1, throttle_attempts=1, budget=0.0)
# The platform waits up to 40 minutes for Ready (PLATFORM.md section 2): keep trying for 30.
READY_REPORT_RETRY = RetryPolicy(attempts=80, max_delay=30.0, throttle_attempts=120,
                                 budget=30 * 60.0)


class Response(NamedTuple):
    """A complete HTTP answer. Header names are lower-case."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    url: str
    attempts: int = 1

    def header(self, name: str) -> str | None:
        """A response header by case-insensitive name."""
        return self.headers.get(name.lower())

    def text(self) -> str:
        """The body decoded as UTF-8 (a BOM is dropped, undecodable bytes replaced)."""
        return decode_text(self.body)


def base_url(endpoint: str, default_port: int) -> str:
    """`http://host:port` for an endpoint given as `host`, `host:port`, or a URL."""
    text = endpoint.strip().rstrip("/")
    if not text:
        raise WireError("empty endpoint address: set one or let discovery find it")
    if "://" in text:
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WireError(f"{endpoint!r} is not an http(s) URL")
        return text
    if text.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
        host, _, port = text.partition(":")
        if not port.isdigit():
            raise WireError(f"{endpoint!r}: the port is not a number")
        return f"http://{host}:{int(port)}"
    if ":" in text and not text.startswith("["):
        text = f"[{text}]"
    return f"http://{text}:{default_port}"


def rebase_url(url: str, base: str) -> str:
    """The URL with its scheme and host:port replaced by `base`'s (path and query kept).

    Sub-document URLs in a goal state name the platform address; the agent must talk
    only to the endpoint it resolved, so they are rewritten onto it.
    """
    target = urllib.parse.urlsplit(base)
    parts = urllib.parse.urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        raise WireError(f"{url!r} is not an absolute URL")
    return urllib.parse.urlunsplit((target.scheme, target.netloc, parts.path or "/",
                                    parts.query, ""))


def shown_url(url: str) -> str:
    """The URL as it may appear in logs and errors: a SAS signature is a secret."""
    parts = urllib.parse.urlsplit(url)
    if "sig=" in parts.query.lower():
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "<sas>", ""))
    return url


def proxy_url(host: str | None, port: int | None) -> str | None:
    """The proxy URL from `HttpProxy.Host`/`HttpProxy.Port`, or None when unset."""
    if not host:
        return None
    if "://" in host:
        return host if port is None else f"{host.rstrip('/')}:{port}"
    return f"http://{host}:{port or 3128}"


def retry_after(response: Response, default: float, policy: RetryPolicy) -> float:
    """The wait the platform asks for in Retry-After (seconds), else `default`; never more
    than the policy's longest wait (an HTTP-date or a bad value: `default`)."""
    value = (response.header("retry-after") or "").strip()
    if not value.isdigit():
        return default
    return float(min(int(value), max(policy.throttle_delay, policy.max_delay)))


class HttpClient:
    """Sends requests with timeouts and retries. `sleep` is injectable so tests run fast."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, retry: RetryPolicy = DEFAULT_RETRY,
                 sleep: Sleep = time.sleep, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.timeout = timeout
        self.retry = retry
        self.sleep = sleep
        self.max_bytes = max_bytes
        self.connections = Connections()
        # A client dropped without close() still closes its idle connections.
        weakref.finalize(self, self.connections.close)

    def __repr__(self) -> str:
        return f"HttpClient(timeout={self.timeout!r}, retry={self.retry!r})"

    def close(self) -> None:
        """Close the connections kept open for the next request."""
        self.connections.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        allow: Collection[int] = (),
        proxy: str | None = None,
        max_bytes: int | None = None,
    ) -> Response:
        """Send a request, retrying per policy; return the answer when 2xx or in `allow`.

        Raises HttpStatusError for any other final status, WireError when the budget
        is spent on connection errors. `proxy` is only for storage/artifact downloads.
        """
        policy = retry or self.retry
        limit = timeout if timeout is not None else self.timeout
        cap = max_bytes if max_bytes is not None else self.max_bytes
        shown = shown_url(url)
        attempts = failures = throttled = 0
        slept = 0.0
        while True:
            attempts += 1
            status: int | None = None
            try:
                response = self._send(method, url, headers or {}, body, limit, proxy, cap)
            except WireError:
                raise
            except (OSError, BadResponse) as err:
                failures += 1
                last = f"connection error: {err or type(err).__name__}"
                delay = policy.backoff(failures)
            else:
                status = response.status
                if 200 <= status < 300 or status in allow:
                    return Response(status, response.reason, response.headers, response.body,
                                    url, attempts)
                last = f"HTTP {status} {response.reason}".rstrip()
                if status in policy.throttle_statuses:
                    throttled += 1
                    delay = retry_after(response, policy.throttle_delay, policy)
                elif status in policy.retry_statuses:
                    failures += 1
                    delay = retry_after(response, policy.backoff(failures), policy)
                else:
                    detail = response.text().strip().replace("\n", " ")[:200]
                    raise HttpStatusError(
                        f"{method} {shown} failed: {last}" + (f": {detail}" if detail else ""),
                        url=url, status=status, attempts=attempts)
            if (failures >= policy.attempts or throttled >= policy.throttle_attempts
                    or slept + delay > policy.budget):
                error_class = HttpStatusError if status is not None else WireError
                raise error_class(
                    f"{method} {shown} failed after {attempts} attempt(s) "
                    f"({failures} failed, {throttled} throttled, {slept:.0f} s waited); "
                    f"last: {last}. Check that the endpoint is reachable and not "
                    "firewalled; the agent will try again on its next run",
                    url=url, status=status, attempts=attempts)
            log.info("%s %s: %s; retrying in %.1f s (attempt %d)", method, shown, last, delay,
                     attempts)
            self.sleep(delay)
            slept += delay

    def _send(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
              timeout: float, proxy: str | None, cap: int) -> Response:
        if proxy:
            return _send_through_proxy(method, url, headers, body, timeout, proxy, cap)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WireError(f"{shown_url(url)}: not an http(s) URL")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        log.debug("%s %s", method, shown_url(url))
        if parts.scheme == "http":
            status, reason, found, data = self.connections.exchange(
                method, parts.hostname, parts.port or 80, target, headers, body, timeout, cap)
        else:
            status, reason, found, data = _send_https(method, parts.hostname, parts.port,
                                                      target, headers, body, timeout, cap)
        return self._within_cap(method, url, cap, Response(status, reason, found, data, url))

    @staticmethod
    def _within_cap(method: str, url: str, cap: int, response: Response) -> Response:
        if len(response.body) > cap:
            raise WireError(f"{method} {shown_url(url)}: answer larger than {cap} bytes, refused",
                            url=url, status=response.status)
        return response


def _send_https(method: str, host: str, port: int | None, target: str,
                headers: Mapping[str, str], body: bytes | None, timeout: float,
                cap: int) -> tuple[int, str, dict[str, str], bytes]:
    import http.client  # with ssl: only HTTPS downloads pay for it

    connection = http.client.HTTPSConnection(host, port, timeout=timeout)
    try:
        connection.request(method, target, body=body, headers=dict(headers))
        answer = connection.getresponse()
        data = answer.read(cap + 1)
        found = {name.lower(): value for name, value in answer.getheaders()}
        return answer.status, answer.reason, found, data
    except http.client.HTTPException as err:
        raise BadResponse(f"{type(err).__name__}: {err}") from None
    finally:
        connection.close()


def _send_through_proxy(method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                        timeout: float, proxy: str, cap: int) -> Response:
    import requests  # heavy: only artifact downloads through a proxy pay for it

    with requests.request(method, url, headers=dict(headers), data=body, timeout=timeout,
                          proxies={"http": proxy, "https": proxy}, stream=True) as answer:
        data = answer.raw.read(cap + 1, decode_content=True)
        found = {name.lower(): value for name, value in answer.headers.items()}
        if len(data) > cap:
            raise WireError(f"{method} {shown_url(url)}: answer larger than {cap} bytes, refused",
                            url=url, status=answer.status_code)
        return Response(answer.status_code, answer.reason or "", found, data, url)
