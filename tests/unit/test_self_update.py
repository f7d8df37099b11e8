"""Self-update: the version choice (latest, RSM pins), the launcher's choice and its
crash rule, the agent package's checks, the install (graph/update.py, graph/launcher.py,
graph/agent_package.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from graph import launcher, update
from graph.agent_package import BadAgentPackage, build_package, verify_package
from graph.context import Context, make_context
from graph.launcher import CRASH_WINDOW, Record, pick
from graph.update import Choice, choose_version, update_status
from graph.version import AGENT_NAME
from wire.extensions_config import GAFamily, parse_extensions_config

REPO = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000.0


def family(version: str | None = None, *, from_rsm: bool | None = None,
           rsm_vm: bool = False) -> GAFamily:
    return GAFamily("Prod", ("http://manifest",), version, bool(from_rsm), rsm_vm)


def choose(fam: GAFamily | None, offered: list[str], running: str = "1.1.0", base: str = "1.0.0",
           blacklisted: tuple[str, ...] = (), rsm: bool = True) -> Choice:
    return choose_version(fam, offered, running=running, base=base, blacklisted=blacklisted,
                          rsm=rsm)


# -- the version to run ------------------------------------------------------------------

def test_latest_takes_the_newest_offered_above_the_running_version() -> None:
    assert choose(family(), ["1.0.0", "1.2.0", "1.10.0", "1.3.0"]).version == "1.10.0"
    assert choose(family(), ["1.0.0", "1.1.0"]).version is None  # nothing newer
    assert choose(family(), ["0.9.0"]).version is None  # never down by itself


def test_latest_skips_blacklisted_versions_and_odd_version_strings() -> None:
    assert choose(family(), ["1.2.0", "1.3.0"], blacklisted=("1.3.0",)).version == "1.2.0"
    assert choose(family(), ["1.3.0"], blacklisted=("1.3.0",)).version is None
    assert choose(family(), ["1.3.0-beta", "latest"]).version is None


def test_no_family_no_update() -> None:
    assert choose(None, ["9.0.0"]).version is None


def test_a_version_pinned_by_rsm_wins_over_latest() -> None:
    pinned = family("1.2.0", from_rsm=True, rsm_vm=True)
    chosen = choose(pinned, ["1.2.0", "1.5.0"])
    assert chosen.version == "1.2.0" and chosen.requested == "1.2.0" and not chosen.error


def test_rsm_may_go_down_but_never_below_the_installed_agent() -> None:
    down = choose(family("1.0.5", from_rsm=True, rsm_vm=True), ["1.0.5", "1.5.0"],
                  running="1.1.0", base="1.0.0")
    assert down.version == "1.0.5"
    below = choose(family("0.9.0", from_rsm=True, rsm_vm=True), ["0.9.0"], base="1.0.0")
    assert below.version is None and below.error and "below the installed agent" in below.why


def test_rsm_pin_that_cannot_be_had_is_an_error() -> None:
    not_offered = choose(family("1.4.0", from_rsm=True, rsm_vm=True), ["1.5.0"])
    assert not_offered.version is None and not_offered.error
    bad = choose(family("1.4.0", from_rsm=True, rsm_vm=True), ["1.4.0"], blacklisted=("1.4.0",))
    assert bad.version is None and bad.error and "blacklisted" in bad.why
    missing = choose(family(None, from_rsm=True, rsm_vm=True), ["1.4.0"])
    assert missing.version is None and missing.error


def test_rsm_vm_with_a_version_not_from_rsm_takes_no_update() -> None:
    # waagent: a VM enrolled in RSM upgrades only takes versions RSM deploys.
    assert choose(family("1.5.0", from_rsm=False, rsm_vm=True), ["1.5.0"]).version is None


def test_a_vm_not_enabled_for_rsm_or_rsm_off_takes_the_latest() -> None:
    assert choose(family("1.2.0", from_rsm=True, rsm_vm=False), ["1.2.0", "1.5.0"]).version == "1.5.0"
    assert choose(family("1.2.0", from_rsm=True, rsm_vm=True), ["1.2.0", "1.5.0"],
                  rsm=False).version == "1.5.0"


def test_running_the_pinned_version_is_success_in_update_status() -> None:
    chosen = choose(family("1.1.0", from_rsm=True, rsm_vm=True), ["1.1.0"], running="1.1.0")
    assert chosen.version is None
    assert update_status(chosen, "1.1.0") == {
        "expectedVersion": "1.1.0", "status": "Success", "code": 0,
        "formattedMessage": {"lang": "en-US", "message": "running 1.1.0"}}
    wanted = choose(family("1.2.0", from_rsm=True, rsm_vm=True), ["1.2.0"])
    status = update_status(wanted, "1.1.0")
    assert status is not None and status["status"] == "Error" and status["code"] == 1
    assert update_status(choose(family(), ["1.2.0"]), "1.1.0") is None  # no pin: no updateStatus


def test_rsm_properties_are_read_from_extensions_config() -> None:
    document = """<Extensions goalStateIncarnation="2"><GuestAgentExtension><GAFamilies>
      <GAFamily><Name>Prod</Name><Version>1.2.0</Version><IsVersionFromRSM>true</IsVersionFromRSM>
      <IsVMEnabledForRSMUpgrades>true</IsVMEnabledForRSMUpgrades>
      <Uris><Uri>http://127.0.0.1/m.xml</Uri></Uris></GAFamily></GAFamilies></GuestAgentExtension>
      <Plugins/></Extensions>"""
    found = parse_extensions_config(document).ga_family("prod")
    assert found is not None
    assert choose(found, ["1.2.0", "1.9.0"]).version == "1.2.0"


def test_debug_enable_ga_versioning_turns_rsm_off_only_when_written(tmp_path: Path) -> None:
    assert update.rsm_enabled(context(tmp_path).conf)
    assert not update.rsm_enabled(context(tmp_path, "Debug.EnableGAVersioning=n\n").conf)
    assert update.rsm_enabled(context(tmp_path, "Debug.EnableGAVersioning=y\n").conf)


# -- the launcher's choice and the crash rule ----------------------------------------------

def launches(*ages: float, ended: bool = False) -> tuple[dict[str, Any], ...]:
    return tuple({"at": NOW - age, "pid": 1, "ended": NOW if ended else None} for age in ages)


def test_launcher_runs_the_newest_good_version_above_its_own() -> None:
    installed = {"1.1.0": Record(), "1.3.0": Record(), "1.2.0": Record()}
    assert pick(installed, "1.0.0", NOW) == ("1.3.0", [])
    assert pick(installed, "1.3.0", NOW) == (None, [])  # nothing above the installed agent
    assert pick({}, "1.0.0", NOW) == (None, [])


def test_launcher_skips_blacklisted_and_withdrawn_versions() -> None:
    installed = {"1.3.0": Record(blacklisted={"reason": "crashes"}),
                 "1.2.0": Record(blacklisted={"reason": "older asked", "withdrawn": True}),
                 "1.1.0": Record()}
    assert pick(installed, "1.0.0", NOW) == ("1.1.0", [])


def test_three_crashes_within_five_minutes_blacklist_and_roll_back() -> None:
    installed = {"1.2.0": Record(launches=launches(200, 100, 10)), "1.1.0": Record()}
    assert pick(installed, "1.0.0", NOW) == ("1.1.0", ["1.2.0"])
    only = {"1.2.0": Record(launches=launches(200, 100, 10))}
    assert pick(only, "1.0.0", NOW) == (None, ["1.2.0"])  # back to the installed agent


def test_crashes_counted_only_within_the_window_and_clean_exits_are_no_crashes() -> None:
    old = Record(launches=launches(CRASH_WINDOW + 60, CRASH_WINDOW + 30, 10))
    assert pick({"1.2.0": old}, "1.0.0", NOW) == ("1.2.0", [])
    clean = Record(launches=launches(200, 100, 10, ended=True))
    assert pick({"1.2.0": clean}, "1.0.0", NOW) == ("1.2.0", [])
    two = Record(launches=launches(100, 10))
    assert pick({"1.2.0": two}, "1.0.0", NOW) == ("1.2.0", [])


# -- the package and its install -----------------------------------------------------------

@pytest.fixture(scope="module")
def package() -> bytes:
    return build_package(REPO, "7.1.0")


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rezip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_package_holds_the_agent_and_says_its_version(package: bytes) -> None:
    files = members(package)
    assert json.loads(files["agent.json"]) == {"name": AGENT_NAME, "version": "7.1.0"}
    assert b'AGENT_VERSION = "7.1.0"' in files["graph/version.py"]
    assert {"graph/cli.py", "graph/launcher.py", "tasks/status.py", "wire/artifacts.py",
            "graph/templates/waagent.service", "dodo.py"} <= set(files)
    assert not any("__pycache__" in name or name.startswith("fabric/") for name in files)
    assert verify_package(package, "7.1.0", where="p.zip").version == "7.1.0"
    assert build_package(REPO, "7.1.0") == package  # reproducible


def test_package_whose_versions_disagree_is_refused(package: bytes) -> None:
    with pytest.raises(BadAgentPackage, match="offered version 7.2.0"):
        verify_package(package, "7.2.0", where="p.zip")
    files = members(package)
    files["graph/version.py"] = files["graph/version.py"].replace(b"7.1.0", b"7.0.9")
    with pytest.raises(BadAgentPackage, match="7.0.9"):
        verify_package(rezip(files), "7.1.0", where="p.zip")
    with pytest.raises(BadAgentPackage, match="not an agent package"):
        verify_package(rezip({"HandlerManifest.json": b"[]"}), "7.1.0", where="p.zip")
    with pytest.raises(ValueError):
        build_package(REPO, "7.1.0; rm -rf /")


def context(tmp_path: Path, conf: str = "") -> Context:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/waagent.conf").write_text(conf)
    return make_context({"root": str(tmp_path)})


def test_install_then_the_launcher_finds_it(tmp_path: Path, package: bytes) -> None:
    ctx = context(tmp_path)
    update.install(ctx, "7.1.0", package)
    directory = tmp_path / f"var/lib/waagent/{AGENT_NAME}-7.1.0"
    assert (directory / "graph/cli.py").is_file()
    assert launcher.installed_versions(ctx) == {"7.1.0": Record()}
    # A directory that is not a complete install is no version.
    (tmp_path / f"var/lib/waagent/{AGENT_NAME}-7.2.0").mkdir()
    assert set(launcher.installed_versions(ctx)) == {"7.1.0"}


def test_install_refuses_a_package_of_another_version(tmp_path: Path, package: bytes) -> None:
    ctx = context(tmp_path)
    with pytest.raises(BadAgentPackage):
        update.install(ctx, "7.2.0", package)
    assert not (tmp_path / f"var/lib/waagent/{AGENT_NAME}-7.2.0").exists()


def test_blacklist_and_withdraw_are_kept_in_error_json(tmp_path: Path, package: bytes) -> None:
    ctx = context(tmp_path)
    update.install(ctx, "7.1.0", package)
    update.set_withdrawn(ctx, "7.1.0", "the platform asked for 7.0.0")
    record = launcher.installed_versions(ctx)["7.1.0"]
    assert record.blacklisted is not None and record.blacklisted["withdrawn"]
    update.set_withdrawn(ctx, "7.1.0", None)  # asked for again
    assert launcher.installed_versions(ctx)["7.1.0"].blacklisted is None
    launcher.blacklist(ctx, "7.1.0", "3 crashes within 5 minutes")
    update.set_withdrawn(ctx, "7.1.0", None)  # a blacklisting is for good
    saved = json.loads((launcher.version_dir(ctx, "7.1.0") / "error.json").read_text())
    assert saved["blacklisted"]["reason"] == "3 crashes within 5 minutes"


def test_launch_records_a_start_and_a_clean_exit_marks_it(
        tmp_path: Path, package: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context(tmp_path)
    update.install(ctx, "7.1.0", package)
    executed: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(launcher.os, "execve", lambda *a: executed.append(a))
    monkeypatch.delenv(launcher.LAUNCHER_ENV, raising=False)
    monkeypatch.setenv("PYTHONPATH", "/opt/agent-libs")
    launcher.hand_over({"root": str(tmp_path)})
    assert len(executed) == 1
    _, argv, env = executed[0]
    directory = launcher.version_dir(ctx, "7.1.0")
    assert argv[1:3] == ["-m", "graph.cli"]
    assert env["PYTHONPATH"] == f"{directory}:/opt/agent-libs"  # its code first, then the libraries'
    assert json.loads(env[launcher.LAUNCHER_ENV])["env"]["PYTHONPATH"] == "/opt/agent-libs"
    record = launcher.load_record(directory)
    assert len(record.launches) == 1 and record.crashes(record.launches[0]["at"]) == 1
    # The started version's daemon marks its launch ended when it stops on its own.
    monkeypatch.setenv(launcher.LAUNCHER_ENV, env[launcher.LAUNCHER_ENV])
    assert launcher.base_version() != "7.1.0"
    launcher.record_clean_exit(ctx)
    assert launcher.load_record(directory).crashes(NOW * 2) == 0
    # In a started version, hand_over does nothing.
    launcher.hand_over({"root": str(tmp_path)})
    assert len(executed) == 1


def test_launcher_runs_the_installed_agent_when_auto_update_is_off(
        tmp_path: Path, package: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context(tmp_path, "AutoUpdate.Enabled=n\n")
    update.install(ctx, "7.1.0", package)
    monkeypatch.setattr(launcher.os, "execve", lambda *a: pytest.fail("no version is run"))
    monkeypatch.delenv(launcher.LAUNCHER_ENV, raising=False)
    launcher.hand_over({"root": str(tmp_path)})


def test_updater_looks_at_nothing_with_auto_update_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    looked: list[str] = []
    monkeypatch.setattr(update.AgentUpdater, "family", staticmethod(
        lambda ctx, state: looked.append("family") or family()))
    monkeypatch.setattr(update.AgentUpdater, "check", lambda *a: looked.append("manifest") or False)
    assert not update.AgentUpdater().tick(context(tmp_path, "AutoUpdate.Enabled=n\n"), object())
    assert looked == []
    assert not update.AgentUpdater().tick(
        context(tmp_path, "AutoUpdate.UpdateToLatestVersion=n\n"), object())
    assert looked == ["family"]  # read, nothing downloaded
    updater = update.AgentUpdater(clock=lambda: 100.0)
    state = object()
    updater.tick(context(tmp_path), state)
    updater.tick(context(tmp_path), state)  # the same goal state, before Autoupdate.Frequency
    assert looked == ["family", "family", "manifest"]


@pytest.fixture
def agent_logger() -> Any:
    """The "waagent" logger as it was: configure_logging replaces its handlers."""
    import logging

    logger = logging.getLogger("waagent")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.propagate, logger.level = saved[1], saved[2]


def test_the_launchers_choices_are_in_the_agent_log(
        tmp_path: Path, package: bytes, monkeypatch: pytest.MonkeyPatch,
        agent_logger: Any) -> None:
    # hand_over runs before the daemon configures logging: its lines were lost (the
    # blacklisting reached stderr only, the version it runs nowhere).
    ctx = context(tmp_path, "Logs.Console=n\n")
    (tmp_path / "var/log").mkdir(parents=True)
    update.install(ctx, "7.1.0", package)
    directory = launcher.version_dir(ctx, "7.1.0")
    launcher.save_record(ctx, directory, Record(tuple(
        {"at": NOW, "pid": 1, "ended": None} for _ in range(3))))
    monkeypatch.setattr(launcher.time, "time", lambda: NOW + 60)
    monkeypatch.setattr(launcher.os, "execve", lambda *a: pytest.fail("no version is run"))
    monkeypatch.delenv(launcher.LAUNCHER_ENV, raising=False)
    launcher.hand_over({"root": str(tmp_path)})
    for handler in agent_logger.handlers:
        handler.flush()
    text = (tmp_path / "var/log/waagent.log").read_text()
    assert f"{AGENT_NAME}-7.1.0 blacklisted: 3 crashes within 5 minutes" in text

    update.install(ctx, "7.2.0", build_package(REPO, "7.2.0"))
    monkeypatch.setattr(launcher.os, "execve", lambda *a: None)
    launcher.hand_over({"root": str(tmp_path)})
    for handler in agent_logger.handlers:
        handler.flush()
    assert f"launcher: running {AGENT_NAME}-7.2.0 from /var/lib/waagent/{AGENT_NAME}-7.2.0" \
        in (tmp_path / "var/log/waagent.log").read_text()


def test_the_daemon_holds_no_zipfile_until_a_package_comes() -> None:
    # graph.update (and so graph.agent_package) is imported at every daemon start.
    out = subprocess.run([sys.executable, "-c", "import sys, graph.update; print('zipfile' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
