"""System Center VMM: does the DVD say that VMM, not Azure, provisions this VM?

As waagent's daemon/scvmm.py: with `DetectScvmmEnv=y`, a DVD whose root directory holds
`linuxosconfiguration.xml` comes from VMM, and its `install` script sets the VM up. The
DVD is read without mounting (facts/media.py's ISO 9660/UDF readers), from the `media=`
image when one is given, else from the DVD devices of the root.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from system.errors import AgentError, ProbeFailed
from system.root import Root

log = logging.getLogger("waagent.facts.scvmm")

CONF_FILE = "linuxosconfiguration.xml"
INSTALL_SCRIPT = "install"
MAX_FILE_BYTES = 16 * 1024 * 1024


class ScvmmMedia(NamedTuple):
    """A VMM DVD: where it is (a real path) and how to name it to people."""

    real: Path
    shown: str


def scvmm_media(root: Root, image: Path | None = None) -> ScvmmMedia | None:
    """The DVD (or `image`) that holds VMM's configuration, or None.

    A DVD that cannot be read is not VMM's: Azure provisioning then goes on as usual
    (and meets the same DVD, reporting what is wrong with it).
    """
    from facts.media import dvd_devices, read_media_file

    try:
        if image is not None:
            candidates = [ScvmmMedia(image, f"image:{image}")]
        else:
            candidates = [ScvmmMedia(root / device, device) for device in dvd_devices(root)]
        for media in candidates:
            if read_media_file(media.real, CONF_FILE, limit=MAX_FILE_BYTES,
                               shown=media.shown) is not None:
                return media
    except (AgentError, ValueError) as err:
        log.warning("DetectScvmmEnv: cannot look for System Center VMM's DVD (%s); "
                    "provisioning as usual", err)
    return None


def scvmm_files(media: ScvmmMedia) -> dict[str, bytes]:
    """VMM's configuration and install script read from its DVD (ProbeFailed when the
    install script is missing: VMM's DVD without it cannot set the VM up)."""
    from facts.media import read_media_file

    found: dict[str, bytes] = {}
    for name in (CONF_FILE, INSTALL_SCRIPT):
        data = read_media_file(media.real, name, limit=MAX_FILE_BYTES, shown=media.shown)
        if data is None:
            raise ProbeFailed(f"{media.shown} holds {CONF_FILE} but no {name}: System Center "
                              "VMM's DVD is incomplete; attach it again, or set "
                              "DetectScvmmEnv=n to provision from Azure")
        found[name] = data
    return found
