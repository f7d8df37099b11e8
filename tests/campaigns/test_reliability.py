"""The CI form of the fault-schedule and crash campaigns, each case audited for secrets
(tests/campaigns/reliability.py; bench/campaigns.py runs the long form).

Needs root (sandboxes, loop devices, mounts, chroot into a cached Debian root); the fabric
listens on 127.0.0.1 only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.campaigns import reliability
from tests.conftest import need_root, need_tools
from tests.support import debian_root

pytestmark = [pytest.mark.campaign, pytest.mark.root]

PROVISION_TOOLS = ("useradd", "chpasswd", "ssh-keygen", "visudo", "sshd", "unshare")
DISK_TOOLS = ("losetup", "sfdisk", "partx", "blkid", "mount", "umount", "findmnt", "mkswap",
              "swapon", "swapoff", "fallocate", "mkfs.ext4")


def need_debian_root() -> None:
    from tests.integration.test_daemon_extensions import PACKAGES

    reason = debian_root.skip_reason(PACKAGES)
    if reason:
        pytest.skip(reason)


def check(figures: reliability.Figures) -> None:
    print("\n" + reliability.tables(figures))
    assert figures.problems() == []
    assert figures.audit.findings == []


def test_fault_schedules_converge_without_repeats_within_their_delays(tmp_path: Path) -> None:
    need_root()
    need_tools(*PROVISION_TOOLS)
    need_debian_root()
    figures = reliability.Figures()
    reliability.schedules(tmp_path, "ci", figures)
    assert len(figures.schedules) == 4 and all(o.converged for o in figures.schedules)
    check(figures)


def test_kills_of_provisioning_deprovision_and_lost_state_converge(tmp_path: Path) -> None:
    need_root()
    need_tools(*PROVISION_TOOLS, "mount", "umount", "dd")
    figures = reliability.Figures()
    reliability.crashes(tmp_path, "ci", figures, ("provision", "extra", "deprovision"))
    assert sum(t.tried for t in figures.tallies) >= 16
    check(figures)


def test_kills_of_the_resource_disk_keep_the_users_data(tmp_path: Path) -> None:
    need_root()
    need_tools(*DISK_TOOLS)
    figures = reliability.Figures()
    reliability.crashes(tmp_path, "ci", figures, ("disk",))
    check(figures)


def test_kills_of_extension_install_and_update_converge(tmp_path: Path) -> None:
    need_root()
    need_debian_root()
    figures = reliability.Figures()
    reliability.crashes(tmp_path, "ci", figures, ("extensions",))
    check(figures)
