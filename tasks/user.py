"""Tasks of the 'user' area (not implemented yet: the area is an empty group)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from graph.context import Context


def generate(ctx: Context) -> Iterator[dict[str, Any]]:
    """No tasks yet."""
    yield from ()
