"""The WireServer client: protocol version, goal state and sub-documents, reports.

The client talks only to the endpoint it was given: sub-document URLs in the goal
state carry the platform's own address and are rebased onto that endpoint.
"""

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from wire.errors import HttpStatusError, WireError
from wire.http import HttpClient, Response, RetryPolicy, base_url, rebase_url

if TYPE_CHECKING:
    from wire.documents import GoalState, Versions
    from wire.extensions_config import ExtensionsConfig
    from wire.reports import HealthReport
    from wire.subdocuments import CertificateFile, HostingEnvironmentConfig, SharedConfig
    from wire.transport import TransportPair

log = logging.getLogger("waagent.wire.wireserver")

WIRESERVER_PORT = 80
WIRE_PROTOCOL_VERSION = "2012-11-30"
MAX_TELEMETRY_BYTES = 64512
# Ciphers for the certificates, in order of preference (PLATFORM.md section 2).
CERTIFICATE_CIPHERS = ("AES128_CBC", "DES_EDE3_CBC")
# Reads of a goal state that may each go stale (410) before one is read whole: the platform
# can publish twice in a row during a boot (waagent's update_goal_state tries 3 times too).
STALE_REFRESHES = 3
_XML = {"Content-Type": "text/xml;charset=utf-8"}


class AgentIdentity(NamedTuple):
    """How the agent names itself to the platform (headers, status blob)."""

    name: str = "WALinuxAgent"
    version: str = "2.9.1.1"

    @property
    def user_agent(self) -> str:
        """`User-Agent` value: `name/version`."""
        return f"{self.name}/{self.version}"


class GoalStateDocuments(NamedTuple):
    """A goal state and the sub-documents it points to (None when it points to none)."""

    goal_state: "GoalState"
    hosting_environment: "HostingEnvironmentConfig | None"
    shared_config: "SharedConfig | None"
    extensions_config: "ExtensionsConfig | None"
    certificates: "CertificateFile | None"


