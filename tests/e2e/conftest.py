"""e2e helpers: skip with the reason, and a lab that must leave nothing on the host."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import harness
from tests.support import debian_root


def need_lab(packages: tuple[str, ...] = harness.OUR_PACKAGES,
             suite: str = debian_root.SUITE) -> None:
    """Skip (outside CI) when the lab cannot run here, with the reason."""
    reason = harness.skip_reason(packages, suite)
    if reason:
        pytest.skip(reason)


def leftovers(work: Path, tag: str) -> list[str]:
    """What the lab in `work` with namespaces named by `tag` left on the host."""
    netns = harness.run(["ip", "netns", "list"], check=False).stdout
    found = [f"netns {line.split()[0]}" for line in netns.splitlines()
             if line.startswith("waagent-e2e-") and line.split()[0].endswith(f"-{tag}")]
    loops = harness.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                        check=False).stdout
    found += [f"loop device {line}" for line in loops.splitlines() if str(work) in line]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line.split()[4]}" for line in mounts.splitlines()
              if str(work) in line.split()[4]]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # gone meanwhile
            argv = cmdline.read_bytes().split(b"\0")
            if any(str(work).encode() in arg for arg in argv):
                found.append(f"process {cmdline.parent.name}: {b' '.join(argv)[:200]!r}")
    swaps = Path("/proc/swaps").read_text()
    found += [f"swap {line.split()[0]}" for line in swaps.splitlines() if str(work) in line]
    return found


@contextlib.contextmanager
def checked_lab(work: Path, scenario_file: Path, **options: Any) -> Iterator[harness.Lab]:
    """harness.lab, then the proof that it cleaned up after itself."""
    tag = harness.unique_tag()
    try:
        with harness.lab(work, scenario_file, tag=tag, **options) as vm_lab:
            yield vm_lab
    finally:
        left = leftovers(work, tag)
        assert left == [], f"the lab left these on the host: {left}"
