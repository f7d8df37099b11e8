"""Crashers the fuzzing campaigns found, kept as plain tests with the minimal input.

Each is marked with the parser it broke (`regression`); bench/campaigns.py counts them as
the defects found and fixed.
"""

from __future__ import annotations

import time

import pytest

from tests.campaigns.harness import regression
from tests.campaigns.strategies import fixture_files

pytestmark = pytest.mark.campaign


@regression("ovf")
def test_ovf_copy_with_unclosed_password_tags_in_a_comment() -> None:
    """without_password's pattern rescanned the document for each `<UserPassword>` that
    never closes: 16,000 in a comment took 35 s, the 1 MB an ovf-env.xml may have minutes."""
    from facts.ovf import parse_ovf_env, without_password

    seed = fixture_files("walinuxagent/ovf-env.xml")[0]
    data = seed.replace(b"</Environment>",
                        b"<!--" + b"<UserPassword>" * 70000 + b"--></Environment>", 1)
    start = time.monotonic()
    copy = without_password(data)
    assert time.monotonic() - start < 2
    assert parse_ovf_env(copy).password is None
    assert copy.count(b"<UserPassword>") == 70000


@pytest.mark.parametrize("entry", [
    {"dependsOn": [{"dependencyLevel": "/var/lib/waagent"}]},  # ValueError
    {"dependsOn": [{"dependencyLevel": float("inf")}]},  # OverflowError
    {"dependsOn": [{"dependencyLevel": [1]}]},  # TypeError
    {"dependsOn": 1},  # TypeError: 'int' object is not iterable
    {"dependsOn": [{"dependsOnExtension": 1}]},  # TypeError
    {"isMultiConfig": True, "dependsOn": [{"name": []}]},  # TypeError: unhashable
])
@regression("vmSettings")
def test_vm_settings_depends_on_of_another_type(entry: dict[str, object]) -> None:
    """A dependsOn block that is not the documented shape made parse_vm_settings raise
    ValueError or TypeError; it now makes that handler invalid, as in ExtensionsConfig."""
    from wire.extensions_goal_state import parse_vm_settings

    document = {"extensionGoalStates": [{"name": "Ext.A", "version": "1.0", **entry},
                                        {"name": "Ext.B", "version": "1.0"}]}
    state = parse_vm_settings(document, "etag")
    assert state is not None
    first, second = state.plugins
    assert first.invalid_reason is not None and "dependsOn" in first.invalid_reason \
        or "dependencyLevel" in (first.invalid_reason or "")
    assert second.invalid_reason is None
