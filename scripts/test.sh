#!/usr/bin/env bash
# The test command: set up what the tests need, then run them all (unit, integration, e2e,
# ruff, mypy). Extra arguments go to pytest. With CI=true a skipped test fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
