"""End to end: extension handlers under `waagent -daemon` in the VM (Debian 12), driven by the
fabric's control channel while the daemon runs.

One daemon lives the whole timeline (the tests share the VM and run in file order): the
initial goal state installs and enables the probe handler Test.Probe and a dependsOn chain
(Test.ChainA level 1 <- Test.ChainB level 2 <- Test.ChainC level 3), which runs in level
order and then leaves the goal state; a settings change enables with the new sequence number;
an update to 1.1.0 and a downgrade back to 1.0.0 run waagent's sequence; disable, then
uninstall; then three handlers that fail: one whose enable outlives its timeout, one that
exits 3, one that writes a malformed status file. The probe (tests/e2e/probe_handler.py)
records every command it ran and the environment each saw.

The daemon runs with the test-only variables of tasks/extensions.py, so that no wait is
waagent's length: a command times out after HANDLER_TIMEOUT s, a dependency waits at most
DEPENDENCY_TIMEOUT s, downloads retry after 0.1 s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fabric.scenario import default_scenario_path
from tests.e2e import harness
from tests.e2e.conftest import checked_lab, need_lab
from tests.e2e.probe_handler import build_probe, operations, order, probe_env

pytestmark = [pytest.mark.e2e, pytest.mark.root]

CONF = """\
Provisioning.Agent=waagent
Provisioning.SshHostKeyPairType=ed25519
Provisioning.RegenerateSshHostKeyPair=y
ResourceDisk.Format=n
Extensions.GoalStatePeriod=1
Extensions.InitialGoalStatePeriod=1
"""
HANDLER_TIMEOUT = 8
DEPENDENCY_TIMEOUT = 60
DAEMON = ["env", f"WAAGENT_HANDLER_TIMEOUT={HANDLER_TIMEOUT}",
          f"WAAGENT_DEPENDENCY_TIMEOUT={DEPENDENCY_TIMEOUT}", "WAAGENT_ARTIFACT_BACKOFF=0.1",
          "waagent", "-daemon"]
PROBE = "Test.Probe"
CHAIN = ("Test.ChainA", "Test.ChainB", "Test.ChainC")
LIB = "var/lib/waagent"
WAIT = 180.0
# Bodies of failing handlers' enable commands (run before the probe's success status).
FAILING = {
    "Test.Timeout": "sleep 600",
    "Test.Crash": "echo 'the probe crashes' >&2; exit 3",
    "Test.Malformed": 'mkdir -p "$here/status"; printf \'[{"status": {"status": \' '
                      '> "$here/status/$seq.status"; exit 0',
}


@pytest.fixture(scope="module")
def zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("zips")
    found = {f"{PROBE} {v}": build_probe(directory / f"probe-{v}.zip", PROBE)
             for v in ("1.0.0", "1.1.0")}
    for name in CHAIN:
        found[name] = build_probe(directory / f"{name}.zip", name)
    for name, body in FAILING.items():
        found[name] = build_probe(directory / f"{name}.zip", name, bodies={"enable": body})
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory,
        zips: dict[str, Path]) -> Iterator[harness.Lab]:
    need_lab()
    work = tmp_path_factory.mktemp("e2e-extensions")
    data = yaml.safe_load(default_scenario_path().read_text())
    data["extensions"] = [
        {"name": PROBE, "version": "1.0.0", "package": str(zips[f"{PROBE} 1.0.0"]),
         "public_settings": {"n": 1}, "protected_settings": {"secret": "s1"}},
        *({"name": name, "version": "1.0.0", "package": str(zips[name]),
           "public_settings": {"link": level}, "dependency_level": level,
           "depends_on": [CHAIN[level - 2]] if level > 1 else []}
          for level, name in enumerate(CHAIN, start=1))]
    scenario = work / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(data))
    with checked_lab(work, scenario, conf=CONF) as booted:
        booted.vm.dhcp()
        yield booted


@pytest.fixture(scope="module")
def daemon(lab: harness.Lab) -> Iterator[Any]:
    process = lab.vm.popen(DAEMON, lab.work / "daemon.log")
    yield process
    harness.stop(process)


def said(lab: harness.Lab) -> str:
    return (lab.work / "daemon.log").read_text(errors="replace")[-3000:]


def wait(lab: harness.Lab, what: str, predicate: Any, timeout: float = WAIT) -> Any:
    try:
        return harness.wait_until(predicate, timeout, what, interval=0.2)
    except AssertionError as err:
        raise AssertionError(f"{err}; the daemon said:\n{said(lab)}") from None


def handler_in_blob(lab: harness.Lab, name: str) -> dict[str, Any] | None:
    """The handler in the last status blob (None: not reported)."""
    blobs = lab.fabric.status_blobs()
    if not blobs:
        return None
    handlers = blobs[-1]["status"]["aggregateStatus"]["handlerAggregateStatus"]
    return next((h for h in handlers if h["handlerName"] == name), None)


def settings_status(handler: dict[str, Any] | None) -> dict[str, Any]:
    found: dict[str, Any] = (handler or {}).get("runtimeSettingsStatus", {}).get(
        "settingsStatus", {}).get("status", {})
    return found


def reported(lab: harness.Lab, name: str, version: str, message: str) -> dict[str, Any]:
    """Wait for the probe's status `message` for `version` of `name`, Ready, in the blob."""
    def found() -> dict[str, Any] | None:
        handler = handler_in_blob(lab, name)
        if handler and handler["handlerVersion"] == version and handler["status"] == "Ready" \
                and settings_status(handler).get("formattedMessage", {}).get("message") \
                == message:
            return handler
        return None
    handler: dict[str, Any] = wait(lab, f"{name} {version}: {message!r} in the status blob",
                                   found)
    return handler


