"""Extensions: the goal state from both sources, version picking, the task chains the
state machine yields for each case, and the statuses read back for the blob."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from graph.context import Context, make_context
from tasks import extension_status, inputs
from tasks import extensions as ext
from tests.support.fixtures import FIXTURES
from wire.artifacts import pick_version
from wire.extensions_config import parse_extensions_config, parse_manifest
from wire.extensions_goal_state import choose, from_extensions_config, parse_vm_settings
from wire.versions import version_matches

WALA = FIXTURES / "walinuxagent"


def vm_settings(name: str) -> dict[str, Any]:
    return json.loads((WALA / "hostgaplugin" / name).read_text())  # type: ignore[no-any-return]


def test_extensions_config_goal_state() -> None:
    config = parse_extensions_config((WALA / "hostgaplugin/ext_conf.xml").read_text())
    state = from_extensions_config(config, "7")
    assert state.id == "incarnation_7" and state.source == "ExtensionsConfig"
    assert state.created_ticks == 637726657706205217
    assert [p.name for p in state.plugins][0] == "Microsoft.Azure.Monitor.AzureMonitorLinuxAgent"
    assert state.unsupported_features == ()


def test_vm_settings_goal_state() -> None:
    state = parse_vm_settings(vm_settings("vm_settings.json"), "etag-1")
    assert state is not None and state.id == "etag_etag-1" and state.on_hold
    by_name = {p.name: p for p in state.plugins}
    script = by_name["Microsoft.Azure.Extensions.CustomScript"]
    assert script.dependency_level == 1 and script.settings[0].public_settings == {
        "commandToExecute": "echo 'cee174d4-4daa-4b07-9958-53b9649445c2'"}
    assert script.manifest_uris[1].startswith("https://umsafwzhkbm1")  # failoverlocation
    run = by_name["Microsoft.CPlat.Core.RunCommandHandlerLinux"]
    assert run.is_multi_config and [s.name for s in run.settings] == ["MCExt1", "MCExt2", "MCExt3"]
    assert {s.name: s.dependency_level for s in run.settings} == {"MCExt1": 2, "MCExt2": 1,
                                                                  "MCExt3": 0}


def test_fabric_sourced_vm_settings_are_ignored() -> None:
    document = vm_settings("vm_settings.json")
    document["extensionGoalStatesSource"] = "Fabric"
    assert parse_vm_settings(document, "x") is None


@pytest.mark.parametrize(("config_ticks", "fast_ticks", "handled", "want"), [
    (10, 20, None, "FastTrack"),
    (20, 10, None, "ExtensionsConfig"),
    (10, 10, None, "ExtensionsConfig"),
    (10, 20, 30, None),  # both older than what was handled: never go back
    (30, 20, 25, "ExtensionsConfig"),
])
def test_the_newer_goal_state_wins(config_ticks: int, fast_ticks: int, handled: int | None,
                                   want: str | None) -> None:
    config = from_extensions_config(parse_extensions_config(
        (WALA / "hostgaplugin/ext_conf.xml").read_text()), "1")._replace(
        created_ticks=config_ticks)
    fast = parse_vm_settings(vm_settings("vm_settings.json"), "e")
    assert fast is not None
    chosen = choose([config, fast._replace(created_ticks=fast_ticks)], handled)
    assert (chosen.source if chosen else None) == want


@pytest.mark.parametrize(("requested", "want"), [
    ("1.0", "1.0.0"), ("1.1", "1.1.1"), ("2.1.1", "2.1.1"), ("4.0", "4.0.0.1"), ("9.9", None)])
def test_manifest_version_pick(requested: str, want: str | None) -> None:
    manifest = parse_manifest((WALA / "wire/manifest.xml").read_text())
    found = pick_version(manifest, requested)
    assert (found.version if found else None) == want
    assert not version_matches("1.1", "1.10.0")


# -- the state machine, as tables ----------------------------------------------------------

def context(tmp_path: Path) -> Context:
    (tmp_path / "var/lib/waagent").mkdir(parents=True, exist_ok=True)
    return make_context({"root": str(tmp_path), "chroot": "y"})


def handler(name: str = "Pub.Handler", version: str = "1.0.0", state: str = "enabled",
            level: int = 0, seq: int = 0) -> dict[str, Any]:
    return {"name": name, "version": version, "state": state, "uris": ["http://x/m.xml"],
            "multi_config": False, "level": level, "invalid": None,
            "settings": [{"name": None, "seq_no": seq, "state": state, "public": {"a": 1},
                          "protected": None, "thumbprint": None, "level": level}]}


def install(ctx: Context, name: str, version: str, state: str) -> None:
    directory = ext.handler_dir(ctx, name, version)
    (directory / "config").mkdir(parents=True)
    (directory / "HandlerManifest.json").write_text("[]")
    (directory / "config/HandlerState").write_text(state)


def task_names(ctx: Context, *handlers: dict[str, Any]) -> list[str]:
    inputs.keep_facts(ctx, "extensions", {"id": "incarnation_1", "handlers": list(handlers)})
    return [t["name"] for t in ext.generate(ctx)]


CHAIN = ["unpack", "settings"]


@pytest.mark.parametrize(("on_disk", "requested", "want"), [
    ([], handler(), [*CHAIN, "install", "enable"]),
    ([("1.0.0", "Enabled")], handler(), [*CHAIN, "install", "enable"]),
    ([("0.9.0", "Enabled")], handler(), [*CHAIN, "update", "enable"]),
    ([("2.0.0", "Installed")], handler(), [*CHAIN, "update", "enable"]),  # a downgrade
    ([("0.9.0", "FailedUpgrade")], handler(), [*CHAIN, "install", "enable"]),
    ([("1.0.0", "Enabled")], handler(state="disabled"), ["disable"]),
    ([("1.0.0", "Enabled")], handler(state="uninstall"), ["uninstall"]),
    ([], handler(state="uninstall"), []),
])
def test_tasks_for_each_case(tmp_path: Path, on_disk: list[tuple[str, str]],
                             requested: dict[str, Any], want: list[str]) -> None:
    ctx = context(tmp_path)
    for version, state in on_disk:
        install(ctx, "Pub.Handler", version, state)
    assert task_names(ctx, requested) == [f"Pub.Handler:{step}" for step in want]


def test_a_handler_gone_from_the_goal_state_is_uninstalled(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    install(ctx, "Old.Handler", "3.1", "Enabled")
    assert task_names(ctx, handler()) == ["Old.Handler:uninstall", *[
        f"Pub.Handler:{s}" for s in [*CHAIN, "install", "enable"]]]


def test_depends_on_levels_order_and_wait(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    inputs.keep_facts(ctx, "extensions", {"id": "incarnation_1", "handlers": [
        handler("C.Third", level=2), handler("A.First", level=0),
        handler("Z.Gone", state="uninstall"), handler("B.Second", level=1)]})
    install(ctx, "Z.Gone", "1.0.0", "Enabled")
    tasks = list(ext.generate(ctx))
    names = [t["name"] for t in tasks]
    assert names[0] == "Z.Gone:uninstall"  # non-enabled first
    assert names.index("A.First:wait") < names.index("B.Second:unpack")
    assert "C.Third:wait" not in names  # the highest level waits for nobody
    third = next(t for t in tasks if t["name"] == "C.Third:enable")
    assert {"extensions:A.First:wait", "extensions:B.Second:wait"} <= set(third["task_dep"])


def test_a_root_that_cannot_run_handlers_records_a_skip(tmp_path: Path) -> None:
    (tmp_path / "var/lib/waagent").mkdir(parents=True)
    ctx = make_context({"root": str(tmp_path)})
    assert task_names(ctx, handler()) == ["skipped"]


def test_unsupported_features_and_on_hold(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    inputs.keep_facts(ctx, "extensions", {"id": "i", "handlers": [handler()],
                                          "unsupported_features": ["Future"]})
    assert [t["name"] for t in ext.generate(ctx)] == ["unsupported"]
    inputs.keep_facts(ctx, "extensions", {"id": "i", "handlers": [handler()], "on_hold": True})
    assert [t["name"] for t in ext.generate(ctx)] == ["on-hold"]


def test_settings_files_as_waagent_writes_them() -> None:
    h = ext.handlers_of({"handlers": [handler(seq=3)]})[0]
    assert ext.settings_files(h) == [("3.settings", json.dumps({"runtimeSettings": [{
        "handlerSettings": {"publicSettings": {"a": 1}, "protectedSettings": None,
                            "protectedSettingsCertThumbprint": None}}]}))]
    assert ext.settings_files(h._replace(settings=())) == [("0.settings", "")]


# -- statuses for the blob -----------------------------------------------------------------

def test_statuses_read_back(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    inputs.keep_facts(ctx, "extensions", {"id": "i", "handlers": [
        handler("Good.One"), handler("Bad.Status", seq=2), handler("Hung.One")]})
    for name in ("Good.One", "Bad.Status", "Hung.One"):
        install(ctx, name, "1.0.0", "Enabled")
        h = ext.handlers_of({"handlers": [handler(name)]})[0]
        ext.set_handler_status(ctx, h, "Ready", "Plugin enabled")
        (ext.handler_dir(ctx, name, "1.0.0") / "status").mkdir()
    good = ext.handler_dir(ctx, "Good.One", "1.0.0")
    (good / "status/0.status").write_text(json.dumps([{"version": "1.0", "status": {
        "status": "success", "code": "0", "formattedMessage": {"lang": "en-US",
                                                                 "message": "fine"}}}]))
    (ext.handler_dir(ctx, "Bad.Status", "1.0.0") / "status/2.status").write_text("{oops")
    hung = ext.handler_dir(ctx, "Hung.One", "1.0.0")
    (hung / "HandlerManifest.json").write_text(json.dumps([{"handlerManifest": {
        **{f"{op}Command": "x" for op in ("install", "uninstall", "update", "enable",
                                          "disable")}, "reportHeartbeat": True}}]))
    beat = hung / "heartbeat.log"
    beat.write_text(json.dumps([{"heartbeat": {"status": "Ready", "code": 0}}]))
    old = time.time() - 700
    os.utime(beat, (old, old))
    found = {s.name: s for s in extension_status.handler_statuses(ctx)}
    assert found["Good.One"].status == "Ready"
    assert found["Good.One"].extension is not None
    assert found["Good.One"].extension.status["code"] == "0"  # as written, as waagent 2.7.3
    assert found["Good.One"].extension.status["formattedMessage"]["message"] == "fine"
    bad = found["Bad.Status"].extension
    assert bad is not None and bad.status["status"] == "error" and bad.status["code"] == 1012
    assert bad.sequence_number == 2
    assert found["Hung.One"].status == "Unresponsive"


def test_messages_the_handler_left_out_are_reported_as_null(tmp_path: Path) -> None:
    """waagent sends a missing message as null, not as an empty string."""
    ctx = context(tmp_path)
    inputs.keep_facts(ctx, "extensions", {"id": "i", "handlers": [handler("Quiet.One")]})
    install(ctx, "Quiet.One", "1.0.0", "Enabled")
    h = ext.handlers_of({"handlers": [handler("Quiet.One")]})[0]
    ext.set_handler_status(ctx, h, "Ready", "Plugin enabled")
    status = ext.handler_dir(ctx, "Quiet.One", "1.0.0") / "status"
    status.mkdir()
    (status / "0.status").write_text(json.dumps([{"version": "1.0", "status": {
        "status": "success", "code": 0, "substatus": [{"name": "s", "status": "success",
                                                       "code": 0}]}}]))
    found = extension_status.handler_statuses(ctx)[0].extension
    assert found is not None
    assert found.status["formattedMessage"] == {"lang": "en-US", "message": None}
    assert found.status["substatus"][0]["formattedMessage"] == {"lang": "en-US",
                                                                "message": None}


# -- one check per package, durability per file ---------------------------------------------

def probe_zip() -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    manifest = [{"name": "Pub.Handler", "version": 1.0, "handlerManifest": {
        f"{op}Command": "run.sh" for op in ("install", "uninstall", "update", "enable",
                                            "disable")}}]
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("HandlerManifest.json", json.dumps(manifest))
        zf.writestr("run.sh", "#!/bin/sh\nexit 0\n")
    return buffer.getvalue()


class FakeArtifacts:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def package(self, uris: Any, *, handler: str, version: str) -> bytes:
        return self.data


def fetching_context(tmp_path: Path, data: bytes) -> tuple[Context, ext.Handler]:
    ctx = context(tmp_path)
    ctx.state.goal_state = object()  # type: ignore[assignment]
    ctx.state.artifact_client = FakeArtifacts(data)  # type: ignore[assignment]
    found = ext.handlers_of({"handlers": [{**handler(), "package_uris": ["http://x/p.zip"]}]})
    return ctx, found[0]


def test_a_package_is_checked_once_from_download_to_unpack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import system.unpack

    checked: list[str] = []
    real = system.unpack.check_zip

    def counting(data: bytes, *, name: str) -> Any:
        checked.append(name)
        return real(data, name=name)

    monkeypatch.setattr(system.unpack, "check_zip", counting)
    ctx, h = fetching_context(tmp_path, probe_zip())
    ext.download_package(ctx, h)
    ext.unpack_package(ctx, h)
    assert checked == ["Pub.Handler__1.0.0.zip"]
    assert (ext.handler_dir(ctx, h.name, h.version) / "run.sh").is_file()
    # Other bytes at the same path are checked again: a damaged package is refused,
    # removed (fetched again next time), and nothing is unpacked.
    ext.remove_handler(ctx, h.name, h.version, why="test")
    ext.package_path(ctx, h.name, h.version).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ext.ExtensionFailed, match="refused"):
        ext.unpack_package(ctx, h)
    assert len(checked) == 2 and not ext.package_path(ctx, h.name, h.version).exists()
    assert not (ext.handler_dir(ctx, h.name, h.version) / "run.sh").exists()


def test_what_is_fsynced_on_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HandlerState (it decides whether install runs again) and the unpacked tree are
    fsynced; the package (a cache, checked before use), HandlerStatus (written again by the
    next start's enable), the settings and HandlerEnvironment.json (their tasks' checks
    find them lost or empty) are not."""
    synced: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    ctx, h = fetching_context(tmp_path, probe_zip())
    ext.download_package(ctx, h)
    ext.unpack_package(ctx, h)
    ext.write_settings(ctx, h)
    ext.set_handler_state(ctx, h.name, h.version, ext.INSTALLED)
    ext.set_handler_status(ctx, h, "NotReady", "Plugin installed but not enabled",
                           durable=False)
    directory = ext.handler_dir(ctx, h.name, h.version)
    names = [Path(p).name for p in synced]
    for unsynced in (".Pub.Handler__1.0.0.zip.", ".HandlerStatus.", ".0.settings.",
                     ".HandlerEnvironment.json."):
        assert not any(unsynced in n for n in names), unsynced
    assert any(".HandlerState." in n for n in names)
    assert any(n in ("run.sh", "HandlerManifest.json") for n in names)  # unpacked, in staging
    assert str(directory / "config") in synced  # the rename into config/
    assert (directory / "config/HandlerState").read_text() == ext.INSTALLED