class WireServerClient:
    """Speaks the WireServer protocol (`x-ms-version: 2012-11-30`) with one endpoint.

    `endpoint` is a host, `host:port` or a base URL (tests: `http://127.0.0.1:PORT`).
    """

    def __init__(self, endpoint: str, *, http: HttpClient | None = None,
                 identity: AgentIdentity | None = None, port: int = WIRESERVER_PORT,
                 goal_state_attempts: int = 6, goal_state_delay: float = 5.0) -> None:
        self.base = base_url(endpoint, port)
        self.http = http or HttpClient()
        self.identity = identity or AgentIdentity()
        self.goal_state_attempts = goal_state_attempts
        self.goal_state_delay = goal_state_delay

    def __repr__(self) -> str:
        return f"WireServerClient({self.base!r})"

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers every WireServer request carries, plus `extra`."""
        found = {"x-ms-agent-name": self.identity.name, "x-ms-version": WIRE_PROTOCOL_VERSION,
                 "User-Agent": self.identity.user_agent}
        found.update(extra or {})
        return found

    def _get(self, url: str, extra: Mapping[str, str] | None = None,
             retry: RetryPolicy | None = None) -> Response:
        return self.http.request("GET", url, headers=self.headers(extra), retry=retry)

    # -- version and goal state ------------------------------------------------------------

    def versions(self) -> "Versions":
        """`GET /?comp=versions`."""
        from wire.documents import parse_versions

        return parse_versions(self._get(f"{self.base}/?comp=versions").body)

    def check_protocol_version(self) -> "Versions":
        """Negotiate: the server must support 2012-11-30, or nothing else can work."""
        found = self.versions()
        if not found.accepts(WIRE_PROTOCOL_VERSION):
            offered = ", ".join(filter(None, (found.preferred, *found.supported)))
            raise WireError(f"the WireServer at {self.base} does not support protocol "
                            f"{WIRE_PROTOCOL_VERSION} (it offers {offered or 'nothing'}); "
                            "this agent cannot talk to it", url=f"{self.base}/?comp=versions")
        return found

    def goal_state_document(self) -> bytes:
        """The goal state document as served, unparsed (one GET)."""
        url = f"{self.base}/machine/?comp=goalstate"
        return self.http.request("GET", url, headers=self.headers()).body

    def goal_state(self, fetched: bytes | None = None) -> "GoalState":
        """The current goal state, retried while the platform has not placed the role.

        `fetched`: the document `goal_state_document` returned, parsed as the first try.
        """
        from wire.documents import parse_goal_state

        url = f"{self.base}/machine/?comp=goalstate"
        for attempt in range(1, self.goal_state_attempts + 1):
            body = fetched if fetched is not None else self._get(url).body
            fetched = None
            state = parse_goal_state(body)
            if state.role_instance_id is not None:
                return state
            if attempt < self.goal_state_attempts:
                log.info("goal state incarnation %s has no RoleInstance yet; retrying in "
                         "%.0f s", state.incarnation, self.goal_state_delay)
                self.http.sleep(self.goal_state_delay)
        raise WireError(f"the goal state at {url} still has no RoleInstance after "
                        f"{self.goal_state_attempts} attempts; the platform has not placed "
                        "this VM yet, the agent will try again", url=url,
                        attempts=self.goal_state_attempts)

    # -- sub-documents ---------------------------------------------------------------------
    # Their parsers are imported in the methods: a boot whose goal state did not change
    # fetches none of them (and the reports' module only when it reports).

    def fetch_document(self, url: str, extra: Mapping[str, str] | None = None) -> bytes:
        """GET a URL named in the goal state, rebased onto our endpoint."""
        return self._get(rebase_url(url, self.base), extra).body

    def hosting_environment(self, state: "GoalState") -> "HostingEnvironmentConfig | None":
        """HostingEnvironmentConfig of this goal state (None when it names none)."""
        from wire.subdocuments import parse_hosting_environment

        url = state.hosting_environment_url
        return parse_hosting_environment(self.fetch_document(url)) if url else None

    def shared_config(self, state: "GoalState") -> "SharedConfig | None":
        """SharedConfig of this goal state (None when it names none)."""
        from wire.subdocuments import parse_shared_config

        url = state.shared_config_url
        return parse_shared_config(self.fetch_document(url)) if url else None

    def extensions_config(self, state: "GoalState") -> "ExtensionsConfig | None":
        """ExtensionsConfig of this goal state (None when it names none)."""
        from wire.extensions_config import parse_extensions_config

        url = state.extensions_config_url
        return parse_extensions_config(self.fetch_document(url)) if url else None

    def certificates(self, state: "GoalState", pair: "TransportPair") -> "CertificateFile | None":
        """The encrypted Certificates document (decrypt with `wire.certs.install_certificates`).

        Asks for AES-128-CBC first, then 3DES when the server refuses that cipher.
        """
        from wire.subdocuments import parse_certificate_file

        url = state.certificates_url
        if not url:
            return None
        last: HttpStatusError | None = None
        for cipher in CERTIFICATE_CIPHERS:
            extra = {"x-ms-cipher-name": cipher,
                     "x-ms-guest-agent-public-x509-cert": pair.header_value}
            try:
                return parse_certificate_file(self.fetch_document(url, extra))
            except HttpStatusError as err:
                if err.status is None or not 400 <= err.status < 500 or err.status == 410:
                    raise
                log.info("certificates with cipher %s refused (HTTP %s): trying the next",
                         cipher, err.status)
                last = err
        assert last is not None
        raise last

    def goal_state_documents(self, pair: "TransportPair | None" = None) -> GoalStateDocuments:
        """The goal state and its sub-documents; on HTTP 410 (stale), refresh and retry
        (STALE_REFRESHES reads in all: the platform may publish twice in a row).

        Certificates are fetched only when `pair` is given.
        """
        for attempt in range(1, STALE_REFRESHES + 1):
            state = self.goal_state()
            try:
                return GoalStateDocuments(
                    goal_state=state,
                    hosting_environment=self.hosting_environment(state),
                    shared_config=self.shared_config(state),
                    extensions_config=self.extensions_config(state),
                    certificates=self.certificates(state, pair) if pair is not None else None,
                )
            except HttpStatusError as err:
                if err.status != 410 or attempt == STALE_REFRESHES:
                    raise
                log.info("goal state incarnation %s went stale (HTTP 410): fetching it again",
                         state.incarnation)
        raise AssertionError("unreachable")

    # -- reports ---------------------------------------------------------------------------

    def report_health(self, state: "GoalState", report: "HealthReport", *,
                      retry: RetryPolicy | None = None) -> None:
        """POST the VM's health (Ready, NotReady/Provisioning, NotReady/ProvisioningFailed).

        For Ready, pass `retry=wire.http.READY_REPORT_RETRY`: the platform waits for it.
        """
        from wire.reports import health_report_xml

        instance = _role_instance(state)
        body = health_report_xml(state.incarnation, state.container_id, instance, report)
        self.http.request("POST", f"{self.base}/machine?comp=health", body=body.encode(),
                          headers=self.headers(_XML), retry=retry)
        log.info("reported health %s%s (incarnation %s)", report.state,
                 f"/{report.substatus}" if report.substatus else "", state.incarnation)

    def report_role_properties(self, state: "GoalState", properties: Mapping[str, str]) -> None:
        """POST role properties, e.g. {"CertificateThumbprint": <SSH host key thumbprint>}."""
        from wire.reports import role_properties_xml

        instance = _role_instance(state)
        body = role_properties_xml(state.container_id, instance, dict(properties))
        url = f"{self.base}/machine?comp=roleProperties"
        response = self.http.request("POST", url, body=body.encode(), headers=self.headers(_XML))
        if response.status != 202:
            raise HttpStatusError(f"POST {url}: expected HTTP 202 Accepted, got "
                                  f"{response.status} {response.reason}", url=url,
                                  status=response.status, attempts=response.attempts)

    def send_telemetry(self, body: bytes) -> None:
        """POST one telemetry document (at most 64512 bytes: split larger batches)."""
        if len(body) > MAX_TELEMETRY_BYTES:
            raise WireError(f"telemetry document of {len(body)} bytes exceeds the platform's "
                            f"{MAX_TELEMETRY_BYTES}-byte limit: send fewer events per request")
        self.http.request("POST", f"{self.base}/machine?comp=telemetrydata", body=body,
                          headers=self.headers(_XML))


def _role_instance(state: "GoalState") -> str:
    if state.role_instance_id is None:
        raise WireError(f"goal state incarnation {state.incarnation} has no RoleInstance: "
                        "nothing to report for yet")
    return state.role_instance_id
