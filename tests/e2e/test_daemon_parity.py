"""The status blob of the published agent (waagent 2.7.3, Debian's package, `-daemon`) and
ours, in identical VM roots against the same fabric scenario, compared field by field.

Each agent lives the same scenario in a fresh VM (Debian 12, both agents installed, the
package's /etc/waagent.conf with harness.BOTH_AGENTS_OVERRIDES): DHCP as the boot does, `-daemon` as
the service starts it, provisioning to Ready, the scenario's extension (the fabric's no-op
handler) enabled, then a new incarnation published through the fabric's control channel.
The blob compared is the first that acknowledges the new incarnation with every handler Ready.

They must have the same shape (key sets at every level, types) and may differ in value only
at ALLOWED, each with the reason. The differing values are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.scenario import default_scenario_path
from tests.e2e import harness
from tests.e2e.conftest import checked_lab, need_lab

pytestmark = [pytest.mark.e2e, pytest.mark.root]

AGENTS = {"waagent 2.7.3": "/usr/sbin/waagent", "ours": "/" + harness.AGENT_LAUNCHER}
# Value differences allowed, by path (a regular expression over "a.b[0].c"), and why.
ALLOWED: dict[str, str] = {
    r"(.*\.)?timestampUTC": "the clock: each agent stamps its own upload and goal state",
    r"aggregateStatus\.guestAgentStatus\.version": "the agent's version",
    r"guestOSInfo\.version": "the agent's version",
    r"supportedFeatures": "ours advertises FastTrack, which 2.7.3 does not support",
}
WAIT = 300.0  # waagent 2.7.3 takes its time: IMDS, telemetry, the handler's install


def settled(blob: dict[str, Any], incarnation: str) -> bool:
    """The blob acknowledges `incarnation` and every handler reports its extension Ready."""
    aggregate = blob["status"].get("aggregateStatus", {})
    goal = aggregate.get("vmArtifactsAggregateStatus", {}).get("goalStateAggregateStatus", {})
    handlers = aggregate.get("handlerAggregateStatus", [])
    return goal.get("inSvdSeqNo") == incarnation and bool(handlers) and all(
        h.get("status") == "Ready" and "runtimeSettingsStatus" in h for h in handlers)


def live_blob(work: Path, agent: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The agent's settled status blob for incarnation 2, and the fabric's requests."""
    with checked_lab(work, default_scenario_path(), conf=None,
                     packages=harness.WAAGENT_PACKAGES, prepare=harness.prepare_both_agents) as lab:
        lab.vm.dhcp()
        log = work / "agent.log"
        lab.vm.popen([AGENTS[agent], "-daemon"], log)

        def said() -> str:
            return log.read_text(errors="replace")[-3000:]

        def first_settled(incarnation: str) -> dict[str, Any] | None:
            return next((b for b in lab.fabric.status_blobs() if settled(b, incarnation)), None)

        try:
            lab.fabric.wait_for_health("Ready", WAIT)
            harness.wait_until(lambda: first_settled("1"), WAIT, "incarnation 1 settled", 0.5)
            incarnation = str(lab.fabric.control("new-incarnation")["result"])
            blob = harness.wait_until(lambda: first_settled(incarnation), WAIT,
                                      f"incarnation {incarnation} settled", 0.5)
        except AssertionError as err:
            raise AssertionError(f"{agent}: {err}; it said:\n{said()}") from None
        problems = [p for b in lab.fabric.status_blobs() for p in b["problems"]]
        assert problems == [], f"{agent}: {problems}"
        requests: list[dict[str, Any]] = lab.fabric.record().get("requests", [])
        status: dict[str, Any] = blob["status"]
        return status, requests


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Any, Any]]]:
    need_lab(harness.WAAGENT_PACKAGES)
    found = {}
    for agent in AGENTS:
        found[agent] = live_blob(tmp_path_factory.mktemp("parity"), agent)
    yield found


def shape(value: Any) -> Any:
    """Key sets at every level and the types of the leaves; a list's shape is the set of its
    elements' shapes."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted({json.dumps(shape(item), sort_keys=True) for item in value})
    return type(value).__name__


def differences(ours: Any, theirs: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, ours, theirs) of each value that differs (lists of other lengths: whole)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(ours.keys() & theirs.keys()):
            yield from differences(ours[key], theirs[key], f"{path}.{key}" if path else key)
    elif isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            yield from differences(mine, other, f"{path}[{index}]")
    elif ours != theirs:
        yield path, ours, theirs


def test_waagent_gets_past_imds(blobs: dict[str, tuple[Any, Any]]) -> None:
    """2.7.3's extension handler asks IMDS at 169.254.169.254 first: it got an answer (and
    then handled the goal state, as the settled blob shows)."""
    _, requests = blobs["waagent 2.7.3"]
    imds = [r for r in requests if r["route"] == "imds"]
    assert imds and all(r["status"] == 200 for r in imds), imds


def test_status_blobs_have_the_same_shape(blobs: dict[str, tuple[Any, Any]]) -> None:
    ours, theirs = blobs["ours"][0], blobs["waagent 2.7.3"][0]
    print("\nwaagent 2.7.3:", json.dumps(theirs, indent=1, sort_keys=True))
    print("ours:", json.dumps(ours, indent=1, sort_keys=True))
    assert shape(ours) == shape(theirs)


def test_values_differ_only_where_the_versions_do(blobs: dict[str, tuple[Any, Any]]) -> None:
    ours, theirs = blobs["ours"][0], blobs["waagent 2.7.3"][0]
    found = list(differences(ours, theirs))
    print("\nvalues that differ (path: ours | waagent 2.7.3):")
    for path, mine, other in found:
        reason = next((why for pattern, why in ALLOWED.items() if re.fullmatch(pattern, path)),
                      "NOT ALLOWED")
        print(f"  {path}: {json.dumps(mine)} | {json.dumps(other)}  ({reason})")
    unexplained = [(path, mine, other) for path, mine, other in found
                   if not any(re.fullmatch(pattern, path) for pattern in ALLOWED)]
    assert unexplained == []