def test_settings_and_environment_a_crash_left_empty_are_written_again(tmp_path: Path) -> None:
    """A file written without fsync can be found empty after a crash: the checks of the
    unpack and settings tasks say so (their tasks run again), and the tasks write it whole."""
    ctx, h = fetching_context(tmp_path, probe_zip())
    h = h._replace(settings=(ext.Settings(None, 3, "enabled", {"a": 1}, None, None, 0),))
    ext.download_package(ctx, h)
    ext.unpack_package(ctx, h)
    ext.write_settings(ctx, h)
    assert ext._not_unpacked(ctx, h.name, h.version) is None
    assert ext._settings_missing(ctx, h) is None
    directory = ext.handler_dir(ctx, h.name, h.version)

    (directory / "HandlerEnvironment.json").write_text("")
    (directory / "config/3.settings").write_text("")
    assert ext._not_unpacked(ctx, h.name, h.version) == \
        "Pub.Handler-1.0.0/HandlerEnvironment.json is empty"
    assert ext._settings_missing(ctx, h) == "config/3.settings is empty"
    ext.unpack_package(ctx, h)
    ext.write_settings(ctx, h)
    assert ext._not_unpacked(ctx, h.name, h.version) is None
    assert ext._settings_missing(ctx, h) is None
    assert json.loads((directory / "config/3.settings").read_text())["runtimeSettings"]

    # A handler without settings gets an empty 0.settings: empty is what it should be.
    bare = h._replace(settings=())
    ext.write_settings(ctx, bare)
    assert (directory / "config/0.settings").read_text() == ""
    assert ext._settings_missing(ctx, bare) is None
    (directory / "config/0.settings").unlink()
    assert ext._settings_missing(ctx, bare) == "config/0.settings is missing"


