"""Health reports with a script's control characters, against the fabric on 127.0.0.1.

The fabric parses reports with expat, as the platform does: a character XML 1.0 does
not allow makes it answer 400, and the agent's report must still get through.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fabric import Fabric, default_scenario
from wire.errors import HttpStatusError
from wire.http import NO_RETRY, HttpClient
from wire.reports import HealthReport, health_report_xml
from wire.wireserver import WireServerClient

STDERR = "custom data failed: \x1b[31mpermission denied\x1b[0m\x07 byte \udcff"


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    with Fabric(default_scenario()) as running:
        yield running


def test_failed_report_with_control_characters_reaches_the_fabric(fabric: Fabric) -> None:
    wire = WireServerClient(fabric.wire_url, http=HttpClient(timeout=10.0),
                            goal_state_delay=0.5)
    state = wire.goal_state()
    wire.report_health(state, HealthReport.failed(STDERR))
    (report,) = fabric.record.health_reports()
    assert report["substatus"] == "ProvisioningFailed"
    assert report["description"] == ("custom data failed: \ufffd[31mpermission denied"
                                     "\ufffd[0m\ufffd byte \ufffd")


def test_fabric_answers_400_to_a_report_xml_1_0_does_not_allow(fabric: Fabric) -> None:
    wire = WireServerClient(fabric.wire_url, http=HttpClient(timeout=10.0),
                            goal_state_delay=0.5)
    state = wire.goal_state()
    assert state.role_instance_id is not None
    body = health_report_xml(state.incarnation, state.container_id, state.role_instance_id,
                             HealthReport.failed("red"))
    raw = body.replace("red", "\x1b[31mred").encode()
    with pytest.raises(HttpStatusError) as caught:
        wire.http.request("POST", f"{wire.base}/machine?comp=health", body=raw,
                          headers=wire.headers({"Content-Type": "text/xml; charset=utf-8"}),
                          retry=NO_RETRY)
    assert caught.value.status == 400
    assert fabric.record.health_reports() == []
