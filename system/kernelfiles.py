"""Writes to the kernel's own files: sysfs attributes and device nodes (/dev/random).

These are not files the agent owns: an atomic write (a temporary file renamed over the
target, system/fs.py) cannot work there, and creating one would be wrong. The file must
exist; it is opened for writing without O_CREAT, through the Root (a sandbox's
`sys/block/sda/device/timeout` or `dev/random` is a plain file a test reads back), and
in plan mode the write is only recorded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from system.errors import AgentError
from system.runner import Runner

log = logging.getLogger("waagent.kernelfiles")


class KernelFileError(AgentError):
    """A kernel file (sysfs attribute, device node) is missing or refused the write."""


def write_kernel_file(runner: Runner, path: Path, data: str | bytes, *, why: str,
                      shown_data: str | None = None) -> None:
    """Write `data` to an existing kernel file below the runner's root.

    `shown_data` is what logs and plans show instead of the data (entropy is never shown).
    """
    root = runner.root
    real = root.contain(path, follow=True)
    shown = root.system_path(real)
    runner.record("write", shown, why)
    if runner.plan:
        return
    content = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(real, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KernelFileError(f"{shown} does not exist: the kernel offers no such "
                              "attribute or device here") from None
    except OSError as err:
        raise KernelFileError(f"cannot open {shown} for writing: {err.strerror}") from None
    try:
        written = os.write(fd, content)
    except OSError as err:
        raise KernelFileError(f"{shown} refused {shown_data or data!r}: {err.strerror}") \
            from None
    finally:
        os.close(fd)
    if written != len(content):
        raise KernelFileError(f"{shown} took {written} of {len(content)} bytes")
    log.info("changed: %s = %s (%s)", shown, shown_data if shown_data is not None
             else content.decode(errors="replace").strip(), why)
