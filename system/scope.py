"""Commands in their own systemd scope (a cgroup with CPU and memory limits).

`systemd-run --scope` registers the command's process as a transient scope unit and
then runs it in place: the command is still our child (its exit status and output are
ours), and the kernel holds it to the scope's limits. Only where systemd manages the
running system: elsewhere the caller runs the command as a plain child.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence

from system.root import Root


def systemd_runs(root: Root) -> bool:
    """True when `root` is the running system and systemd manages it."""
    return (root.is_host and os.path.isdir("/run/systemd/system")
            and shutil.which("systemd-run") is not None)


def scope_argv(argv: Sequence[str], *, unit: str, properties: Mapping[str, str],
               slice_name: str | None = None) -> list[str]:
    """`systemd-run --scope` around `argv`, with unit properties such as CPUQuota."""
    wrapper = ["systemd-run", "--scope", "--quiet", "--collect", f"--unit={unit}"]
    if slice_name:
        wrapper.append(f"--slice={slice_name}")
    for name, value in properties.items():
        wrapper += ["--property", f"{name}={value}"]
    return [*wrapper, "--", *argv]