# -- the extensions goal state read ahead ----------------------------------------------------

def reading_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Context, list[Any]]:
    """A context whose extensions goal state reads are recorded: (incarnation, thread)."""
    import threading

    (tmp_path / "var/lib/waagent").mkdir(parents=True, exist_ok=True)
    ctx = make_context({"root": str(tmp_path), "chroot": "y",
                        "wireserver": "http://127.0.0.1:9"})
    reads: list[Any] = []

    def read(ctx: Context, stored: Any, state: Any, *, with_config: bool, wire: Any,
             artifacts: Any) -> ext.Reading:
        reads.append((state.incarnation, threading.current_thread().name))
        if state.incarnation == "bad":
            from wire.errors import WireError

            raise WireError("the WireServer is away")
        return ext.Reading({"id": f"incarnation_{state.incarnation}",
                            "incarnation": state.incarnation, "handlers": []}, None, [])

    class Artifacts:
        def close(self) -> None:
            pass

    monkeypatch.setattr(ext, "_read", read)
    monkeypatch.setattr(ext, "new_artifact_client", lambda ctx, state, rounds=3: Artifacts())
    return ctx, reads


def test_the_extensions_goal_state_read_ahead_is_what_gather_extensions_stores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """start_reading reads on a thread of its own; gather:extensions takes that reading
    for the same goal state (nothing is read twice), and reads itself for another."""
    from types import SimpleNamespace

    ctx, reads = reading_context(tmp_path, monkeypatch)
    two = SimpleNamespace(incarnation="2")
    ext.start_reading(ctx, two)
    ext.gather_extensions(ctx, two)
    assert reads == [("2", "extensions-reading")]
    assert ext.stored_goal_state(ctx)["id"] == "incarnation_2"  # type: ignore[index]

    ext.start_reading(ctx, two)  # its extensions are stored already: nothing to read
    assert len(reads) == 1
    ext.start_reading(ctx, SimpleNamespace(incarnation="3"))
    ext.gather_extensions(ctx, SimpleNamespace(incarnation="4"))  # not the one read ahead
    assert ("4", "MainThread") in reads
    assert ext.stored_goal_state(ctx)["id"] == "incarnation_4"  # type: ignore[index]

    # Read ahead against facts stored since (vmSettings alone): compared with stale facts,
    # so read again.
    five = SimpleNamespace(incarnation="5")
    ext.start_reading(ctx, five)
    inputs.keep_facts(ctx, ext.FACTS, {"id": "vmSettings_9", "incarnation": "4", "handlers": []})
    ext.gather_extensions(ctx, five)
    assert reads.count(("5", "MainThread")) == 1


