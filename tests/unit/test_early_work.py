"""The transport key pair starts before doit loads, and the graph collects it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from graph import loader
from system.fs import FileSystem
from system.root import Root
from system.runner import Runner
from tasks import inputs
from wire.transport import load_transport_pair, start_transport_keygen

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture
def early_root(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/waagent.conf").write_text("ResourceDisk.Format=n\n")
    yield tmp_path
    loader.PROCESS.early_context = None


@needs_openssl
def test_the_graph_uses_the_context_whose_keygen_started_early(early_root: Path) -> None:
    loader.start_early_work([f"root={early_root}", "wireserver=http://127.0.0.1:9"])
    early = loader.PROCESS.early_context
    assert early is not None and early.state.transport_pair is not None
    loader.dodo_namespace({"root": str(early_root), "wireserver": "http://127.0.0.1:9"})
    assert loader.PROCESS.context is early and loader.PROCESS.early_context is None
    pair = inputs.transport_pair(early)
    assert load_transport_pair(early.lib_dir) == pair
    assert not list(early.lib_dir.glob(".transport-pair-*")), "scratch directory removed"


def test_other_variables_get_a_context_of_their_own(early_root: Path) -> None:
    # No openssl: nothing is left running in the sandbox when the test ends.
    (early_root / "etc/waagent.conf").write_text("OS.OpensslPath=/nonexistent/openssl\n")
    loader.start_early_work([f"root={early_root}", "verbose=y"])
    early = loader.PROCESS.early_context
    loader.dodo_namespace({"root": str(early_root)})
    assert loader.PROCESS.context is not early


def test_no_early_work_for_a_plan(early_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader.PROCESS, "plan_mode", True)
    loader.start_early_work([f"root={early_root}"])
    assert loader.PROCESS.early_context is None and not (early_root / "var").exists()


def test_scratch_of_an_agent_that_is_gone_is_removed(tmp_path: Path) -> None:
    lib_dir = tmp_path / "var/lib/waagent"
    gone = lib_dir / ".transport-pair-4194305.partial"  # above any pid_max: no such process
    alive = lib_dir / f".transport-pair-{os.getppid()}.partial"
    for path in (gone, alive):
        path.mkdir(parents=True)
    collect = start_transport_keygen(FileSystem(Runner(root=Root(tmp_path))), lib_dir,
                                     "/nonexistent/openssl")
    assert not gone.exists() and alive.exists()
    collect()
    assert sorted(p.name for p in lib_dir.iterdir()) == [alive.name]


def test_scratch_still_being_written_does_not_stop_the_agent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILLed agent's openssl may still write into its scratch directory while the
    next agent tidies up: the tidy-up waits for a later run, the key pair is still made."""
    lib_dir = tmp_path / "var/lib/waagent"
    gone = lib_dir / ".transport-pair-4194305.partial"
    gone.mkdir(parents=True)
    fs = FileSystem(Runner(root=Root(tmp_path)))
    real_remove = fs.remove

    def remove_racing_a_writer(path: Path, **kwargs: object) -> bool:
        if path == gone:
            raise OSError(39, "Directory not empty", str(path))
        return real_remove(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fs, "remove", remove_racing_a_writer)
    collect = start_transport_keygen(fs, lib_dir, "/nonexistent/openssl")
    cert, key = collect()
    assert cert.startswith(b"-----BEGIN CERTIFICATE") and gone.exists()


def test_a_run_of_provision_loads_only_the_areas_of_the_group() -> None:
    namespace = {"DOIT_CONFIG": {"default_tasks": ["provision"]},
                 **{f"task_{name}": object() for name in (
                     "gather", "ssh", "certificates", "deprovision", "serialconsole",
                     "provision")}}
    for targets in (["provision", "root=/x"], []):
        kept = loader.for_groups_only(namespace, "run", targets)
        assert "task_deprovision" not in kept and "task_serialconsole" not in kept
        assert {"task_gather", "task_ssh", "task_certificates", "task_provision",
                "DOIT_CONFIG"} <= set(kept)
    # Anything else may need any area: a task's dependencies can lie in other areas.
    for command, targets in (("run", ["ssh"]), ("run", ["user:account"]),
                             ("run", ["provision", "deprovision"]), ("list", [])):
        assert loader.for_groups_only(namespace, command, targets) == namespace