def change(lab: harness.Lab, name: str, **fields: Any) -> list[str]:
    """Publish a change of the handler; the probe operations seen before it."""
    before = operations(lab.root, name)
    lab.fabric.control("set-extension", name=name, **fields)
    return before


def since(lab: harness.Lab, name: str, before: list[str]) -> list[str]:
    return operations(lab.root, name)[len(before):]


def test_install_and_enable(lab: harness.Lab, daemon: Any) -> None:
    handler = reported(lab, PROBE, "1.0.0", "probe enable 1.0.0 seq 0")
    assert handler["runtimeSettingsStatus"]["sequenceNumber"] == 0
    assert settings_status(handler)["status"] == "success"
    ran = operations(lab.root, PROBE)
    assert ran[:2] == ["1.0.0 install 0", "1.0.0 enable 0"]
    assert set(ran[2:]) <= {"1.0.0 enable 0"}  # once per new goal state: mrseq skips them
    directory = lab.root / LIB / f"{PROBE}-1.0.0"
    assert (directory / "config/HandlerState").read_text() == "Enabled"
    settings = json.loads((directory / "config/0.settings").read_text())
    assert settings["runtimeSettings"][0]["handlerSettings"]["publicSettings"] == {"n": 1}
    env = probe_env(lab.root, PROBE, "1.0.0", "enable")
    assert env is not None
    assert env["ConfigSequenceNumber"] == "0"
    assert env["AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE"] == "NOT_RUN"
    assert env["AZURE_GUEST_AGENT_EXTENSION_PATH"] == f"/{LIB}/{PROBE}-1.0.0"
    assert env["AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS"] == harness.FABRIC_ADDRESS
    assert (lab.root / "var/log/azure" / PROBE / "CommandExecution.log").exists()


def test_a_depends_on_chain_runs_in_level_order(lab: harness.Lab, daemon: Any) -> None:
    for name in CHAIN:
        reported(lab, name, "1.0.0", "probe enable 1.0.0 seq 0")
    commands = order(lab.root)

    def first(entry: str) -> int:
        return commands.index(entry)
    a, b, c = CHAIN
    # Nothing of a level is handled before the level below succeeded.
    assert first(f"{a} 1.0.0 enable") < first(f"{b} 1.0.0 install") \
        < first(f"{b} 1.0.0 enable") < first(f"{c} 1.0.0 install") \
        < first(f"{c} 1.0.0 enable"), commands
    # The chain leaves the goal state: each is disabled and uninstalled, and removed.
    for name in reversed(CHAIN):
        lab.fabric.control("remove-extension", name=name)
    for name in CHAIN:
        wait(lab, f"{name} removed", lambda n=name: not list((lab.root / LIB).glob(f"{n}-*"))
             and handler_in_blob(lab, n) is None)
        assert operations(lab.root, name)[-2:] == ["1.0.0 disable 0", "1.0.0 uninstall 0"]


def test_a_settings_change_enables_with_the_new_seq(lab: harness.Lab, daemon: Any) -> None:
    before = change(lab, PROBE, public_settings={"n": 2}, protected_settings={"secret": "s2"})
    handler = reported(lab, PROBE, "1.0.0", "probe enable 1.0.0 seq 1")
    assert handler["runtimeSettingsStatus"]["sequenceNumber"] == 1
    assert since(lab, PROBE, before) == ["1.0.0 enable 1"]
    config = lab.root / LIB / f"{PROBE}-1.0.0/config"
    settings = json.loads((config / "1.settings").read_text())
    assert settings["runtimeSettings"][0]["handlerSettings"]["publicSettings"] == {"n": 2}
    assert (probe_env(lab.root, PROBE, "1.0.0", "enable") or {})["ConfigSequenceNumber"] == "1"
    assert (lab.root / LIB / f"{PROBE}-1.0.0/mrseq").read_text().strip() == "1"