def test_a_failed_reading_ahead_is_gather_extensions_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error of the reading ahead is raised where gather:extensions takes it: stored as
    gather_error (the next run tries again), as an error while reading there would be."""
    from types import SimpleNamespace

    ctx, reads = reading_context(tmp_path, monkeypatch)
    bad = SimpleNamespace(incarnation="bad")
    ext.start_reading(ctx, bad)
    ext.gather_extensions(ctx, bad)
    assert reads == [("bad", "extensions-reading")]
    assert "the WireServer is away" in ext.stored_goal_state(ctx)["gather_error"]  # type: ignore[index]


def test_nothing_is_read_ahead_in_a_plan_or_with_extensions_disabled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    ctx, reads = reading_context(tmp_path, monkeypatch)
    ctx.run.plan = True
    ext.start_reading(ctx, SimpleNamespace(incarnation="2"))
    ctx.run.plan = False
    monkeypatch.setattr(type(ctx.conf), "flag", lambda conf, name: name != "Extensions.Enabled")
    ext.start_reading(ctx, SimpleNamespace(incarnation="2"))
    assert reads == [] and ctx.state.extensions_ahead is None


def test_a_reading_that_cannot_start_leaves_the_certificates_task_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No WireServer to read from (a sandbox root without wireserver=): start_reading
    says nothing is read ahead instead of failing certificates:install, which started it;
    gather:extensions meets the problem itself and reports it."""
    from types import SimpleNamespace

    ctx = context(tmp_path)  # no wireserver=
    ext.start_reading(ctx, SimpleNamespace(incarnation="2"))
    assert ctx.state.extensions_ahead is None


