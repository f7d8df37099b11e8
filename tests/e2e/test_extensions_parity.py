"""An extension handler's life under the published agent (waagent 2.7.3, Debian's package,
`-daemon`) and ours, in identical VM roots against the same fabric scenario, compared.

Each agent lives the same steps in a fresh Debian 12 VM (both agents installed, the package's
/etc/waagent.conf with the overrides below), the two VMs at once: DHCP, `-daemon`, then the
probe handler (tests/e2e/probe_handler.py, a zip the fabric serves) Test.Probe 1.0.0 with
public and protected settings is installed and enabled; its settings change (seq 1); it is
updated to 1.1.0; it is uninstalled. Each step is published through the fabric's control
channel once the step before has settled (its enable's status in the status blob), and after
each step the test takes a snapshot of the VM:

- the handler's directory trees (`<Lib.Dir>/Test.Probe-*`, the package zips, the log folder):
  names, types and modes (never timestamps or the contents of logs);
- the contents of the agent-owned files the handler reads: HandlerEnvironment.json,
  config/HandlerState, the settings files (protectedSettings decrypted: the fabric encrypts
  them afresh for each VM with a random content key, so the ciphertexts differ), mrseq;
- the environment variables each command saw, and the order of the commands;
- the handler's part of the status blob (handlerAggregateStatus).

Snapshots must be equal, except at ALLOWED (each with its reason); the status blob's handler
parts must have the same shape. Differences are printed (`pytest -s`).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fabric.scenario import default_scenario_path
from tests.e2e import harness
from tests.e2e.conftest import checked_lab, need_lab
from tests.e2e.probe_handler import build_probe, operations, order
from tests.e2e.test_daemon_parity import differences, shape

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NAME = "Test.Probe"
OVERRIDES = {**harness.BOTH_AGENTS_OVERRIDES,
             "Extensions.GoalStatePeriod": "2", "Extensions.InitialGoalStatePeriod": "2"}
AGENTS = {"waagent 2.7.3": "/usr/sbin/waagent", "ours": "/" + harness.AGENT_LAUNCHER}
# Value differences allowed, by path in a snapshot (a regular expression over
# "step.part.key..."), and why. Nothing of the handler's files or environment is here.
ALLOWED: dict[str, str] = {
    r"\w+\.blob\[\d+\]\.runtimeSettingsStatus\.settingsStatus\.timestampUTC":
        "the clock: the probe stamps its status file when its command runs, at another "
        "moment in each VM (both agents report the file's timestampUTC)",
}
WAIT = 300.0  # waagent 2.7.3 takes its time: IMDS, telemetry, the handler's commands


def probe_zips(directory: Path) -> dict[str, Path]:
    return {version: build_probe(directory / f"probe-{version}.zip", NAME)
            for version in ("1.0.0", "1.1.0")}


def write_scenario(work: Path, zips: dict[str, Path]) -> Path:
    """The default scenario with the probe, 1.0.0, as its only extension."""
    data = yaml.safe_load(default_scenario_path().read_text())
    data["extensions"] = [{"name": NAME, "version": "1.0.0", "package": str(zips["1.0.0"]),
                           "public_settings": {"n": 1},
                           "protected_settings": {"secret": "p1"}}]
    path = work / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# The steps: (name, control request, what the blob must say for the step to have settled:
# handlerVersion and the probe's status message; None: the handler is gone).
STEPS: list[tuple[str, dict[str, Any] | None, tuple[str, str] | None]] = [
    ("install", None, ("1.0.0", "probe enable 1.0.0 seq 0")),
    ("settings", {"public_settings": {"n": 2}, "protected_settings": {"secret": "p2"}},
     ("1.0.0", "probe enable 1.0.0 seq 1")),
    ("update", {"version": "1.1.0", "package": "1.1.0"}, ("1.1.0", "probe enable 1.1.0 seq 1")),
    ("uninstall", {"state": "uninstall"}, None),
]


def prepare(root: Path) -> None:
    harness.prepare_both_agents(root, OVERRIDES)


def probe_in_blob(blob: dict[str, Any]) -> list[dict[str, Any]]:
    handlers = blob["status"].get("aggregateStatus", {}).get("handlerAggregateStatus", [])
    return [h for h in handlers if h.get("handlerName") == NAME]


def settled_blob(lab: harness.Lab, expect: tuple[str, str] | None,
                 after: int) -> dict[str, Any] | None:
    """The first status blob after the first `after` that shows the step done."""
    blobs = lab.fabric.status_blobs()[after:]
    if expect is None:
        # The directory went, and an upload no longer knows the handler (waagent 2.7.3
        # uploads only a changed status: there may be no second one).
        gone = not list((lab.root / "var/lib/waagent").glob(f"{NAME}-*"))
        empty = [b for b in blobs if not probe_in_blob(b)]
        return empty[-1] if gone and empty else None
    version, message = expect
    for blob in blobs:
        for handler in probe_in_blob(blob):
            status = handler.get("runtimeSettingsStatus", {}).get("settingsStatus", {}).get(
                "status", {})
            if handler.get("handlerVersion") == version and handler.get("status") == "Ready" \
                    and status.get("formattedMessage", {}).get("message") == message:
                return blob
    return None


def decrypt(lib: Path, thumbprint: str, text: str) -> Any:
    """protectedSettings decrypted with the certificate the handler would use."""
    with tempfile.NamedTemporaryFile() as der:
        der.write(base64.b64decode(text))
        der.flush()
        done = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", der.name,
                               "-recip", str(lib / f"{thumbprint}.crt"),
                               "-inkey", str(lib / f"{thumbprint}.prv")],
                              capture_output=True, check=True)
    return json.loads(done.stdout)


def tree(base: Path, top: Path) -> dict[str, str]:
    """relative path -> "dir 0700" / "file 0600" / "link" of everything under `base`."""
    found = {}
    for path in sorted([base, *base.rglob("*")]):
        mode = path.lstat().st_mode
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        found[str(path.relative_to(top))] = f"{kind} {mode & 0o7777:04o}"
    return found


def snapshot(lab: harness.Lab, blob: dict[str, Any]) -> dict[str, Any]:
    root = lab.root
    lib = root / "var/lib/waagent"
    logs = root / "var/log/azure" / NAME
    trees: dict[str, str] = {}
    for path in sorted(lib.glob(f"{NAME}[-_]*")):
        trees.update(tree(path, lib))
    if logs.exists():
        trees.update(tree(logs, logs.parent))
    files: dict[str, Any] = {}
    for path in sorted(lib.glob(f"{NAME}-*/*")) + sorted(lib.glob(f"{NAME}-*/config/*")):
        relative = str(path.relative_to(lib))
        if path.name == "HandlerEnvironment.json":
            files[relative] = json.loads(path.read_text())
        elif path.name in ("HandlerState", "mrseq"):
            files[relative] = path.read_text().strip()
        elif path.name.endswith(".settings"):
            settings = json.loads(path.read_text()) if path.read_text().strip() else None
            for runtime in (settings or {}).get("runtimeSettings", []):
                handler = runtime["handlerSettings"]
                if handler.get("protectedSettings"):
                    handler["protectedSettings"] = decrypt(
                        lib, handler["protectedSettingsCertThumbprint"],
                        handler["protectedSettings"])
            files[relative] = settings
    env = {path.name: dict(line.split("=", 1) for line in path.read_text().splitlines())
           for path in sorted((logs / "env").glob("*"))} if (logs / "env").exists() else {}
    return {"tree": trees, "files": files, "env": env, "operations": operations(root, NAME),
            "order": order(root), "blob": probe_in_blob(blob)}


def live(work: Path, agent: str, zips: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """The agent's snapshots, step by step."""
    scenario = write_scenario(work, zips)
    with checked_lab(work, scenario, conf=None, packages=harness.WAAGENT_PACKAGES,
                     prepare=prepare) as lab:
        lab.vm.dhcp()
        log = work / "agent.log"
        process = lab.vm.popen([AGENTS[agent], "-daemon"], log)
        snapshots: dict[str, dict[str, Any]] = {}
        try:
            lab.fabric.wait_for_health("Ready", WAIT)
            for step, change, expect in STEPS:
                after = len(lab.fabric.status_blobs())
                if change is not None:
                    fields = dict(change)
                    if "package" in fields:
                        fields["package"] = str(zips[fields["package"]])
                    lab.fabric.control("set-extension", name=NAME, **fields)
                blob = harness.wait_until(lambda e=expect, a=after: settled_blob(lab, e, a),
                                          WAIT, f"{agent}: step {step} settled", 0.5)
                snapshots[step] = snapshot(lab, blob)
        except AssertionError as err:
            said = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"{agent}: {err}; it said:\n{said}") from None
        finally:
            harness.stop(process, 15)
        problems = [p for b in lab.fabric.status_blobs() for p in b["problems"]]
        assert problems == [], f"{agent}: {problems}"
        return snapshots


