#!/usr/bin/env bash
# Q-LoRA (4-bit base + LoRA) on several GPUs under DeepSpeed ZeRO-2 (never ZeRO-3: 4-bit weights cannot be sharded).
#
# Usage: bash scripts/finetune_qlora_zero2.sh [RECIPE] [key=value ...]
#   RECIPE     a YAML recipe, relative to the repo root (default: recipes/qwen2_5_vl/7b_qlora.yaml)
#   key=value  recipe overrides, e.g. train.learning_rate=5e-5 output.dir=runs/my-run; they come last,
#              so they win over this script's train.deepspeed
# The default recipe is sized for one GPU (64 accumulation steps); on 8 GPUs add
# train.gradient_accumulation_steps=8 to keep the effective batch at 64.
# Environment (torchrun's rendezvous; defaults: this node only, every GPU it has):
#   NPROC_PER_NODE  GPUs per node (default: the CUDA_VISIBLE_DEVICES entries, else the GPUs `nvidia-smi -L` lists)
#   NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500)
#   Several nodes: run the same command on each, e.g. NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash scripts/finetune_qlora_zero2.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE=recipes/qwen2_5_vl/7b_qlora.yaml
if [[ $# -gt 0 && $1 != *=* ]]; then RECIPE=$1; shift; fi

source scripts/_torchrun.sh
torchrun_train "$RECIPE" train.deepspeed=configs/deepspeed/zero2.json "$@"