# -- direct downloads ------------------------------------------------------------------------

@pytest.fixture
def storage() -> Any:
    """A plain HTTP server on 127.0.0.1 answering every GET with the same bytes."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"<PluginVersionManifest/>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/m.xml"
    server.shutdown()
    server.server_close()


def test_a_plain_http_download_without_a_proxy_needs_no_requests(
        storage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from wire.artifacts import ArtifactClient, ArtifactUnavailable

    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "requests", None)  # `import requests` fails
    client = ArtifactClient(None, rounds=1)
    assert client.fetch([storage], what="m", max_bytes=1024) == b"<PluginVersionManifest/>"
    # A proxy applies: requests (here unavailable) is what goes through it.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    with pytest.raises(ArtifactUnavailable):
        ArtifactClient(None, rounds=1).fetch([storage], what="m", max_bytes=1024)
    with pytest.raises(ArtifactUnavailable):
        ArtifactClient(None, rounds=1, proxy="http://127.0.0.1:9").fetch(
            [storage], what="m", max_bytes=1024)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert ArtifactClient(None, rounds=1).fetch([storage], what="m", max_bytes=1024)


# -- what waagent reports when things go wrong ------------------------------------------------

def test_an_unexpected_failure_fails_the_goal_state_with_code_minus_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """waagent's GoalStateUnknownFailure: goalStateAggregateStatus Failed, -1."""
    from tasks import call_action

    ctx = context(tmp_path)
    inputs.keep_facts(ctx, "extensions", {"id": "incarnation_1", "incarnation": "1",
                                          "handlers": [handler()],
                                          "processed": ext.processed_status([], "1")})

    def unreadable(ctx: Context) -> Any:
        raise PermissionError(13, "Permission denied", str(ctx.lib_dir))

    monkeypatch.setattr(ext, "handlers_on_disk", unreadable)
    tasks = list(ext.generate(ctx))
    assert [t["name"] for t in tasks] == ["failed"]
    with pytest.raises(ext.ExtensionFailed) as err:
        call_action(tasks[0]["actions"][0])
    assert err.value.code == -1
    status = extension_status.goal_state_status(ctx, "1")
    assert (status.status, status.code) == ("Failed", -1)
    assert status.message.startswith("Unexpected error when processing goal state:")
    assert "Permission denied" in status.message

    # The agent restarts and processes the same goal state without the error: from then on
    # it is reported processed, as waagent's next pass over it reports it.
    monkeypatch.undo()
    tasks = list(ext.generate(ctx))
    assert tasks[0]["name"] == "processed"
    call_action(tasks[0]["actions"][0])
    status = extension_status.goal_state_status(ctx, "1")
    assert (status.status, status.code) == ("Success", 0)
    assert "processed" not in [t["name"] for t in ext.generate(ctx)]


