#!/usr/bin/env python3
"""The README demo: provision a sandbox VM root from the fabric emulator on 127.0.0.1.

    .venv/bin/python scripts/demo.py [--keep DIR]

Steps, each printed: the fabric serves the bundled default scenario; the plan of a
first boot; the boot itself (`waagent provision`); what the fabric received; the graph
picture; a second boot that changes nothing; then the daemon (`waagent -daemon`, 2 s
periods): its status blobs, a new goal state the fabric publishes and the daemon picks
up, `waagent status`, and SIGTERM. Nothing outside the sandbox changes:
services, the kernel hostname and custom data are skipped for a root that is not the
running system, and so are extension handlers: without chroot=y no binary of the image
(a handler is one) runs. Last, the extension: a Debian image root (built once with
mmdebstrap and cached, as the tests' is) where `waagent -run-exthandlers ... chroot=y`
installs and enables the scenario's handler inside the root, and its status reaches the
fabric's status blob. Needs root (useradd --prefix, chpasswd -R, chroot).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fabric import Fabric, build_media, default_scenario  # noqa: E402
from graph.cli import main as waagent_main  # noqa: E402
from system import osutil  # noqa: E402
from tests.sandbox import make_sandbox_root  # noqa: E402


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def waagent(*args: str) -> int:
    """Run a waagent command line, in this process, as the console script would."""
    print("$ waagent " + " ".join(args), flush=True)
    status = waagent_main(list(args))
    sys.stdout.flush()
    return status


def wait_for(what: str, condition: object, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    print(f"  timed out waiting for {what}")
    return False


def seq_no(blob: dict[str, object]) -> str:
    status = blob.get("status") or {}
    goal = status.get("aggregateStatus", {}).get(  # type: ignore[union-attr]
        "vmArtifactsAggregateStatus", {}).get("goalStateAggregateStatus", {})
    return str(goal.get("inSvdSeqNo"))


def run_daemon(fabric: Fabric, common: list[str], work: Path) -> int:
    """The daemon's loop: status every period, a new goal state picked up, SIGTERM."""
    step("the daemon: waagent -daemon (what the service runs), a loop every 2 s")
    print("$ waagent -daemon " + " ".join(common), flush=True)
    daemon = osutil.start_detached([sys.executable, "-m", "graph.cli", "-daemon", *common],
                                   output=work / "daemon.log")
    try:
        blobs = fabric.record.status_blobs
        if not wait_for("status blobs", lambda: len(blobs()) >= 2):
            return 1
        print(f"  the fabric received {len(blobs())} status blobs: guestAgentStatus Ready, "
              f"incarnation {seq_no(blobs()[-1])}")
        incarnation = fabric.new_incarnation()
        published = time.monotonic()
        print(f"  the fabric publishes incarnation {incarnation}")
        if not wait_for("the new incarnation", lambda: seq_no(blobs()[-1]) == str(incarnation)):
            return 1
        print(f"  status with incarnation {incarnation} uploaded "
              f"{time.monotonic() - published:.1f} s later")
        waagent("status", "--changes", *common)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
        print(f"  SIGTERM: the daemon finished its work and exited with status {code}")
        return code
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def run_extension(fabric: Fabric, vm_id: str, work: Path) -> int:
    """A handler really runs, in a Debian image root with chroot=y; its status reaches
    the fabric. The sandbox above runs none: a handler is a binary of the image."""
    from tests.sandbox import product_uuid_for
    from tests.support import debian_root

    step("an extension: a Debian image root, handlers run inside it (chroot=y)")
    packages = (*debian_root.DEFAULT_PACKAGES, "python3", "fdisk", "e2fsprogs", "openssl")
    reason = debian_root.skip_reason(packages)
    if reason:
        print(f"  cannot make the Debian root: {reason}")
        return 1
    cached = debian_root.cached_tarball(packages).exists()
    print("  copying the cached Debian 12 root" if cached else
          "  building a Debian 12 root with mmdebstrap (once; cached for the next runs)",
          flush=True)
    image = debian_root.fresh_debian_root(work / "image", packages)
    dmi = image / "sys/class/dmi/id"
    dmi.mkdir(parents=True, exist_ok=True)
    (dmi / "product_uuid").write_text(product_uuid_for(vm_id) + "\n")
    (image / "etc/waagent.conf").write_text("ResourceDisk.Format=n\n")
    status = waagent("-run-exthandlers", f"root={image}", "chroot=y",
                     f"wireserver={fabric.wire_url}", f"hostplugin={fabric.hostplugin_url}")
    lib = image / "var/lib/waagent"
    for directory in sorted(lib.glob("*-*/config/HandlerState")):
        handler = directory.parent.parent
        print(f"  {handler.name}: HandlerState {directory.read_text().strip()}, "
              f"{', '.join(sorted(p.name for p in (handler / 'status').glob('*.status')))}")
    blob = fabric.record.status_blobs()[-1]["status"]
    for entry in blob["aggregateStatus"]["handlerAggregateStatus"]:
        settings = entry.get("runtimeSettingsStatus", {}).get("settingsStatus", {}).get(
            "status", {})
        print(f"  the fabric's status blob: {entry['handlerName']} {entry['handlerVersion']} "
              f"{entry['status']}, extension status {settings.get('status')} "
              f"({(settings.get('formattedMessage') or {}).get('message')!r})")
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", help="put the sandbox here and keep it (default: a temp dir)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo: run as root: creating the user in the sandbox needs useradd/chpasswd "
              "(nothing outside the sandbox is changed)", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="waagent-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    scenario = default_scenario()
    root = work / "vm"
    if root.exists():
        shutil.rmtree(root)
    make_sandbox_root(root, scenario.vm_id)
    media = build_media(scenario, work / "ovf-env.iso")
    conf = root / "etc/waagent.conf"
    conf.write_text("# demo: the sandbox has no resource disk\nResourceDisk.Format=n\n"
                    "Provisioning.Agent=waagent\nProvisioning.RegenerateSshHostKeyPair=y\n"
                    "# demo: a quick loop (waagent's default is 6 s)\n"
                    "Extensions.GoalStatePeriod=2\nExtensions.InitialGoalStatePeriod=2\n")
    with Fabric(scenario, record_path=work / "fabric-record.json") as fabric:
        common = [f"root={root}", f"wireserver={fabric.wire_url}", f"media={media}"]
        step(f"fabric on {fabric.wire_url} serving VM {scenario.hostname} "
             f"(user {scenario.username}); sandbox root {root}")
        step("plan of the first boot (changes nothing)")
        waagent("plan", "provision", *common)
        step("first boot: waagent provision")
        status = waagent("provision", *common)
        step("what the platform received")
        for report in fabric.record.health_reports():
            detail = "/".join(x for x in (report.get("substatus"), report.get("description"))
                              if x)
            print(f"  health: {report['state']}{'  ' + detail if detail else ''}")
        for prop in fabric.record.role_properties():
            print(f"  role property: {prop}")
        step("the task graph")
        picture = work / "graph.html"
        waagent("graph", "--format", "html", "--output", str(picture), *common)
        print(f"  wrote {picture} (open it in a browser; click a task for its doc)")
        step("second boot: nothing to do but the goal-state check")
        status = status or waagent("provision", *common)
        step("the last run")
        waagent("status", *common)
        status = status or run_daemon(fabric, [*common, f"hostplugin={fabric.hostplugin_url}"],
                                      work)
        status = status or run_extension(fabric, scenario.vm_id, work)
    print(f"\nsandbox kept in {work}" if args.keep else f"\nsandbox in {work}")
    return status


if __name__ == "__main__":
    sys.exit(main())
