"""waagent-fabric: serve a scenario, or build its provisioning media.

    waagent-fabric serve SCENARIO [--bind 127.0.0.1] [--wire-port N] [--hostplugin-port N]
                                  [--imds-port N] [--imds-bind ADDR] [--record FILE]
    waagent-fabric media SCENARIO OUT.iso [--format iso|udf]
    waagent-fabric ovf SCENARIO

SCENARIO is a YAML file, or "default" for the bundled demo scenario.
`serve` prints one "name url" line per server, then serves until SIGINT or
SIGTERM, and writes the record (also on SIGUSR1, and after every report).
A bad scenario exits with status 2 and a message naming the key and line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from fabric.documents import render_ovf
from fabric.media import build_media
from fabric.scenario import Scenario, ScenarioError, default_scenario_path, load_scenario
from fabric.server import Fabric


def _scenario(name: str) -> Scenario:
    return load_scenario(default_scenario_path() if name == "default" else Path(name))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="waagent-fabric", description="The Azure platform side, on a local address.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve WireServer, HostGAPlugin and IMDS for a scenario")
    serve.add_argument("scenario", help="scenario YAML file, or 'default'")
    serve.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--wire-port", type=int, default=0, help="WireServer port (default: any free port)")
    serve.add_argument("--hostplugin-port", type=int, default=0, help="HostGAPlugin port (default: any free port)")
    serve.add_argument("--imds-port", type=int, default=0, help="IMDS port (default: any free port)")
    serve.add_argument("--imds-bind", default=None, help="address for IMDS (default: --bind)")
    serve.add_argument("--record", default=None, help="write the record of the agent's calls here as JSON")
    serve.add_argument("--replay", default=None, help="serve the fixture documents of this directory instead")

    media = commands.add_parser("media", help="build the provisioning DVD image carrying ovf-env.xml")
    media.add_argument("scenario", help="scenario YAML file, or 'default'")
    media.add_argument("out", help="image file to write")
    media.add_argument("--format", choices=("iso", "udf"), default="iso", help="ISO 9660 (default) or UDF")

    ovf = commands.add_parser("ovf", help="print ovf-env.xml for a scenario")
    ovf.add_argument("scenario", help="scenario YAML file, or 'default'")
    return parser


def _serve(args: argparse.Namespace) -> int:
    scenario = _scenario(args.scenario)
    fabric = Fabric(
        scenario, bind=args.bind, wire_port=args.wire_port, hostplugin_port=args.hostplugin_port,
        imds_port=args.imds_port, imds_bind=args.imds_bind, record_path=args.record, replay_dir=args.replay,
    )
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_dump(signum: int, frame: FrameType | None) -> None:
        fabric.write_record()

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGUSR1, on_dump)
    try:
        fabric.start()
    except OSError as error:
        print(f"waagent-fabric: cannot listen on {args.bind}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"wire {fabric.wire_url}", flush=True)
    print(f"hostplugin {fabric.hostplugin_url}", flush=True)
    print(f"imds {fabric.imds_url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        fabric.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the waagent-fabric command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "media":
            path = build_media(_scenario(args.scenario), args.out, args.format)
            print(path)
            return 0
        sys.stdout.write(render_ovf(_scenario(args.scenario)))
        return 0
    except ScenarioError as error:
        print(f"waagent-fabric: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