def test_an_unexpected_error_in_a_handler_operation_is_its_status_with_code_minus_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, h = fetching_context(tmp_path, probe_zip())
    ext.download_package(ctx, h)
    ext.unpack_package(ctx, h)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(ext, "run_command", broken)
    with pytest.raises(ext.ExtensionFailed) as err:
        ext.install_handler(ctx, h)
    assert err.value.code == -1
    stored = json.loads((ext.handler_dir(ctx, h.name, h.version) / "config/HandlerStatus")
                        .read_text())
    assert (stored["status"], stored["code"]) == ("NotReady", -1)


def multi_config(name: str, *extensions: tuple[str, int, str]) -> dict[str, Any]:
    """A multi-config handler whose extensions are (name, dependsOn level, state)."""
    return {**handler(name), "multi_config": True, "settings": [
        {"name": ext_name, "seq_no": 0, "state": state, "public": {}, "protected": None,
         "thumbprint": None, "level": level} for ext_name, level, state in extensions]}


def test_depends_on_waits_for_each_extension_of_a_multi_config_handler(tmp_path: Path) -> None:
    """waagent waits for every enabled extension below the highest level, by its own level."""
    ctx = context(tmp_path)
    inputs.keep_facts(ctx, "extensions", {"id": "incarnation_1", "handlers": [
        multi_config("Run.Command", ("first", 0, "enabled"), ("second", 0, "enabled"),
                     ("off", 0, "disabled"), ("top", 1, "enabled")),
        handler("Later.One", level=1)]})
    tasks = {t["name"]: t for t in ext.generate(ctx)}
    wait = tasks["Run.Command:wait"]
    waited = wait["actions"][0][1][-1]
    assert [s.name for s in waited] == ["first", "second"]
    assert "extensions:Run.Command:wait" in tasks["Later.One:unpack"]["task_dep"]
    assert "Later.One:wait" not in tasks

    # The first extension succeeded, the second failed: Later.One is not handled.
    install(ctx, "Run.Command", "1.0.0", "Enabled")
    directory = ext.handler_dir(ctx, "Run.Command", "1.0.0")
    (directory / "status").mkdir()
    for name, status in (("first", "success"), ("second", "error")):
        (directory / f"config/{name}.HandlerState").write_text("enabled")
        (directory / f"status/{name}.0.status").write_text(json.dumps([{"status": {
            "status": status, "code": 0}}]))
    (ext.handler_dir(ctx, "Later.One", "1.0.0") / "config").mkdir(parents=True)
    with pytest.raises(ext.ExtensionFailed, match="Run.Command.second did not succeed"):
        ext.wait_for_handler(ctx, *wait["actions"][0][1][1:])
    later = json.loads((ext.handler_dir(ctx, "Later.One", "1.0.0") / "config/HandlerStatus")
                       .read_text())
    assert (later["status"], later["code"]) == ("NotReady", -1)


