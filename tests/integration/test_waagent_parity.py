"""Drop-in parity: `waagent -show-configuration` and `-version` against the real waagent 2.7.3.

Debian's `waagent` package (installed by scripts/setup.sh, never started) gives the
reference. For -show-configuration it only reads the conf, but its start-up also makes
Extension.LogDir and would log to /var/log/waagent.log and /dev/console. So it runs in
namespaces of its own: a network namespace with nothing in it, and a mount namespace
where / is read-only, /var/log is a fresh tmpfs and /dev/console is /dev/null. The host
sees none of it, and any other write would fail and show up in its output.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.waagent_parity import CAPTURES, differences

pytestmark = pytest.mark.root

REAL_WAAGENT = Path("/usr/sbin/waagent")
OURS = Path(sys.executable).parent / "waagent"
DATA = CAPTURES

# Run by `sh -c` inside the new namespaces; "$@" is the waagent command line.
ISOLATED = """
set -e
mount -t tmpfs -o mode=755 waagent-parity /var/log
if [ -e /dev/console ]; then mount --bind /dev/null /dev/console; fi
mount -o remount,bind,ro /
cd "$HOME"
/usr/sbin/waagent "$@"
echo "--- /var/log"
find /var/log -mindepth 1
"""

# Conf variants beyond the shipped file and tests/data's captures.
VARIANTS = {
    "scsi-timeout-unset": "# OS.RootDeviceScsiTimeout not set\nOS.OpensslPath=None\n",
    "scsi-timeout-none": "OS.RootDeviceScsiTimeout=None\nOS.RootDeviceScsiTimeoutPeriod=60\n",
    "scsi-timeout-set": "OS.RootDeviceScsiTimeout=45\nOS.OpensslPath=/opt/ssl/bin/openssl\n",
    "debug-set": ("Debug.CgroupLogMetrics=y\nDebug.EnableFastTrack=n\n"
                  "Debug.CgroupMonitorExpiryTime=2031-12-31\nDebug.AgentCpuQuota=33\n"
                  "Debug.AutoUpdateNormalFrequency=3600\n"),
}


def real_waagent(tmp_path: Path, *args: str) -> tuple[list[str], list[str]]:
    """The real waagent's stdout lines, and what it left in its private /var/log."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the real waagent runs in mount and network namespaces")
    if not REAL_WAAGENT.exists():
        pytest.skip(f"{REAL_WAAGENT} is missing: apt-get install waagent (scripts/setup.sh)")
    if shutil.which("unshare") is None:
        pytest.skip("missing tool unshare (util-linux)")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    out = subprocess.run(
        ["unshare", "--mount", "--net", "--propagation", "private", "--",
         "sh", "-c", ISOLATED, "sh", *args],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=home)
    assert out.returncode == 0, out.stderr
    shown, _, logs = out.stdout.partition("--- /var/log\n")
    return shown.splitlines(), logs.split()


def ours(tmp_path: Path, *args: str) -> list[str]:
    out = subprocess.run([str(OURS), *args], capture_output=True, text=True, timeout=120,
                         check=False, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def conf_files(tmp_path: Path) -> dict[str, Path]:
    files = {"shipped /etc/waagent.conf": Path("/etc/waagent.conf")}
    files.update({f.stem: f for f in sorted(DATA.glob("*.conf"))})
    for name, text in VARIANTS.items():
        files[name] = tmp_path / f"{name}.conf"
        files[name].write_text(text)
    return files


def test_show_configuration_matches_waagent_2_7_3(tmp_path: Path) -> None:
    for name, conf in conf_files(tmp_path).items():
        theirs, left = real_waagent(tmp_path, "-show-configuration",
                                    f"-configuration-path:{conf}")
        assert len(theirs) >= 60 and all(" = " in line for line in theirs), (name, theirs)
        # What its start-up made, and nothing else: no log file, so nothing went wrong.
        text = conf.read_text()
        log_dir = re.search(r"^Extension\.LogDir=(\S+)", text, re.M)
        assert left == [log_dir.group(1) if log_dir else "/var/log/azure"], (name, left)
        mine = ours(tmp_path, "-show-configuration", f"-configuration-path:{conf}")
        assert differences(mine, theirs) == [], name


def test_captured_references_are_what_the_real_waagent_prints(tmp_path: Path) -> None:
    # The unit tests compare against tests/data's captures; they must stay true.
    for capture in sorted(DATA.glob("*.show-configuration.txt")):
        conf = DATA / capture.name.replace(".show-configuration.txt", ".conf")
        theirs, _ = real_waagent(tmp_path, "-show-configuration", f"-configuration-path:{conf}")
        assert theirs == capture.read_text().splitlines(), capture.name


def test_version_has_the_layout_of_waagent_2_7_3(tmp_path: Path) -> None:
    theirs, left = real_waagent(tmp_path, "-version")
    assert left == []
    mine = ours(tmp_path, "-version")
    assert len(mine) == len(theirs) == 3, (mine, theirs)
    running = re.compile(r"(\S+)-(\S+) running on (.*)")
    their_first, my_first = running.fullmatch(theirs[0]), running.fullmatch(mine[0])
    assert their_first and my_first, (theirs[0], mine[0])
    assert my_first.group(3) == their_first.group(3)  # "debian 12"
    assert theirs[1].startswith("Python: ")
    assert mine[1] == f"Python: {platform.python_version()}"
    assert re.fullmatch(r"Goal state agent: \S+", theirs[2])
    assert re.fullmatch(r"Goal state agent: \S+", mine[2])
