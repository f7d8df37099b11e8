"""Extension handler versions, ordered as waagent's FlexibleVersion orders them.

Apart from wire/artifacts.py (downloads) because every boot sorts the handler
directories it finds, and that needs only this.
"""

from __future__ import annotations

import re


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """A version as waagent's FlexibleVersion orders it: numeric parts compared as numbers."""
    # Numbers compare by their digits, never through int(): "²" is a digit to isdigit()
    # but not to int(), and int() refuses more than 4300 digits.
    return tuple((len(part.lstrip("0")), part.lstrip("0"))
                 if part.isascii() and part.isdigit() else (-1, part)
                 for part in re.split(r"[.\-]", version.strip()) if part != "")


def version_matches(requested: str, offered: str) -> bool:
    """True when `offered` starts with the components of `requested` (1.0 matches 1.0.3)."""
    want, have = version_key(requested), version_key(offered)
    return len(want) <= len(have) and have[:len(want)] == want