def test_a_multi_config_handler_is_enabled_level_by_level_between_other_handlers(
        tmp_path: Path) -> None:
    """waagent sorts extensions, not handlers, by dependsOn level: a multi-config handler's
    extension at level 3 is enabled after the level-2 handler it depends on succeeded, and
    its level-1 extension before that handler."""
    ctx = context(tmp_path)
    inputs.keep_facts(ctx, "extensions", {"id": "incarnation_1", "handlers": [
        multi_config("Run.Command", ("late", 3, "enabled"), ("early", 1, "enabled")),
        handler("Mid.One", level=2)]})
    tasks = {t["name"]: t for t in ext.generate(ctx)}
    assert list(tasks) == [
        "Run.Command:unpack", "Run.Command:settings", "Run.Command:install", "Run.Command:enable",
        "Run.Command:wait", "Mid.One:unpack", "Mid.One:settings", "Mid.One:install",
        "Mid.One:enable", "Mid.One:wait", "Run.Command:enable-level-3"]
    enabled = {name: [s.name for s in tasks[name]["actions"][0][1][1].settings]
               for name in ("Run.Command:enable", "Run.Command:enable-level-3")}
    assert enabled == {"Run.Command:enable": ["early"], "Run.Command:enable-level-3": ["late"]}
    assert [s.name for s in tasks["Run.Command:wait"]["actions"][0][1][-1]] == ["early"]
    assert {"extensions:Run.Command:wait", "extensions:Mid.One:wait",
            "extensions:Run.Command:enable"} <= set(tasks["Run.Command:enable-level-3"]["task_dep"])
    assert "extensions:Run.Command:wait" in tasks["Mid.One:unpack"]["task_dep"]

    # Mid.One failed: the level-3 extension gets an error status of its own, and the
    # handler's status (its level-1 extension is enabled) stays as it was.
    install(ctx, "Run.Command", "1.0.0", "Enabled")
    run = ext.handler_dir(ctx, "Run.Command", "1.0.0")
    (run / "config/HandlerStatus").write_text('{"status": "Ready"}')
    install(ctx, "Mid.One", "1.0.0", "Enabled")
    mid = ext.handler_dir(ctx, "Mid.One", "1.0.0")
    (mid / "status").mkdir()
    (mid / "status/0.status").write_text(json.dumps([{"status": {"status": "error", "code": 1}}]))
    with pytest.raises(ext.ExtensionFailed, match="Mid.One did not succeed"):
        ext.wait_for_handler(ctx, *tasks["Mid.One:wait"]["actions"][0][1][1:])
    late = json.loads((run / "status/late.0.status").read_text())[0]["status"]
    assert (late["status"], late["code"]) == ("error", -1)
    assert "Mid.One did not succeed" in late["formattedMessage"]["message"]
    assert json.loads((run / "config/HandlerStatus").read_text()) == {"status": "Ready"}
    assert not (run / "status/early.0.status").exists()


def test_substatus_codes_are_reported_as_the_handler_wrote_them(tmp_path: Path) -> None:
    """waagent passes a substatus `code` on untouched: "0" stays a string, and a code that
    is no number at all does not make the status malformed."""
    ctx = context(tmp_path)
    inputs.keep_facts(ctx, "extensions", {"id": "i", "handlers": [handler()]})
    install(ctx, "Pub.Handler", "1.0.0", "Enabled")
    h = ext.handlers_of({"handlers": [handler()]})[0]
    ext.set_handler_status(ctx, h, "Ready", "Plugin enabled")
    directory = ext.handler_dir(ctx, "Pub.Handler", "1.0.0")
    (directory / "status").mkdir()
    (directory / "status/0.status").write_text(json.dumps([{"status": {
        "status": "success", "code": 0, "substatus": [
            {"name": "a", "status": "success", "code": "0"},
            {"name": "b", "status": "warning", "code": "N/A"},
            {"name": "c", "status": "success", "code": 7}]}}]))
    [found] = extension_status.handler_statuses(ctx)
    assert found.extension is not None and found.extension.status["status"] == "success"
    assert [s["code"] for s in found.extension.status["substatus"]] == ["0", "N/A", 7]


