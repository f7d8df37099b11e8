"""`waagent -show-configuration` and `-version` against the published agent, without root.

tests/data/waagent-2.7.3/ holds conf files and what Debian's waagent 2.7.3 printed for
each; tests/integration/test_waagent_parity.py checks those captures against the real
binary where it is installed. tests/support/waagent_parity.py says what may differ.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

import pytest

from graph import cli
from tests.support.waagent_parity import CAPTURES, differences

DATA = CAPTURES


def show_configuration(capsys: pytest.CaptureFixture[str], conf: Path) -> list[str]:
    assert cli.main(["-show-configuration", f"-configuration-path:{conf}"]) == 0
    return capsys.readouterr().out.splitlines()


def assert_same_as_waagent(ours: list[str], theirs: list[str]) -> None:
    assert differences(ours, theirs) == []


@pytest.mark.parametrize("name", ["debian-waagent", "defaults", "nondefault"])
def test_show_configuration_prints_what_waagent_2_7_3_prints(
        capsys: pytest.CaptureFixture[str], name: str) -> None:
    theirs = (DATA / f"{name}.show-configuration.txt").read_text().splitlines()
    assert_same_as_waagent(show_configuration(capsys, DATA / f"{name}.conf"), theirs)


def test_none_means_the_code_default(capsys: pytest.CaptureFixture[str]) -> None:
    # waagent reads `Key=None` as unset, for every option: Lib.Dir=None is /var/lib/waagent.
    theirs = (DATA / "defaults.show-configuration.txt").read_text().splitlines()
    assert_same_as_waagent(show_configuration(capsys, DATA / "none.conf"), theirs)


def test_shipped_conf_differences_called_out_in_issue_16(
        capsys: pytest.CaptureFixture[str]) -> None:
    lines = show_configuration(capsys, DATA / "debian-waagent.conf")
    assert "OS.OpensslPath = /usr/bin/openssl" in lines
    assert "OS.RootDeviceScsiTimeout = 300" in lines
    assert "Extensions.GoalStateHistoryCleanupPeriod = 1800" in lines
    assert "Extensions.InitialGoalStatePeriod = 6" in lines
    assert "Debug.CgroupMonitorExpiryTime = 2022-03-31" in lines
    unset = show_configuration(capsys, DATA / "defaults.conf")
    assert "OS.RootDeviceScsiTimeout = None" in unset


def test_the_comparison_catches_each_kind_of_difference() -> None:
    theirs = ["A.X = 1", "B.Y = None", "Provisioning.RegenerateSshHostKeyPair = False"]
    assert differences([*theirs, "LBProbeResponder = True"], theirs) == []
    assert differences([*theirs[:2], "Provisioning.RegenerateSshHostKeyPair = True"],
                       theirs) == ["differs: waagent 'Provisioning.RegenerateSshHostKeyPair = "
                                   "False', ours 'Provisioning.RegenerateSshHostKeyPair = True'"]
    assert differences(["A.X = 2", "B.Y = None", "C.Z = 3"], theirs) == [
        "differs: waagent 'A.X = 1', ours 'A.X = 2'",
        "missing: Provisioning.RegenerateSshHostKeyPair = False",
        "not in waagent 2.7.3: C.Z = 3"]
    assert differences(["B.Y = None", "A.X = 1", theirs[2]], theirs) == [
        "order differs from waagent's (sorted by name)"]


def test_version_has_waagent_2_7_3_layout(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    assert cli.main(["-version", f"root={tmp_path}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # WALinuxAgent-2.7.3.0 running on debian 12 / Python: 3.11.2 / Goal state agent: 2.7.3.0
    assert lines == [f"{cli.AGENT_NAME}-{cli.AGENT_VERSION} running on debian 12",
                     f"Python: {platform.python_version()}",
                     f"Goal state agent: {cli.AGENT_VERSION}"]


def test_version_without_os_release_still_prints(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-version", f"root={tmp_path}"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(rf"{re.escape(cli.AGENT_NAME)}-\S+ running on \S+ ?\S*", first), first
