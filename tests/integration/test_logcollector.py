"""`waagent -collect-logs` on a provisioned sandbox VM, and the upload the daemon makes.

The VM is provisioned against the fabric; then the test plants what a VM that has run
for a while holds: extension logs and a settings file as a handler gets it (with the
fabric's encrypted protected settings), logs quoting secrets, large logs (sparse), and
links that try to leave the root. The archive must hold the expected files and no
secret, within waagent's caps.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric import Fabric, default_scenario
from tests.conftest import need_root, need_tools
from tests.integration.provisioning import WAAGENT, Harness

pytestmark = pytest.mark.root

MiB = 1024 * 1024
PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDplanted\n"
       "cGxhbnRlZC1wcml2YXRlLWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n")


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    need_root()
    need_tools("useradd", "chpasswd", "ssh-keygen", "visudo", "sshd")
    with Fabric(default_scenario()) as fabric:
        harness = Harness(tmp_path, fabric)
        harness.run(check=True)
        # One goal-state pass, as the daemon's: the status blob and its copy in history/.
        harness.run(f"hostplugin={fabric.hostplugin_url}", command="-run-exthandlers",
                    check=True)
        yield harness


def settings_file(harness: Harness) -> tuple[Path, str]:
    """The handler settings file as waagent writes it for the fabric's extension, with
    its protected settings encrypted as the goal state carries them."""
    from graph.context import make_context
    from tasks import inputs
    from wire.documents import parse_goal_state

    ctx = make_context({"root": str(harness.root), "conf": str(harness.conf),
                        "wireserver": harness.fabric.wire_url})
    client = inputs.wireserver(ctx)
    state = parse_goal_state(client.goal_state_document())
    config = client.extensions_config(state)
    assert config is not None
    plugin = config.plugins[0]
    settings = plugin.settings[0]
    assert settings.protected_settings
    path = (harness.root / "var/lib/waagent" / f"{plugin.name}-{plugin.version}" / "config"
            / f"{settings.seq_no}.settings")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runtimeSettings": [{"handlerSettings": {
        "protectedSettingsCertThumbprint": settings.protected_settings_cert_thumbprint,
        "protectedSettings": settings.protected_settings,
        "publicSettings": settings.public_settings}}]}))
    return path, settings.protected_settings


def plant(harness: Harness) -> dict[str, str]:
    """Logs and files of a VM that ran; the secrets they hold, by name."""
    scenario = harness.scenario
    root = harness.root
    custom_data = scenario.custom_data or ""
    secrets = {"password": scenario.password or "", "custom data line": custom_data.splitlines()[1],
               "private key": "cGxhbnRlZC1wcml2YXRlLWtleS1tYXRlcmlhbA", "protected": "s3cret"}
    _, protected = settings_file(harness)
    secrets["protected settings (encrypted)"] = protected[:40]
    ext = root / "var/log/azure/Fabric.Demo.NoOp"
    ext.mkdir(parents=True, exist_ok=True)
    (ext / "handler.log").write_text(
        "enable: started\n"
        f"a careless handler printed its key:\n{PEM}"
        f"and its settings: {{\"protectedSettings\": \"{protected}\"}}\n"
        f"<UserPassword>{scenario.password}</UserPassword>\n"
        f"custom data was: {custom_data.splitlines()[1]}\n"
        "enable: done\n")
    log = root / "var/log"
    with open(log / "waagent.log", "a") as agent:
        agent.write("2024-01-01T00:00:00Z INFO the newest agent line\n")
    (log / "syslog").write_text("kernel: hello\n")
    with open(log / "syslog.1", "wb") as big:  # 200 MB, sparse: cut to its last 30 MiB
        big.truncate(200 * 1000 * 1000 - 20)
        big.seek(0, os.SEEK_END)
        big.write(b"the last syslog line\n")
    with open(log / "syslog.2.gz", "wb") as packed:  # a large compressed log: left out
        packed.truncate(40 * MiB)
    os.symlink("/etc/shadow", ext / "shadow.log")
    os.symlink("../../../../../../../../../../etc/shadow", ext / "host-shadow.log")
    return secrets


def unpacked(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        return {name: opened.read(name) for name in opened.namelist()}


def test_the_archive_holds_the_vm_logs_and_no_secret(harness: Harness) -> None:
    secrets = plant(harness)
    result = subprocess.run([WAAGENT, "-collect-logs", f"root={harness.root}",
                             f"conf={harness.conf}"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    archive = harness.root / "var/lib/waagent/logcollector/logs.zip"
    files = unpacked(archive.read_bytes())
    names = list(files)
    assert names[0] == "var/log/waagent.log"
    assert b"the newest agent line" in files["var/log/waagent.log"]
    assert any(n.startswith("var/lib/waagent/history/") and n.endswith("waagent_status.json")
               for n in names)
    assert "var/lib/waagent/ovf-env.xml" in names
    assert "var/log/azure/Fabric.Demo.NoOp/handler.log" in names
    assert "var/lib/waagent/Fabric.Demo.NoOp-1.0.0/config/0.settings" in names
    assert "var/log/syslog" in names and "etc/waagent.conf" not in names
    # Caps: the 200 MB log cut to its last 30 MiB; the large compressed one left out.
    tail = files["truncated_var_log_syslog.1"]
    assert len(tail) == 30 * MiB and tail.endswith(b"the last syslog line\n")
    assert "var/log/syslog.2.gz" not in names
    assert sum(len(data) for data in files.values()) <= 150 * MiB + MiB
    results = files["results.txt"].decode()
    assert "left out /var/log/syslog.2.gz" in results and "cannot be cut" in results
    assert "refused  /var/log/azure/Fabric.Demo.NoOp/host-shadow.log" in results
    assert "refused  /var/log/azure/Fabric.Demo.NoOp/shadow.log" in results
    assert not any(n.endswith((".prv", "shadow")) or "shadow.log" in n for n in names)
    settings = json.loads(files["var/lib/waagent/Fabric.Demo.NoOp-1.0.0/config/0.settings"])
    handler = settings["runtimeSettings"][0]["handlerSettings"]
    assert handler["protectedSettings"] == "<redacted by waagent>"
    assert handler["publicSettings"] == {"greeting": "hello"}
    for what, secret in secrets.items():
        for name, data in files.items():
            assert secret.encode() not in data, f"{what} found in {name}"
    assert b"BEGIN PRIVATE KEY" not in files["var/log/azure/Fabric.Demo.NoOp/handler.log"]


def test_the_daemon_uploads_the_archive_to_the_hostgaplugin(harness: Harness) -> None:
    """The daemon's periodic step (tasks.logcollector.PeriodicCollection) with its first
    run due at once: the collector runs as a child process, and the fabric records the
    zip it receives on PUT /vmAgentLog, with the deployment id header."""
    from graph.context import make_context
    from tasks import inputs
    from tasks.logcollector import PeriodicCollection
    from tasks.status import fetch_status_target
    from wire.documents import parse_goal_state

    ctx = make_context({"root": str(harness.root), "conf": str(harness.conf),
                        "wireserver": harness.fabric.wire_url,
                        "hostplugin": harness.fabric.hostplugin_url})
    state = parse_goal_state(inputs.wireserver(ctx).goal_state_document())
    target = fetch_status_target(ctx, state)
    periodic = PeriodicCollection(time.monotonic, first_delay=0)
    assert periodic.tick(ctx, target) is None and periodic.running is not None
    deadline = time.monotonic() + 120
    outcome = None
    while outcome is None and time.monotonic() < deadline:
        time.sleep(0.2)
        outcome = periodic.tick(ctx, target)
    assert outcome is not None and outcome["result"] == "uploaded", outcome
    logs = harness.fabric.record.logs()
    assert len(logs) == 1
    uploaded = base64.b64decode(logs[0]["content_base64"])
    assert logs[0]["size"] == outcome["bytes"]
    assert logs[0]["headers"].get("x-ms-vmagentlog-deploymentid") == \
        (state.role_config_name or "").split(".")[0]
    assert logs[0]["headers"].get("x-ms-containerid") == state.container_id
    files = unpacked(uploaded)
    assert "var/log/waagent.log" in files and "results.txt" in files
