"""user:rootpw deletes root's password hash; a root without one is left as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from graph.context import make_context
from tasks.user import lock_root_password
from tests.sandbox import make_sandbox_root


def root_field(root: Path) -> str:
    line = next(x for x in (root / "etc/shadow").read_text().splitlines()
                if x.startswith("root:"))
    return line.split(":")[1]


@pytest.mark.parametrize(("field", "after"), [
    ("$6$salt$hash", "*LOCK*"), ("!$6$salt$hash", "*LOCK*"), ("", "*LOCK*"),
    ("*", "*"), ("!", "!"), ("*LOCK*", "*LOCK*")])
def test_root_loses_its_hash_and_a_lock_is_kept(tmp_path: Path, field: str, after: str) -> None:
    root = make_sandbox_root(tmp_path / "vm", "c0ffee00-0000-4000-8000-000000000001")
    shadow = root / "etc/shadow"
    shadow.write_text(f"root:{field}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    before = shadow.stat().st_mtime_ns
    lock_root_password(make_context({"root": str(root)}))
    assert root_field(root) == after
    if field == after:
        assert shadow.stat().st_mtime_ns == before, "nothing to delete: the file is untouched"