@pytest.fixture(scope="module")
def lives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Both agents' snapshots, the two VMs at once."""
    need_lab(harness.WAAGENT_PACKAGES)
    zips = probe_zips(tmp_path_factory.mktemp("probe"))
    found: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def one(agent: str) -> None:
        try:
            found[agent] = live(tmp_path_factory.mktemp("ext-parity"), agent, zips)
        except BaseException as err:  # noqa: BLE001 - raised below, in the test's thread
            errors[agent] = err

    threads = [threading.Thread(target=one, args=(agent,)) for agent in AGENTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise next(iter(errors.values()))
    # Kept for a look after the run (`pytest -s` prints the differences too).
    (tmp_path_factory.getbasetemp() / "snapshots.json").write_text(json.dumps(found, indent=1))
    yield found


def allowed(path: str) -> str | None:
    return next((why for pattern, why in ALLOWED.items() if re.fullmatch(pattern, path)), None)


@pytest.mark.parametrize("step", [step for step, _, _ in STEPS])
def test_handler_files_environment_and_order_are_waagents(lives: dict[str, Any],
                                                           step: str) -> None:
    ours, theirs = lives["ours"][step], lives["waagent 2.7.3"][step]
    for part in ("tree", "files", "env", "operations", "order"):
        print(f"\n{step}.{part}, waagent 2.7.3:", json.dumps(theirs[part], indent=1))
        assert ours[part] == theirs[part], f"{step}.{part}: ours {json.dumps(ours[part])}"


@pytest.mark.parametrize("step", [step for step, _, _ in STEPS])
def test_status_blob_handler_parts_have_the_same_shape(lives: dict[str, Any],
                                                       step: str) -> None:
    ours, theirs = lives["ours"][step]["blob"], lives["waagent 2.7.3"][step]["blob"]
    print(f"\n{step}: waagent 2.7.3", json.dumps(theirs, indent=1), "\nours", json.dumps(ours))
    assert shape(ours) == shape(theirs)


@pytest.mark.parametrize("step", [step for step, _, _ in STEPS])
def test_status_blob_values_differ_only_where_the_versions_do(lives: dict[str, Any],
                                                              step: str) -> None:
    found = list(differences(lives["ours"][step]["blob"],
                             lives["waagent 2.7.3"][step]["blob"], f"{step}.blob"))
    print("\nvalues that differ (path: ours | waagent 2.7.3):")
    for path, mine, other in found:
        print(f"  {path}: {json.dumps(mine)} | {json.dumps(other)}  "
              f"({allowed(path) or 'NOT ALLOWED'})")
    assert [(path, mine, other) for path, mine, other in found if not allowed(path)] == []
