#!/usr/bin/env bash
# The test command: set up .venv (CPU torch) if needed, then run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`, `--run-slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# The demo's browser test drives Debian's headless chromium through chromium-driver: installed
# here when missing and possible (root with apt-get); elsewhere that one test is skipped (not in CI).
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing chromium and chromium-driver (apt) for the demo's browser test ..."
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
      >/dev/null || echo "[setup] could not install chromium: the demo's browser test cannot run"
  else
    echo "[setup] no chromium / chromedriver: the demo's browser test will be skipped" \
      "(apt-get install chromium chromium-driver)"
  fi
fi
# The slurm launchers' test starts a one-node cluster of Debian's slurm-wlm and munge: installed
# here when missing and possible (root with apt-get); elsewhere those tests are skipped, saying why.
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing slurm-wlm and munge (apt) for the slurm launchers' test ..."
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } \
      >/dev/null || echo "[setup] could not install slurm-wlm: the slurm launchers' test cannot run"
  else
    echo "[setup] no slurm-wlm / munge: the slurm launchers' test will be skipped (apt-get install slurm-wlm munge)"
  fi
fi
exec .venv/bin/python -m pytest "$@"
