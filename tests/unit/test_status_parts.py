"""tasks/extension_status.StatusParts: the daemon's handlers' part of the status blob is
read again exactly when a file it came from (or a directory holding one) changed, never
from a file changed too recently to trust its time stamps, never when a heartbeat's age
counts; and what it gives is what reading the files gives."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from graph.context import Context, make_context
from tasks import extension_status, inputs
from tasks import extensions as ext


def context(tmp_path: Path) -> Context:
    (tmp_path / "var/lib/waagent").mkdir(parents=True, exist_ok=True)
    return make_context({"root": str(tmp_path), "chroot": "y"})


def handler(name: str = "Pub.Handler", seq: int = 0) -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "state": "enabled", "uris": ["http://x/m.xml"],
            "multi_config": False, "level": 0, "invalid": None,
            "settings": [{"name": None, "seq_no": seq, "state": "enabled", "public": {"a": 1},
                          "protected": None, "thumbprint": None, "level": 0}]}


MANIFEST = [{"handlerManifest": {
    **{f"{op}Command": "x" for op in ("install", "uninstall", "update", "enable", "disable")},
    "reportHeartbeat": False}}]


def installed(ctx: Context, *, heartbeat: bool = False) -> Path:
    """One enabled handler with its HandlerStatus, manifest and an extension status file."""
    inputs.keep_facts(ctx, "extensions", {"id": "i", "handlers": [handler()]})
    directory = ext.handler_dir(ctx, "Pub.Handler", "1.0.0")
    (directory / "config").mkdir(parents=True)
    (directory / "status").mkdir()
    manifest = json.loads(json.dumps(MANIFEST))
    manifest[0]["handlerManifest"]["reportHeartbeat"] = heartbeat
    (directory / "HandlerManifest.json").write_text(json.dumps(manifest))
    (directory / "config/HandlerState").write_text("Enabled")
    (directory / "heartbeat.log").write_text(json.dumps([{"heartbeat": {"status": "Ready"}}]))
    h = ext.handlers_of({"handlers": [handler()]})[0]
    ext.set_handler_status(ctx, h, "Ready", "Plugin enabled")
    write_status(directory, "fine")
    return directory


def write_status(directory: Path, message: str) -> None:
    (directory / "status/0.status").write_text(json.dumps([{"version": "1.0", "status": {
        "status": "success", "code": 0,
        "formattedMessage": {"lang": "en-US", "message": message}}}]))


def count_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the reads of the files: one entry per build."""
    counted: list[int] = []
    real = extension_status.read_parts

    def counting(*args: Any, **kwargs: Any) -> extension_status.Parts:
        counted.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(extension_status, "read_parts", counting)
    return counted


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the builds, files trusted at once."""
    monkeypatch.setattr(extension_status, "SETTLED_NS", 0)
    return count_builds(monkeypatch)


def message(parts: extension_status.Parts) -> str:
    [found] = parts.handlers
    assert found.extension is not None
    return str(found.extension.status["formattedMessage"]["message"])


def test_the_parts_are_what_the_files_say(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    installed(ctx)
    parts = extension_status.StatusParts().get(ctx, "1")
    assert parts.handlers == extension_status.handler_statuses(ctx, now=0)
    assert parts.goal_state == extension_status.goal_state_status(ctx, "1")
    assert message(parts) == "fine"


def test_unchanged_files_are_not_read_again(tmp_path: Path, builds: list[int]) -> None:
    ctx = context(tmp_path)
    installed(ctx)
    cache = extension_status.StatusParts()
    first = cache.get(ctx, "1")
    assert cache.get(ctx, "1") is first
    assert len(builds) == 1
    cache.get(ctx, "2")  # another goal state to acknowledge: built again
    assert len(builds) == 2


def test_a_status_file_rewritten_is_read_again(tmp_path: Path, builds: list[int]) -> None:
    ctx = context(tmp_path)
    directory = installed(ctx)
    cache = extension_status.StatusParts()
    cache.get(ctx, "1")
    write_status(directory, "fin2")  # same size, in place
    os.utime(directory / "status/0.status", ns=(1, 1))
    assert message(cache.get(ctx, "1")) == "fin2"


def test_a_file_created_or_removed_is_seen(tmp_path: Path, builds: list[int]) -> None:
    ctx = context(tmp_path)
    directory = installed(ctx)
    cache = extension_status.StatusParts()
    (directory / "status/0.status").unlink()
    assert cache.get(ctx, "1").handlers[0].extension.status["status"] == "transitioning"  # type: ignore[union-attr]
    write_status(directory, "back")
    assert message(cache.get(ctx, "1")) == "back"
    (directory / "config/HandlerStatus").unlink()
    assert cache.get(ctx, "1").handlers == []
    assert len(builds) == 3


def test_a_new_goal_state_in_the_facts_is_seen(tmp_path: Path, builds: list[int]) -> None:
    ctx = context(tmp_path)
    installed(ctx)
    cache = extension_status.StatusParts()
    assert len(cache.get(ctx, "1").handlers) == 1
    inputs.keep_facts(ctx, "extensions", {"id": "j", "handlers": []})
    assert cache.get(ctx, "1").handlers == []


def test_files_changed_just_now_are_read_every_time(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the time stamps' granularity a second change may leave the same stamps: a file
    changed less than SETTLED_NS ago is read again at every loop."""
    ctx = context(tmp_path)
    directory = installed(ctx)
    counted = count_builds(monkeypatch)
    cache = extension_status.StatusParts()
    cache.get(ctx, "1")
    write_status(directory, "fin2")
    assert message(cache.get(ctx, "1")) == "fin2"
    cache.get(ctx, "1")
    assert len(counted) == 3


def test_a_heartbeat_is_read_every_time(tmp_path: Path, builds: list[int]) -> None:
    ctx = context(tmp_path)
    installed(ctx, heartbeat=True)
    cache = extension_status.StatusParts()
    cache.get(ctx, "1")
    cache.get(ctx, "1")
    assert len(builds) == 2
