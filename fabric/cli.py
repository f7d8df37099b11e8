"""waagent-fabric: serve a scenario, or build its provisioning media.

    waagent-fabric serve SCENARIO [--bind 127.0.0.1] [--wire-port N] [--hostplugin-port N]
                                  [--imds-port N] [--imds-bind ADDR] [--record FILE]
                                  [--control ADDR:PORT [--control-remote]]
    waagent-fabric control URL|ADDR:PORT [ACTION [KEY=VALUE ...] | JSON]
    waagent-fabric media SCENARIO OUT.iso [--format iso|udf]
    waagent-fabric ovf SCENARIO

SCENARIO is a YAML file, or "default" for the bundled demo scenario.
`serve` prints one "name url" line per server (a fourth, "control url", with
--control), then serves until SIGINT or SIGTERM, and writes the record (also on
SIGUSR1, and after every report). `control` sends one control request to a running
fabric and prints its answer: `control 127.0.0.1:8081 new-incarnation`,
`control 127.0.0.1:8081 set-extension name=Fabric.Demo.NoOp 'public_settings={"a": 1}'`
(values are JSON, or else text), or the request as one JSON object; no ACTION prints the state.
A bad scenario exits with status 2 and a message naming the key and line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from fabric.control import ControlError, send
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
    serve.add_argument("--control", default=None, metavar="ADDR:PORT",
                       help="serve the control channel (POST /control) here; loopback only unless --control-remote")
    serve.add_argument("--control-remote", action="store_true",
                       help="allow a non-loopback --control address (anyone reaching it changes the goal state)")

    control = commands.add_parser("control", help="send a control request to a running fabric")
    control.add_argument("address", help="the control channel: http://ADDR:PORT, ADDR:PORT or PORT")
    control.add_argument("action", nargs="?", default=None, help="action, or the whole request as a JSON object")
    control.add_argument("arguments", nargs="*", metavar="KEY=VALUE", help="arguments; values are JSON, or else text")

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
        control=args.control, control_remote=args.control_remote,
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
    if fabric.control_url is not None:
        print(f"control {fabric.control_url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        fabric.stop()
    return 0


def _control_request(action: str | None, arguments: list[str]) -> dict[str, object] | None:
    if action is None:
        return None
    if action.lstrip().startswith("{"):
        request = json.loads(action)
        if not isinstance(request, dict):
            raise ControlError("the request must be a JSON object")
        return request
    request = {"action": action}
    for argument in arguments:
        key, equals, text = argument.partition("=")
        if not equals:
            raise ControlError(f"argument {argument!r}: expected KEY=VALUE")
        try:
            request[key] = json.loads(text)
        except ValueError:
            request[key] = text
    return request


def _control(args: argparse.Namespace) -> int:
    text = args.address
    address = text if "://" in text else f"http://127.0.0.1:{text}" if text.isdigit() else f"http://{text}"
    try:
        answer = send(address, _control_request(args.action, args.arguments))
    except (ControlError, ValueError, OSError) as error:
        print(f"waagent-fabric: control: {error}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the waagent-fabric command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "control":
            return _control(args)
        if args.command == "media":
            path = build_media(_scenario(args.scenario), args.out, args.format)
            print(path)
            return 0
        sys.stdout.write(render_ovf(_scenario(args.scenario)))
        return 0
    except (ScenarioError, ControlError) as error:
        print(f"waagent-fabric: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
