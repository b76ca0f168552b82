#!/usr/bin/env bash
# The main job on the built-in default: a tiny Qwen2.5-VL built locally, the bundled demo data,
# a LoRA fine-tune on CPU, merged and verified. No downloads, no GPU; a few minutes on 2 cores. Outputs: runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=runs/quickstart
mkdir -p "$OUT"

echo "== 1/4 build a tiny Qwen2.5-VL checkpoint (real Qwen vocabulary, random weights) and self-check it"
qwenvl-ft make-tiny qwen2_5_vl "$OUT/model" --force

echo "== 2/4 check the bundled demo data against it"
qwenvl-ft data check data/demo/demo.jsonl --model "$OUT/model" --max-length 512 --max-pixels 50176

echo "== 3/4 fine-tune a LoRA on it (recipes/tiny/qwen2_5_vl_lora.yaml)"
qwenvl-ft train recipes/tiny/qwen2_5_vl_lora.yaml model.path="$OUT/model" output.dir="$OUT/lora" \
  output.overwrite=true data.num_workers=0

python - "$OUT/lora/trainer_state.json" <<'PY'
import json, sys
losses = [h["loss"] for h in json.load(open(sys.argv[1]))["log_history"] if "loss" in h]
print(f"\ntraining loss: {losses[0]:.3f} (step 1) -> {losses[-1]:.3f} (step {len(losses)})")
PY
echo "== 4/4 merge the adapter into standalone weights and verify the logits"
qwenvl-ft merge "$OUT/lora" --output "$OUT/merged" --dtype fp32 --force

echo
echo "outputs:"
echo "  tiny base model:   $PWD/$OUT/model"
echo "  LoRA adapter:      $PWD/$OUT/lora   (adapter, tokenizer, processor, qwenvl_ft.json, resolved_config.yaml)"
echo "  loss curve:        $PWD/$OUT/lora/loss.png"
echo "  merged model:      $PWD/$OUT/merged   (loads with transformers alone: Qwen2_5_VLForConditionalGeneration.from_pretrained)"