def test_an_update_runs_waagents_sequence(lab: harness.Lab, daemon: Any,
                                          zips: dict[str, Path]) -> None:
    before = change(lab, PROBE, version="1.1.0", package=str(zips[f"{PROBE} 1.1.0"]))
    reported(lab, PROBE, "1.1.0", "probe enable 1.1.0 seq 1")
    assert since(lab, PROBE, before) == ["1.0.0 disable 1", "1.1.0 update 1",
                                         "1.0.0 uninstall 1", "1.1.0 install 1",
                                         "1.1.0 enable 1"]
    update = probe_env(lab.root, PROBE, "1.1.0", "update") or {}
    assert update["VERSION"] == "1.1.0"
    assert update["AZURE_GUEST_AGENT_UPDATING_FROM_VERSION"] == "1.0.0"
    assert update["AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE"] == "0"
    install = probe_env(lab.root, PROBE, "1.1.0", "install") or {}
    assert install["AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE"] == "0"
    assert not (lab.root / LIB / f"{PROBE}-1.0.0").exists()
    assert (lab.root / LIB / f"{PROBE}-1.1.0/config/HandlerState").read_text() == "Enabled"


def test_a_downgrade_runs_the_old_versions_update(lab: harness.Lab, daemon: Any,
                                                  zips: dict[str, Path]) -> None:
    before = change(lab, PROBE, version="1.0.0", package=str(zips[f"{PROBE} 1.0.0"]))
    reported(lab, PROBE, "1.0.0", "probe enable 1.0.0 seq 1")
    assert since(lab, PROBE, before) == ["1.1.0 disable 1", "1.1.0 update 1",
                                         "1.1.0 uninstall 1", "1.0.0 install 1",
                                         "1.0.0 enable 1"]
    # waagent 2.7.3: on a downgrade the old version's update is told the version it goes to.
    update = probe_env(lab.root, PROBE, "1.1.0", "update") or {}
    assert update["VERSION"] == "1.0.0"
    assert update["AZURE_GUEST_AGENT_UPDATING_FROM_VERSION"] == "1.0.0"
    assert not (lab.root / LIB / f"{PROBE}-1.1.0").exists()


def test_disable_then_uninstall(lab: harness.Lab, daemon: Any) -> None:
    directory = lab.root / LIB / f"{PROBE}-1.0.0"
    before = change(lab, PROBE, state="disabled")
    wait(lab, "the probe disabled", lambda: (directory / "config/HandlerState").read_text()
         == "Installed" and (handler_in_blob(lab, PROBE) or {}).get("status") == "NotReady")
    assert since(lab, PROBE, before) == ["1.0.0 disable 1"]
    before = change(lab, PROBE, state="uninstall")
    wait(lab, "the probe uninstalled", lambda: not directory.exists()
         and handler_in_blob(lab, PROBE) is None)
    assert since(lab, PROBE, before) == ["1.0.0 uninstall 1"]  # Installed: no disable first
    assert not (lab.root / LIB / f"{PROBE}__1.0.0.zip").exists()


def test_handlers_that_time_out_crash_or_write_a_malformed_status(
        lab: harness.Lab, daemon: Any, zips: dict[str, Path]) -> None:
    for name in FAILING:
        lab.fabric.control("set-extension", name=name, version="1.0.0",
                           package=str(zips[name]), public_settings={"fails": True})

    def failed(name: str) -> dict[str, Any] | None:
        handler = handler_in_blob(lab, name)
        return handler if handler and handler["status"] == "NotReady" else None

    timeout = wait(lab, "the timeout's status", lambda: failed("Test.Timeout"))
    assert timeout["code"] == 1011, timeout
    assert "Timeout(" in timeout["formattedMessage"]["message"], timeout
    crash = wait(lab, "the crash's status", lambda: failed("Test.Crash"))
    assert crash["code"] == 1009, crash
    assert "Non-zero exit code: 3" in crash["formattedMessage"]["message"], crash
    assert "the probe crashes" in crash["formattedMessage"]["message"], crash
    malformed = wait(lab, "the malformed status", lambda: settings_status(
        handler_in_blob(lab, "Test.Malformed")).get("status") == "error"
        and handler_in_blob(lab, "Test.Malformed"))
    status = settings_status(malformed)
    assert status["code"] == 1012, status
    assert "incorrect format" in status["formattedMessage"]["message"], status
    # The timed-out command's whole process group was killed: no `sleep 600` is left.
    sleeping = [pid for pid in harness.namespace_pids(lab.net.vm_ns)
                if b"sleep\x00600" in _cmdline(pid)]
    assert sleeping == []
    # The daemon goes on: its loop still uploads, with status blobs of the right shape.
    count = len(lab.fabric.status_blobs())
    wait(lab, "two more status blobs", lambda: len(lab.fabric.status_blobs()) >= count + 2)
    assert [b["problems"] for b in lab.fabric.status_blobs() if b["problems"]] == []
    assert daemon.poll() is None, said(lab)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
