"""Extension handlers really run: a Debian root in chroot mode (chroot=y), the fabric on
127.0.0.1 serving the packages, and `waagent provision` as the boot (and the daemon's
goal-state passes) runs it: install, enable, a settings change, an update, disable,
uninstall, dependsOn, and handlers that time out, crash, write a malformed status or come
in a hostile zip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric import Fabric, build_media, default_scenario
from fabric.scenario import Extension, Scenario
from graph.context import make_context
from tasks.extension_status import handler_statuses
from tests.integration.provisioning import BASE_CONF, WAAGENT
from tests.sandbox import product_uuid_for
from tests.support import debian_root

pytestmark = pytest.mark.root

PACKAGES = (*debian_root.DEFAULT_PACKAGES, "python3", "fdisk", "e2fsprogs", "openssl")
SAMPLE = Path(os.environ.get("WAAGENT_FIXTURES", "/work/shared/fixtures")) / \
    "walinuxagent/ext/sample_ext-1.3.0"
LIB = "var/lib/waagent"

# A handler that writes the environment each command saw, and a success status.
PROBE = r"""#!/bin/sh
op="$1"
here="$(cd "$(dirname "$0")/.." && pwd)"
ext="${ConfigExtensionName:+$ConfigExtensionName.}"
env | grep -E '^(AZURE_GUEST_AGENT_|ConfigSequenceNumber|ConfigExtensionName|VERSION=)' \
    | sort > "$here/env.$ext$op"
cp "$here/env.$ext$op" "/tmp/env.$ext$op.$AZURE_GUEST_AGENT_EXTENSION_VERSION"
echo "$op $AZURE_GUEST_AGENT_EXTENSION_VERSION${ConfigExtensionName:+ $ConfigExtensionName}" \
    >> /tmp/handler-order.log
__BODY__
seq="${ConfigSequenceNumber:-0}"
mkdir -p "$here/status"
printf '[{"version":"1.0","timestampUTC":"2026-01-01T00:00:00Z","status":{"name":"probe","operation":"%s","status":"success","code":"0","formattedMessage":{"lang":"en-US","message":"probe %s"}}}]' \
    "$op" "$op$ext" > "$here/status/$ext$seq.status"
