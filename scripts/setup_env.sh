#!/usr/bin/env bash
# Create .venv and install qwenvl-ft with its dev extras for CPU work (tests, quickstart).
# torch is pinned to the CPU build first, and every later install is constrained to it.
# Re-running is cheap: nothing is reinstalled unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.qwenvl-ft-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/constraints-cpu.txt -nt "$stamp" ]; then
  echo "[setup] installing torch (CPU) and qwenvl-ft[dev] into .venv ..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c scripts/constraints-cpu.txt torch
  .venv/bin/python -m pip install --quiet -c scripts/constraints-cpu.txt -e ".[dev,qlora,gptq,deepspeed,tensorboard,wandb,demo,rl]"
  touch "$stamp"
fi