def test_a_repaired_tree_keeps_an_installed_handlers_state(tmp_path: Path) -> None:
    """waagent never runs install again for an Installed or Enabled handler: a repair of
    its tree (HandlerEnvironment.json or the package's files lost) keeps HandlerState, the
    settings, status/ and mrseq."""
    ctx, h = fetching_context(tmp_path, probe_zip())
    ext.download_package(ctx, h)
    ext.unpack_package(ctx, h)
    ext.write_settings(ctx, h)
    ext.set_handler_state(ctx, h.name, h.version, ext.ENABLED)
    directory = ext.handler_dir(ctx, h.name, h.version)
    (directory / "mrseq").write_text("0")
    (directory / "status/0.status").write_text("[]")

    (directory / "HandlerEnvironment.json").unlink()
    assert ext._not_unpacked(ctx, h.name, h.version)
    ext.unpack_package(ctx, h)
    assert ext.handler_state(ctx, h.name, h.version) == ext.ENABLED
    assert (directory / "HandlerEnvironment.json").is_file()

    (directory / "HandlerManifest.json").unlink()
    (directory / "run.sh").unlink()
    ext.unpack_package(ctx, h)
    assert ext.handler_state(ctx, h.name, h.version) == ext.ENABLED
    assert (directory / "run.sh").is_file() and (directory / "HandlerManifest.json").is_file()
    assert (directory / "mrseq").read_text() == "0"
    assert (directory / "status/0.status").read_text() == "[]"
    assert (directory / "config/0.settings").is_file()
    assert ext._not_installed(ctx, h.name, h.version) is None
    assert ext._not_enabled(ctx, h.name, h.version) is None


def test_a_fresh_unpack_is_not_installed(tmp_path: Path) -> None:
    ctx, h = fetching_context(tmp_path, probe_zip())
    ext.download_package(ctx, h)
    ext.unpack_package(ctx, h)
    assert ext.handler_state(ctx, h.name, h.version) == ext.NOT_INSTALLED
    assert ext._not_installed(ctx, h.name, h.version) is not None


class FakeArtifactServer:
    """Manifests and packages by URL, for the clients resolve_versions makes."""

    def __init__(self, packages: dict[str, bytes | None]) -> None:
        self.packages = packages  # handler name -> its package (None: the fetch fails)
        self.closed = 0
        self.threads: set[str] = set()

    def client(self, ctx: Context, state: Any, *, rounds: int = 3) -> Any:
        import threading

        from wire.artifacts import ArtifactUnavailable
        from wire.handlers import ManifestVersion, PluginVersionManifest

        server = self

        class Client:
            def manifest(self, uris: Any, *, handler: str) -> PluginVersionManifest:
                server.threads.add(threading.current_thread().name)
                return PluginVersionManifest((ManifestVersion("1.0.7", (f"http://x/{handler}",)),))

            def package(self, uris: Any, *, handler: str, version: str) -> bytes:
                found = server.packages[handler]
                if found is None:
                    raise ArtifactUnavailable("no channel delivered it")
                return found

            def close(self) -> None:
                server.closed += 1

        return Client()


def test_manifests_and_packages_of_a_goal_state_are_fetched_a_few_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context(tmp_path)
    server = FakeArtifactServer({"A.One": probe_zip(), "B.Two": None, "C.Bad": b"not a zip",
                                 "D.Four": probe_zip(), "E.Five": probe_zip()})
    monkeypatch.setattr(ext, "new_artifact_client", server.client)
    monkeypatch.setattr(ext, "ARTIFACT_WORKERS", 2)
    handlers = [{**handler(name, version="1.0")} for name in server.packages]
    install(ctx, "E.Five", "1.0.7", "Enabled")  # installed: its package is not fetched again
    fetched = ext.resolve_versions(ctx, object(), handlers, None)
    assert {h["name"]: h["version"] for h in handlers} == dict.fromkeys(server.packages, "1.0.7")
    assert all(h["package_uris"] == [f"http://x/{h['name']}"] for h in handlers)
    # B.Two's fetch failed and C.Bad's package was refused: their unpack tasks try again.
    assert [h["name"] for h, _ in fetched] == ["A.One", "D.Four"]
    assert not list(ctx.lib_dir.glob("*.zip"))  # nothing written: the caller keeps them
    assert server.threads and all(t.startswith("artifacts") for t in server.threads)
    assert server.closed == 2  # a client per worker, closed at the end
    ext._store(ctx, None, ext.Reading({"id": "incarnation_2", "handlers": handlers}, None,
                                      fetched))
    assert {p.name for p in ctx.lib_dir.glob("*.zip")} == {"A.One__1.0.7.zip",
                                                          "D.Four__1.0.7.zip"}
    assert ext.stored_goal_state(ctx)["id"] == "incarnation_2"  # type: ignore[index]
