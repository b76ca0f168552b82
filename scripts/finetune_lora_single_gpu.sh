#!/usr/bin/env bash
# LoRA on one GPU, no DeepSpeed.
#
# Usage: bash scripts/finetune_lora_single_gpu.sh [RECIPE] [key=value ...]
#   RECIPE     a YAML recipe, relative to the repo root (default: recipes/qwen2_5_vl/3b_lora.yaml)
#   key=value  recipe overrides, e.g. train.gradient_accumulation_steps=32 output.dir=runs/my-run
# The GPU is yours to choose: CUDA_VISIBLE_DEVICES=1 bash scripts/finetune_lora_single_gpu.sh ...
# DeepSpeed is switched off (train.deepspeed=null) whatever the recipe names: one process needs none.
# The default recipe is sized for 8 GPUs: add train.gradient_accumulation_steps=32 to keep its effective batch of 64.
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE=recipes/qwen2_5_vl/3b_lora.yaml
if [[ $# -gt 0 && $1 != *=* ]]; then RECIPE=$1; shift; fi

exec python -m qwenvl_ft train "$RECIPE" train.deepspeed=null "$@"
