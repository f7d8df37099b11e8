"""serialconsole on an offline image root (a real Debian root) with commands in its chroot.

The root has no GRUB installed (grub-mkconfig needs the image's block devices): its
`update-grub` is a stand-in script that regenerates grub.cfg from /etc/default/grub,
as GRUB's does. That it ran inside the chroot shows in the root's grub.cfg; the host's
boot loader files are compared before and after.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.debian_root import debian_root  # noqa: F401 - the fixture

BIN = Path(sys.executable).parent
HOST_BOOT_FILES = ("/etc/default/grub", "/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
pytestmark = pytest.mark.root

DEFAULT_GRUB = """\
GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=tty1 rootdelay=300"
"""
UPDATE_GRUB = """\
#!/bin/sh
# Stand-in for GRUB's update-grub: a grub.cfg from /etc/default/grub, as grub-mkconfig makes.
set -e
. /etc/default/grub
printf 'menuentry "Debian" {\\n  linux /vmlinuz root=/dev/sda1 ro %s %s\\n}\\n' \\
  "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT" > /boot/grub/grub.cfg
"""


def host_boot_files() -> dict[str, str]:
    state = {}
    for name in HOST_BOOT_FILES:
        try:
            state[name] = hashlib.sha256(Path(name).read_bytes()).hexdigest()
        except FileNotFoundError:
            state[name] = "absent"
    return state


def waagent(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "waagent"), *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, check=False, cwd="/")


def test_serial_console_in_an_image_root(debian_root: Path) -> None:  # noqa: F811
    root = debian_root
    (root / "etc/default/grub").write_text(DEFAULT_GRUB)
    (root / "boot/grub").mkdir(parents=True)
    (root / "boot/grub/grub.cfg").write_text("  linux /vmlinuz root=/dev/sda1 ro quiet\n")
    update_grub = root / "usr/sbin/update-grub"
    update_grub.write_text(UPDATE_GRUB)
    update_grub.chmod(0o755)
    host_before = host_boot_files()

    out = waagent(["run", "serialconsole", f"root={root}", "chroot=y"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'GRUB_CMDLINE_LINUX="console=tty1 rootdelay=300 console=ttyS0 earlyprintk=ttyS0"' \
        in (root / "etc/default/grub").read_text()
    assert "ro console=tty1 rootdelay=300 console=ttyS0 earlyprintk=ttyS0 quiet" in \
        (root / "boot/grub/grub.cfg").read_text(), "update-grub ran inside the chroot"

    again = waagent(["run", "serialconsole", f"root={root}", "chroot=y"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 ran, 0 failed, 1 up to date" in again.stdout
    assert host_boot_files() == host_before, "the run changed the host's boot loader"


def test_regeneration_failure_is_reported_and_retried(debian_root: Path) -> None:  # noqa: F811
    root = debian_root
    (root / "etc/default/grub").write_text(DEFAULT_GRUB)
    (root / "boot/grub").mkdir(parents=True)
    (root / "boot/grub/grub.cfg").write_text("  linux /vmlinuz ro quiet\n")
    update_grub = root / "usr/sbin/update-grub"
    update_grub.write_text("#!/bin/sh\necho 'grub-probe: error: cannot find a device' >&2\n"
                           "exit 1\n")
    update_grub.chmod(0o755)
    out = waagent(["run", "serialconsole", f"root={root}", "chroot=y"])
    assert out.returncode != 0
    assert "cannot find a device" in out.stdout + out.stderr
    # The file is edited but grub.cfg is stale: the next run regenerates it.
    update_grub.write_text(UPDATE_GRUB)
    again = waagent(["run", "serialconsole", f"root={root}", "chroot=y"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "not regenerated" in again.stdout
    assert "console=ttyS0 earlyprintk=ttyS0" in (root / "boot/grub/grub.cfg").read_text()
