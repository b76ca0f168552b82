#!/usr/bin/env bash
# Full fine-tuning on several GPUs (or nodes) under DeepSpeed ZeRO-3 (weights sharded too).
#
# Usage: bash scripts/finetune_full_zero3.sh [RECIPE] [key=value ...]
#   RECIPE     a YAML recipe, relative to the repo root (default: recipes/qwen2_5_vl/7b_full.yaml)
#   key=value  recipe overrides, e.g. train.learning_rate=5e-5 output.dir=runs/my-run; they come last,
#              so they win over this script's train.deepspeed
# The recipe should say train.mode: full (see recipes/*/*_full.yaml).
# Environment (torchrun's rendezvous; defaults: this node only, every GPU it has):
#   NPROC_PER_NODE  GPUs per node (default: the CUDA_VISIBLE_DEVICES entries, else the GPUs `nvidia-smi -L` lists)
#   NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500)
#   Several nodes: run the same command on each, e.g. NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash scripts/finetune_full_zero3.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE=recipes/qwen2_5_vl/7b_full.yaml
if [[ $# -gt 0 && $1 != *=* ]]; then RECIPE=$1; shift; fi

source scripts/_torchrun.sh
torchrun_train "$RECIPE" train.deepspeed=configs/deepspeed/zero3.json "$@"
