#!/usr/bin/env bash
# The main job on the built-in default: a tiny Qwen2.5-VL built locally and the bundled demo data.
# No downloads, CPU only. Outputs go to runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=runs/quickstart
mkdir -p "$OUT"

echo "== 1. build a tiny Qwen2.5-VL checkpoint (real Qwen vocabulary, random weights) and self-check it"
qwenvl-ft make-tiny qwen2_5_vl "$OUT/model" --force

echo "== 2. resolve the tiny LoRA recipe against it"
qwenvl-ft config show recipes/tiny/qwen2_5_vl_lora.yaml model.path="$OUT/model" output.dir="$OUT/lora" \
  | tee "$OUT/resolved_config.yaml"

echo
echo "outputs:"
echo "  model checkpoint:  $PWD/$OUT/model"
echo "  resolved recipe:   $PWD/$OUT/resolved_config.yaml"
