#!/usr/bin/env bash
# The test command: set up .venv (CPU torch) if needed, then run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`, `--run-slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest "$@"
