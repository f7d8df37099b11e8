"""Where the platform's sample documents are: `shared/fixtures` beside the checkout.

They are not in this repository. A clone made somewhere else (`git clone . /tmp/x`)
finds them beside the checkout it was cloned from (its `origin`), or wherever
WAAGENT_FIXTURES points; otherwise importing this module says where it looked.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _origin_checkout() -> Path | None:
    """The local checkout this clone was made from, if it was made from one."""
    try:
        url = subprocess.run(["git", "-C", str(REPO), "remote", "get-url", "origin"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    if url.startswith("file://"):
        url = url[len("file://"):]
    elif not url or "://" in url or ":" in url.split("/")[0]:
        return None  # a remote URL (https://, ssh://, host:path): no checkout beside us
    return (REPO / url).resolve()


def locate() -> Path:
    candidates = [Path(os.environ["WAAGENT_FIXTURES"])] if os.environ.get(
        "WAAGENT_FIXTURES") else []
    candidates.append(REPO.parent / "shared" / "fixtures")
    origin = _origin_checkout()
    if origin is not None:
        candidates.append(origin.parent / "shared" / "fixtures")
    for candidate in candidates:
        if (candidate / "README.md").is_file() or (candidate / "walinuxagent").is_dir():
            return candidate.resolve()
    raise RuntimeError("the shared platform fixtures were not found; looked in "
                       + ", ".join(str(c) for c in candidates)
                       + ": set WAAGENT_FIXTURES=/path/to/shared/fixtures")


FIXTURES = locate()
