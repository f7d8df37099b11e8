#!/usr/bin/env python3
"""The README demo: provision a sandbox VM root from the fabric emulator on 127.0.0.1.

    .venv/bin/python scripts/demo.py [--keep DIR]

Steps, each printed: the fabric serves the bundled default scenario; the plan of a
first boot; the boot itself (`waagent provision`); what the fabric received; the graph
picture; a second boot that changes nothing. Nothing outside the sandbox changes:
services, the kernel hostname and custom data are skipped for a root that is not the
running system. Needs root (useradd --prefix, chpasswd -R).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fabric import Fabric, build_media, default_scenario  # noqa: E402
from graph.cli import main as waagent_main  # noqa: E402
from tests.sandbox import make_sandbox_root  # noqa: E402


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def waagent(*args: str) -> int:
    """Run a waagent command line, in this process, as the console script would."""
    print("$ waagent " + " ".join(args), flush=True)
    status = waagent_main(list(args))
    sys.stdout.flush()
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
                    "Provisioning.Agent=waagent\nProvisioning.RegenerateSshHostKeyPair=y\n")
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
    print(f"\nsandbox kept in {work}" if args.keep else f"\nsandbox in {work}")
    return status


if __name__ == "__main__":
    sys.exit(main())
