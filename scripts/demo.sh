#!/usr/bin/env bash
# The demo: set up what is needed, then provision a sandbox VM from the fabric emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
