"""The scvmm area: System Center VMM provisions this VM (`DetectScvmmEnv=y`).

When the DVD holds `linuxosconfiguration.xml` (tasks.inputs.mode is then "scvmm"),
`scvmm:install` copies VMM's configuration and `install` script from the DVD (read
without mounting) into `<Lib.Dir>/scvmm/` and runs `/bin/bash install -p <that
directory>`, as waagent's daemon/scvmm.py runs it from the mounted DVD. The agent
then stands aside: no Azure provisioning task exists in this mode (no OVF, no goal
state, no Ready). Without such a DVD the area is empty and provisioning goes on as usual.

The script is a program from the DVD: it runs on the running system, or inside an
image root with chroot=y; against any other root it is recorded as skipped.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

from graph.context import Context
from graph.uptodate import Inputs
from system.errors import ProbeFailed
from tasks import TaskDict, inputs

log = logging.getLogger("waagent.scvmm")

COPY_DIR = "scvmm"  # below Lib.Dir
INSTALL_TIMEOUT = 3600.0


def dvd_digest(ctx: Context) -> str:
    """What identifies VMM's DVD: the SHA-256 of its configuration and install script."""
    from facts.scvmm import scvmm_files

    media = inputs.scvmm_media(ctx)
    if media is None:
        raise ProbeFailed("System Center VMM's DVD is gone")
    digest = hashlib.sha256()
    for name, data in sorted(scvmm_files(media).items()):
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


def run_scvmm_install(ctx: Context) -> None:
    """Copy VMM's files off the DVD and run its installer (waagent: start_scvmm_agent)."""
    from facts.scvmm import INSTALL_SCRIPT, scvmm_files

    media = inputs.scvmm_media(ctx)
    if media is None:
        raise ProbeFailed("System Center VMM's DVD is gone: it held linuxosconfiguration.xml "
                          "when this run started")
    copy = ctx.lib_dir / COPY_DIR
    ctx.fs.mkdir(copy, mode=0o700, why="System Center VMM's files from its DVD")
    for name, data in scvmm_files(media).items():
        ctx.fs.write(copy / name, data, mode=0o700 if name == INSTALL_SCRIPT else 0o600,
                     why=f"System Center VMM's {name} from {media.shown}")
    where = ctx.command_path(copy)  # as the command sees it: in the chroot, or the real path
    argv = ["/bin/bash", f"{where}/{INSTALL_SCRIPT}", "-p", where]
    if not (ctx.root.is_host or ctx.run.chroot):
        # The script comes from the DVD: on the host it would set up the host (rule 8).
        ctx.run.record("skip", " ".join(argv), f"System Center VMM's installer from "
                       f"{media.shown}: root {ctx.root.base} is not the running system; run "
                       "with chroot=y to run it inside the image")
        log.info("skipped: System Center VMM's installer (root %s is not the running "
                 "system; chroot=y runs it inside)", ctx.root.base)
        return
    log.info("System Center VMM provisions this VM (%s): running its installer, and "
             "standing aside", media.shown)
    ctx.run.change(argv, why="System Center VMM provisions this VM", timeout=INSTALL_TIMEOUT)


def generate(ctx: Context) -> Iterator[TaskDict]:
    """scvmm:install, only when VMM's DVD is there (tasks.inputs.mode)."""
    if inputs.mode(ctx) != "scvmm":
        return
    yield {
        "name": "install",
        "doc": "System Center VMM's DVD: run its install -p <copy in Lib.Dir/scvmm>, and "
               "no Azure provisioning",
        "actions": [(run_scvmm_install, [ctx])],
        # Once per VM and DVD: VMM owns the VM after its installer ran.
        "uptodate": [Inputs("scvmm", lambda: {"vm_id": inputs.vm_id(ctx),
                                               "dvd": dvd_digest(ctx)})],
    }
