"""Defects the fault schedules found (tests/campaigns/fault_schedules.py), kept as regression
tests, and the fabric faults the schedules use. Sleeps are injected: no test waits.

- Schedule provision seed 28 (health 429, Retry-After: 3) and seed 31 (versions 429,
  Retry-After: 3): the agent waited its fixed 15 s throttle delay instead of the 3 s the
  platform asked for.
- Schedule provision seed 4 (certificates: a new goal state published on each of two calls
  in a row, 410 Gone twice): the certificates task refreshed the goal state once only, and
  provisioning failed (NotReady/ProvisioningFailed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric import Fabric, default_scenario
from system.fs import FileSystem
from system.root import Root
from system.runner import Runner
from tests.conftest import need_root, need_tools
from wire.http import HttpClient, RetryPolicy
from wire.transport import ensure_transport_pair
from wire.wireserver import WireServerClient


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    with Fabric(default_scenario()) as running:
        yield running


def client(fabric: Fabric, sleeps: Sleeps) -> WireServerClient:
    return WireServerClient(fabric.wire_url, http=HttpClient(sleep=sleeps, timeout=10.0),
                            goal_state_delay=0.5)


@pytest.mark.parametrize("status", [429, 403, 503])
def test_retry_after_is_the_wait_the_platform_asked_for(fabric: Fabric, status: int) -> None:
    sleeps = Sleeps()
    fabric.inject("goalstate", status, retry_after=3)
    assert client(fabric, sleeps).goal_state().role_instance_id
    assert sleeps == [3.0]


def test_retry_after_is_capped_and_a_date_falls_back_to_the_policy(fabric: Fabric) -> None:
    sleeps = Sleeps()
    fabric.inject("goalstate", 429, retry_after=100000)
    fabric.inject("goalstate", 429, body="slow down")  # no Retry-After: the policy's delay
    policy = RetryPolicy()
    http = HttpClient(sleep=sleeps, timeout=10.0, retry=policy)
    WireServerClient(fabric.wire_url, http=http).goal_state()
    assert sleeps == [max(policy.throttle_delay, policy.max_delay), policy.throttle_delay]


def test_two_goal_states_in_a_row_while_reading_are_both_refreshed(fabric: Fabric) -> None:
    sleeps = Sleeps()
    first = fabric.incarnation
    fabric.inject("hostingenv", bump_incarnation=True, count=2)
    documents = client(fabric, sleeps).goal_state_documents()
    assert documents.goal_state.incarnation == str(first + 2)
    assert [r["status"] for r in fabric.record.requests(route="hostingenv")] == [410, 410, 200]


def test_a_truncated_answer_is_read_again(fabric: Fabric, tmp_path: Path) -> None:
    sleeps = Sleeps()
    fabric.inject("goalstate", truncate=True)
    assert client(fabric, sleeps).goal_state().role_instance_id
    assert sleeps == [1.0]
    assert len(fabric.record.requests(route="goalstate")) == 2


def test_a_stale_goal_state_goes_back_one_incarnation(fabric: Fabric) -> None:
    sleeps = Sleeps()
    first = fabric.incarnation
    fabric.new_incarnation()
    fabric.inject("goalstate", stale=True)
    wire = client(fabric, sleeps)
    assert wire.goal_state().incarnation == str(first)
    assert wire.goal_state().incarnation == str(first + 1)
    assert len(fabric.faults.fired()) == 1


@pytest.mark.root
def test_provisioning_survives_two_stale_certificate_reads(fabric: Fabric, tmp_path: Path) -> None:
    need_root()
    need_tools("useradd", "chpasswd", "ssh-keygen", "visudo", "sshd", "unshare")
    from tests.integration.provisioning import Harness

    harness = Harness(tmp_path, fabric)
    fabric.inject("certificates", bump_incarnation=True, count=2)
    harness.run(check=True)
    assert harness.health()[-1] == ("Ready", None, None)
    assert [r["status"] for r in fabric.record.requests(route="certificates")][:2] == [410, 410]


def test_the_certificates_task_refreshes_a_stale_goal_state_more_than_once(
        fabric: Fabric, tmp_path: Path) -> None:
    """The wire client alone: the transport pair and the certificates document after 2 x 410."""
    sleeps = Sleeps()
    root = Root(tmp_path)
    fs = FileSystem(Runner(root=root))
    lib_dir = root / "var/lib/waagent"
    lib_dir.mkdir(parents=True)
    pair = ensure_transport_pair(fs, lib_dir)
    wire = client(fabric, sleeps)
    fabric.inject("certificates", bump_incarnation=True, count=2)
    documents = wire.goal_state_documents(pair)
    assert documents.certificates is not None


def test_the_new_faults_come_from_a_scenario_file_and_the_control_channel() -> None:
    from fabric.scenario import parse_scenario

    scenario = parse_scenario("username: u\nfaults:\n"
                              "  - {route: goalstate, status: 429, retry_after: 2}\n"
                              "  - {route: certificates, truncate: true}\n"
                              "  - {route: goalstate, stale: true}\n")
    assert [(f.retry_after, f.truncate, f.stale) for f in scenario.faults] == [
        (2, False, False), (None, True, False), (None, False, True)]
    with Fabric(scenario) as running:
        running.control({"action": "fault", "route": "health", "status": 503, "retry_after": 1})
        assert running.faults.pending()[-1].retry_after == 1