echo "$seq" > "$here/${ext}mrseq"
exit 0
"""


def make_handler(directory: Path, *, enable: str = "", name: str = "Probe",
                 bodies: dict[str, str] | None = None, **manifest_fields: Any) -> Path:
    """A handler package directory whose every command runs the probe script; `enable`
    (or `bodies[op]`) is shell its command runs before it reports success;
    `manifest_fields` go into handlerManifest (resourceLimits at the top)."""
    directory.mkdir(parents=True)
    bodies = {**({"enable": enable} if enable else {}), **(bodies or {})}
    body = "\n".join(f'if [ "$op" = {op} ]; then\n{shell}\nfi' for op, shell in bodies.items())
    script = directory / "bin/probe.sh"
    script.parent.mkdir()
    script.write_text(PROBE.replace("__BODY__", body))
    script.chmod(0o755)
    manifest = [{"name": name, "version": 1.0, "handlerManifest": {
        f"{op}Command": f"bin/probe.sh {op}"
        for op in ("install", "uninstall", "update", "enable", "disable")}}]
    manifest[0]["handlerManifest"].update({"reportHeartbeat": False,
                                           "updateMode": "UpdateWithInstall"})
    limits = manifest_fields.pop("resourceLimits", None)
    if limits is not None:
        manifest[0]["resourceLimits"] = limits
    manifest[0]["handlerManifest"].update(manifest_fields)
    (directory / "HandlerManifest.json").write_text(json.dumps(manifest))
    return directory


class VM:
    """A Debian image root provisioned against the fabric in chroot mode."""

    def __init__(self, root: Path, tmp: Path, scenario: Scenario) -> None:
        self.root, self.tmp, self.scenario = root, tmp, scenario
        dmi = root / "sys/class/dmi/id"
        dmi.mkdir(parents=True, exist_ok=True)
        (dmi / "product_uuid").write_text(product_uuid_for(scenario.vm_id))
        self.media = build_media(scenario, tmp / "ovf.iso")
        (root / "etc/waagent.conf").write_text(BASE_CONF)
        self.fabric = Fabric(scenario)
        self.fabric.__enter__()

    def close(self) -> None:
        self.fabric.__exit__(None, None, None)

    def boot(self, *, timeout: str = "20") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "WAAGENT_HANDLER_TIMEOUT": timeout,
               "WAAGENT_DEPENDENCY_TIMEOUT": "20", "WAAGENT_ARTIFACT_BACKOFF": "0.1"}
        return subprocess.run(
            [WAAGENT, "provision", f"root={self.root}", "chroot=y",
             f"wireserver={self.fabric.wire_url}", f"hostplugin={self.fabric.hostplugin_url}",
             f"media={self.media}"], capture_output=True, text=True, timeout=600, check=False,
            env=env)

    def exthandlers_pass(self) -> subprocess.CompletedProcess[str]:
        """`waagent -run-exthandlers`: one daemon pass, its status blob sent to the fabric."""
        return subprocess.run(
            [WAAGENT, "-run-exthandlers", f"root={self.root}", "chroot=y",
             f"wireserver={self.fabric.wire_url}", f"hostplugin={self.fabric.hostplugin_url}"],
            capture_output=True, text=True, timeout=600, check=False,
            env={**os.environ, "WAAGENT_HANDLER_TIMEOUT": "20"})

    def order(self) -> list[str]:
        return (self.root / "tmp/handler-order.log").read_text().splitlines()

    def lib(self, *parts: str) -> Path:
        return self.root.joinpath(LIB, *parts)

    def state(self, handler: str) -> str:
        return self.lib(handler, "config/HandlerState").read_text()

    def statuses(self) -> dict[str, Any]:
        ctx = make_context({"root": str(self.root)})
        return {h.name: h for h in handler_statuses(ctx)}

    def env(self, handler: str, op: str) -> dict[str, str]:
        lines = self.lib(handler, f"env.{op}").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)


@pytest.fixture
def make_vm(tmp_path: Path) -> Iterator[Any]:
    reason = debian_root.skip_reason(PACKAGES)
    if reason:
        pytest.skip(reason)
    made: list[VM] = []

    def make(*extensions: Extension, keep_noop: bool = False) -> VM:
        scenario = default_scenario()
        if not keep_noop:
            scenario.extensions = []
        scenario.extensions += list(extensions)
        root = debian_root.fresh_debian_root(tmp_path / f"vm{len(made)}", PACKAGES)
        vm = VM(root, tmp_path, scenario)
        made.append(vm)
        return vm

    yield make
    for vm in made:
        vm.close()


def test_install_enable_settings_update_disable_uninstall(make_vm: Any, tmp_path: Path) -> None:
    v1 = make_handler(tmp_path / "probe-1.0.0")
    v2 = make_handler(tmp_path / "probe-1.1.0")
    vm = make_vm(Extension(name="Test.Probe", version="1.0.0", package=str(v1),
                           public_settings={"n": 1}, protected_settings={"secret": "p"}),
                 Extension(name="OSTCExtensions.ExampleHandlerLinux", version="1.3.0",
                           package=str(SAMPLE), public_settings={"message": "hello sample"}),
                 keep_noop=True)
    out = vm.boot()
    assert out.returncode == 0, out.stdout + out.stderr
    probe = "Test.Probe-1.0.0"
    for handler in (probe, "OSTCExtensions.ExampleHandlerLinux-1.3.0", "Fabric.Demo.NoOp-1.0.0"):
        assert vm.state(handler) == "Enabled", handler
    # Files as waagent writes them.
    settings = json.loads(vm.lib(probe, "config/0.settings").read_text())
    handler_settings = settings["runtimeSettings"][0]["handlerSettings"]
    assert handler_settings["publicSettings"] == {"n": 1}
    assert handler_settings["protectedSettings"].startswith("MII")  # still encrypted
    thumbprint = handler_settings["protectedSettingsCertThumbprint"]
    assert vm.lib(f"{thumbprint}.crt").exists() and vm.lib(f"{thumbprint}.prv").exists()
    environment = json.loads(vm.lib(probe, "HandlerEnvironment.json").read_text())[0]
    assert environment["name"] == "Test.Probe" and environment["version"] == 1.0
    assert environment["handlerEnvironment"] == {
        "logFolder": "/var/log/azure/Test.Probe",
        "configFolder": f"/{LIB}/{probe}/config", "statusFolder": f"/{LIB}/{probe}/status",
        "heartbeatFile": f"/{LIB}/{probe}/heartbeat.log",
        "eventsFolder": "/var/log/azure/Test.Probe/events",
        "eventsFolder_preview": "/var/log/azure/Test.Probe/events"}
    assert (vm.root / "var/log/azure/Test.Probe/CommandExecution.log").exists()
    env = vm.env(probe, "enable")
    assert env == {
        "AZURE_GUEST_AGENT_EXTENSION_PATH": f"/{LIB}/{probe}",
        "AZURE_GUEST_AGENT_EXTENSION_VERSION": "1.0.0",
        "AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES":
            '[{"Key": "ExtensionTelemetryPipeline", "Value": "1.0"}]',
        "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE": "NOT_RUN",
        "AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS": "127.0.0.1",
        "ConfigSequenceNumber": "0"}
    sample_status = json.loads(vm.lib("OSTCExtensions.ExampleHandlerLinux-1.3.0",
                                      "status/0.status").read_text())
    assert sample_status[0]["status"]["formattedMessage"]["message"] == "hello sample"
    statuses = vm.statuses()
    assert statuses["Test.Probe"].status == "Ready"
    assert statuses["Test.Probe"].extension.status["status"] == "success"
    assert statuses["Test.Probe"].extension.status["code"] == "0"  # as written, as waagent
    assert statuses["OSTCExtensions.ExampleHandlerLinux"].extension.status[
        "formattedMessage"]["message"] == "hello sample"

    # A second boot with nothing new runs no handler command.
    order = vm.root / "tmp/handler-order.log"
    before = order.read_text()
    assert vm.boot().returncode == 0
    assert order.read_text() == before

    # New settings: enable with the new sequence number.
    vm.fabric.set_extension("Test.Probe", public_settings={"n": 2})
    assert vm.boot().returncode == 0
    assert json.loads(vm.lib(probe, "config/1.settings").read_text())[
        "runtimeSettings"][0]["handlerSettings"]["publicSettings"] == {"n": 2}
    assert vm.env(probe, "enable")["ConfigSequenceNumber"] == "1"
    assert order.read_text().splitlines()[-1] == "enable 1.0.0"

    # A new version: old disabled, new updated, old uninstalled and removed, new installed.
    vm.fabric.set_extension("Test.Probe", version="1.1.0", package=str(v2))
    out = vm.boot()
    assert out.returncode == 0, out.stdout + out.stderr
    new = "Test.Probe-1.1.0"
    assert not vm.lib(probe).exists() and not vm.lib("Test.Probe__1.0.0.zip").exists()
    assert vm.state(new) == "Enabled"
    assert vm.lib(new, "mrseq").read_text().strip() == "1"
    assert order.read_text().splitlines()[-5:] == [
        "disable 1.0.0", "update 1.1.0", "uninstall 1.0.0", "install 1.1.0", "enable 1.1.0"]
    update_env = vm.env(new, "update")
    assert update_env["VERSION"] == "1.1.0"
    assert update_env["AZURE_GUEST_AGENT_UPDATING_FROM_VERSION"] == "1.0.0"
    assert update_env["AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE"] == "0"
    assert vm.env(new, "install")["AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE"] == "0"

    # Disabled, then uninstalled; the no-op handler leaves the goal state.
    vm.fabric.set_extension("Test.Probe", state="disabled")
    assert vm.boot().returncode == 0
    assert vm.state(new) == "Installed"
    assert order.read_text().splitlines()[-1] == "disable 1.1.0"
    vm.fabric.set_extension("Test.Probe", state="uninstall")
    vm.fabric.remove_extension("Fabric.Demo.NoOp")
    assert vm.boot().returncode == 0
    assert order.read_text().splitlines()[-1] == "uninstall 1.1.0"
    assert not vm.lib(new).exists()
    assert not vm.lib("Fabric.Demo.NoOp-1.0.0").exists()
    assert not vm.lib("Fabric.Demo.NoOp__1.0.0.zip").exists()


def test_depends_on_waits_for_the_lower_level_and_a_failure_stops_the_chain(
        make_vm: Any, tmp_path: Path) -> None:
    first = make_handler(tmp_path / "first", enable="sleep 1")
    second = make_handler(tmp_path / "second")
    broken = make_handler(tmp_path / "broken", enable="exit 3")
    after = make_handler(tmp_path / "after")
    vm = make_vm(
        Extension(name="Chain.Second", package=str(second), dependency_level=2,
                  depends_on=["Chain.First"], public_settings={"a": 2}),
        Extension(name="Chain.First", package=str(first), dependency_level=1,
                  public_settings={"a": 1}),
        Extension(name="Bad.First", package=str(broken), dependency_level=3,
                  public_settings={"b": 1}),
        Extension(name="Bad.After", package=str(after), dependency_level=4,
                  depends_on=["Bad.First"], public_settings={"b": 2}))
    out = vm.boot()
    enabled = [line for line in (vm.root / "tmp/handler-order.log").read_text().splitlines()
               if line.startswith("enable")]
    assert vm.state("Chain.First-1.0.0") == "Enabled"
    assert vm.state("Chain.Second-1.0.0") == "Enabled"
    order = (vm.root / "tmp/handler-order.log").read_text()
    assert order.index("enable") < order.rindex("install")  # the second waited for the first
    assert len(enabled) == 3, out.stdout  # the two of the chain, and the broken one
    statuses = vm.statuses()
    assert statuses["Bad.First"].code == 1009
    assert "Non-zero exit code: 3" in (statuses["Bad.First"].message or "")
    assert statuses["Bad.After"].status == "NotReady" and statuses["Bad.After"].code == -1
    assert "Bad.First" in (statuses["Bad.After"].message or "")
    assert not (vm.lib("Bad.After-1.0.0", "config/HandlerState").exists()
                and vm.state("Bad.After-1.0.0") == "Enabled")


def test_a_multi_config_handler_is_enabled_level_by_level(make_vm: Any, tmp_path: Path) -> None:
    """waagent orders extensions, not handlers: a multi-config handler's level-1 extension is
    enabled before the level-2 handler, its level-3 extension after that one succeeded."""
    from fabric.scenario import ExtensionConfig

    multi = make_handler(tmp_path / "multi", supportsMultipleExtensions=True)
    middle = make_handler(tmp_path / "middle", enable="sleep 1")
    vm = make_vm(
        Extension(name="Multi.Probe", package=str(multi), multi_config=[
            ExtensionConfig(name="late", dependency_level=3, public_settings={"x": 3}),
            ExtensionConfig(name="early", dependency_level=1, public_settings={"x": 1})]),
        Extension(name="Middle.Probe", package=str(middle), dependency_level=2,
                  public_settings={"m": 2}))
    out = vm.boot()
    assert out.returncode == 0, out.stdout + out.stderr
    assert [line for line in vm.order() if line.startswith("enable")] == [
        "enable 1.0.0 early", "enable 1.0.0", "enable 1.0.0 late"], out.stdout
    assert vm.lib("Multi.Probe-1.0.0", "config/late.HandlerState").read_text() == "enabled"
    assert vm.state("Multi.Probe-1.0.0") == "Enabled"


def hostile_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("HandlerManifest.json", json.dumps([{"handlerManifest": {
            f"{op}Command": "run.sh" for op in
            ("install", "uninstall", "update", "enable", "disable")}}]))
        archive.writestr("../../../../../tmp/evil.txt", "escaped")
    return path


def test_failing_handlers_get_error_statuses(make_vm: Any, tmp_path: Path) -> None:
    slow = make_handler(tmp_path / "slow", enable="sleep 60")
    crash = make_handler(tmp_path / "crash", enable="echo boom >&2; exit 7")
    malformed = make_handler(tmp_path / "malformed",
                             enable='mkdir -p "$here/status"; echo "{not json" > '
                                    '"$here/status/0.status"; exit 0')
    vm = make_vm(
        Extension(name="Slow.Handler", package=str(slow), public_settings={}),
        Extension(name="Crash.Handler", package=str(crash), public_settings={}),
        Extension(name="Malformed.Handler", package=str(malformed), public_settings={}),
        Extension(name="Hostile.Handler", package=str(hostile_zip(tmp_path / "evil.zip")),
                  public_settings={}))
    out = vm.boot(timeout="3")
    assert out.returncode != 0  # the extension tasks failed
    assert (vm.root / "etc/waagent.conf").exists()
    statuses = vm.statuses()
    assert statuses["Slow.Handler"].code == 1011
    assert "Timeout(3)" in (statuses["Slow.Handler"].message or "")
    assert statuses["Crash.Handler"].code == 1009
    assert "boom" in (statuses["Crash.Handler"].message or "")
    bad = statuses["Malformed.Handler"]
    assert bad.status == "Ready"
    assert bad.extension.status["status"] == "error"
    assert bad.extension.status["code"] == 1012
    hostile = statuses["Hostile.Handler"]
    assert hostile.code == 1005 and "refused" in (hostile.message or ""), hostile
    for place in ("tmp/evil.txt", "evil.txt", "var/evil.txt", f"{LIB}/evil.txt"):
        assert not (vm.root / place).exists()
    assert not Path("/tmp/evil.txt").exists()
    assert not vm.lib("Hostile.Handler-1.0.0", "HandlerManifest.json").exists()
    shutil.rmtree(vm.root / "tmp", ignore_errors=True)


def test_multi_config_extensions_each_enabled_disabled_and_reported(
        make_vm: Any, tmp_path: Path) -> None:
    from fabric.scenario import ExtensionConfig

    multi = make_handler(tmp_path / "multi", supportsMultipleExtensions=True)
    vm = make_vm(Extension(name="Multi.Probe", package=str(multi), multi_config=[
        ExtensionConfig(name="first", public_settings={"x": 1}),
        ExtensionConfig(name="second", seq_no=3, protected_settings={"y": 2})]))
    out = vm.boot()
    assert out.returncode == 0, out.stdout + out.stderr
    handler = "Multi.Probe-1.0.0"
    assert vm.state(handler) == "Enabled"
    # Files per extension, as waagent writes them.
    assert vm.lib(handler, "config/first.HandlerState").read_text() == "enabled"
    assert vm.lib(handler, "config/second.HandlerState").read_text() == "enabled"
    first = json.loads(vm.lib(handler, "config/first.0.settings").read_text())
    assert first["runtimeSettings"][0]["handlerSettings"]["publicSettings"] == {"x": 1}
    second = json.loads(vm.lib(handler, "config/second.3.settings").read_text())
    assert second["runtimeSettings"][0]["handlerSettings"]["protectedSettings"].startswith("MII")
    assert vm.lib(handler, "status/first.0.status").exists()
    assert vm.lib(handler, "status/second.3.status").exists()
    assert vm.env(handler, "second.enable")["ConfigExtensionName"] == "second"
    assert vm.env(handler, "second.enable")["ConfigSequenceNumber"] == "3"
    assert vm.env(handler, "first.enable")["ConfigExtensionName"] == "first"
    logs = vm.root / "var/log/azure/Multi.Probe"
    assert (logs / "CommandExecution_first.log").exists()
    assert (logs / "CommandExecution_second.log").exists()
    assert [line for line in vm.order() if line.startswith("enable")] == [
        "enable 1.0.0 first", "enable 1.0.0 second"]
    # The graph picture shows the handler's tasks with their last run.
    drawn = subprocess.run([WAAGENT, "graph", "--format", "json", f"root={vm.root}",
                            "chroot=y"], capture_output=True, text=True, timeout=120,
                           check=True)
    tasks = {t["name"]: t for t in json.loads(drawn.stdout)["tasks"]}
    assert tasks["extensions:Multi.Probe:enable"]["last"] not in (None, "failed"), tasks[
        "extensions:Multi.Probe:enable"]
    assert tasks["extensions:Multi.Probe:install"]["cluster"] == tasks[
        "extensions:Multi.Probe:enable"]["cluster"]

    # The status blob: one handlerAggregateStatus entry per extension, named.
    assert vm.exthandlers_pass().returncode == 0
    blob = vm.fabric.record.status_blobs()[-1]["status"]
    entries = [h for h in blob["aggregateStatus"]["handlerAggregateStatus"]
               if h["handlerName"] == "Multi.Probe"]
    by_name = {h["runtimeSettingsStatus"]["extensionName"]: h for h in entries}
    assert set(by_name) == {"first", "second"}
    assert by_name["second"]["runtimeSettingsStatus"]["sequenceNumber"] == 3
    assert by_name["second"]["runtimeSettingsStatus"]["settingsStatus"]["status"][
        "formattedMessage"]["message"] == "probe enablesecond."
    assert vm.fabric.record.status_blob_problems() == []

    # One extension disabled: its disable runs by its name, its files go; the other stays.
    vm.fabric.set_extension("Multi.Probe", multi_config=[
        {"name": "first", "public_settings": {"x": 1}},
        {"name": "second", "seq_no": 3, "state": "disabled", "protected_settings": {"y": 2}}])
    out = vm.boot()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "disable 1.0.0 second" in vm.order()
    assert not vm.lib(handler, "config/second.HandlerState").exists()
    assert not list(vm.lib(handler, "config").glob("second.*.settings"))
    assert not list(vm.lib(handler, "status").glob("second.*.status"))
    assert vm.lib(handler, "config/first.HandlerState").read_text() == "enabled"
    assert vm.state(handler) == "Enabled"
    assert vm.exthandlers_pass().returncode == 0
    blob = vm.fabric.record.status_blobs()[-1]["status"]
    names = [h["runtimeSettingsStatus"]["extensionName"]
             for h in blob["aggregateStatus"]["handlerAggregateStatus"]
             if h["handlerName"] == "Multi.Probe"]
    assert names == ["first"]

    # The handler uninstalled: each enabled extension disabled by name, then uninstall.
    vm.fabric.set_extension("Multi.Probe", state="uninstall")
    out = vm.boot()
    assert out.returncode == 0, out.stdout + out.stderr
    assert vm.order()[-2:] == ["disable 1.0.0 first", "uninstall 1.0.0"]
    assert not vm.lib(handler).exists()


def test_update_failures_retry_downgrade_and_resource_limits(
        make_vm: Any, tmp_path: Path) -> None:
    v1 = make_handler(tmp_path / "v1", bodies={"disable": "exit 5"})
    v2 = make_handler(tmp_path / "v2", continueOnUpdateFailure=True)
    v3 = make_handler(tmp_path / "v3", bodies={
        "update": '[ -e /tmp/fail-update ] && { echo update refused >&2; exit 4; }'})
    limited = make_handler(tmp_path / "limited",
                           resourceLimits={"cpuQuota": 25, "memoryQuota": 64})
    vm = make_vm(Extension(name="Up.Probe", version="1.0.0", package=str(v1),
                           public_settings={"n": 1}),
                 Extension(name="Limited.Probe", package=str(limited), public_settings={}))
    # A cgroup v2 file system inside the image root (plain files, as the image has none
    # mounted): handlers in a chroot get their cgroup there.
    cgroup = vm.root / "sys/fs/cgroup"
    cgroup.mkdir(parents=True, exist_ok=True)
    (cgroup / "cgroup.controllers").write_text("cpu memory pids\n")
    (cgroup / "cgroup.subtree_control").write_text("")
    out = vm.boot()
    assert out.returncode == 0, out.stdout + out.stderr
    group = cgroup / "azure-vmextensions/Limited.Probe-1.0.0"
    assert (group / "cpu.max").read_text().strip() == "25000 100000"
    assert (group / "memory.max").read_text().strip() == str(64 * 1024 * 1024)
    assert (group / "cgroup.procs").read_text().strip().isdigit()  # the command joined it

    # continueOnUpdateFailure (the new manifest's): the old disable's exit code is passed on.
    vm.fabric.set_extension("Up.Probe", version="1.1.0", package=str(v2))
    out = vm.boot()
    assert out.returncode == 0, out.stdout + out.stderr
    assert vm.state("Up.Probe-1.1.0") == "Enabled" and not vm.lib("Up.Probe-1.0.0").exists()
    assert vm.env("Up.Probe-1.1.0", "update")["AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE"] == "5"

    # An update command that fails: FailedUpgrade, the old version stays; retried next time.
    (vm.root / "tmp/fail-update").write_text("")
    vm.fabric.set_extension("Up.Probe", version="1.2.0", package=str(v3))
    out = vm.boot()
    assert out.returncode != 0
    assert vm.state("Up.Probe-1.2.0") == "FailedUpgrade"
    assert vm.lib("Up.Probe-1.1.0", "HandlerManifest.json").exists()
    assert vm.statuses()["Up.Probe"].code == 1008
    (vm.root / "tmp/fail-update").unlink()
    out = vm.boot()
    assert out.returncode == 0, out.stdout + out.stderr
    assert vm.state("Up.Probe-1.2.0") == "Enabled" and not vm.lib("Up.Probe-1.1.0").exists()
    assert [line for line in vm.order() if line != "enable 1.0.0"][-4:] == [
        "update 1.2.0", "uninstall 1.1.0", "install 1.2.0", "enable 1.2.0"]

    # A downgrade: the old (higher) version's update runs, told VERSION = the new one.
    vm.fabric.set_extension("Up.Probe", version="1.1.0", package=str(v2))
    out = vm.boot()
    assert out.returncode == 0, out.stdout + out.stderr
    assert vm.state("Up.Probe-1.1.0") == "Enabled" and not vm.lib("Up.Probe-1.2.0").exists()
    upgrades = [line for line in vm.order() if line != "enable 1.0.0"]  # not Limited.Probe's
    assert upgrades[-5:] == ["disable 1.2.0", "update 1.2.0", "uninstall 1.2.0",
                             "install 1.1.0", "enable 1.1.0"]
    update = (vm.root / "tmp/env.update.1.2.0").read_text().splitlines()
    assert "VERSION=1.1.0" in update
    assert "AZURE_GUEST_AGENT_UPDATING_FROM_VERSION=1.1.0" in update
