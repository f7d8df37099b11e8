"""Build this agent's self-update package (graph/agent_package.py) from a checkout.

    python scripts/build_agent_package.py VERSION OUTPUT.zip [--source DIR]

The fabric serves such a zip as a version of the agent family (`waagent-fabric`'s
scenario key `ga_family`, or `Fabric.set_agent_family`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from graph.agent_package import build_package  # noqa: E402 - after the path above


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version", help="the version the package says, e.g. 0.2.0")
    parser.add_argument("output", type=Path, help="the zip to write")
    parser.add_argument("--source", type=Path, default=REPO, help="the checkout (default: this one)")
    args = parser.parse_args()
    data = build_package(args.source, args.version)
    args.output.write_bytes(data)
    print(f"{args.output}: waagent-graph {args.version}, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
