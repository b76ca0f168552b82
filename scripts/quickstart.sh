#!/usr/bin/env bash
# The main job on the built-in default: a tiny Qwen2.5-VL built locally, the bundled demo data,
# a LoRA fine-tune on CPU, merged and verified. No downloads, no GPU; a few minutes on 2 cores. Outputs: runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=runs/quickstart
mkdir -p "$OUT"

echo "== 1/5 build a tiny Qwen2.5-VL checkpoint (real Qwen vocabulary, random weights) and self-check it"
qwenvl-ft make-tiny qwen2_5_vl "$OUT/model" --force

echo "== 2/5 check the bundled demo data against it"
qwenvl-ft data check data/demo/demo.jsonl --model "$OUT/model" --max-length 512 --max-pixels 50176

echo "== 3/5 fine-tune a LoRA on it (recipes/tiny/qwen2_5_vl_lora.yaml)"
qwenvl-ft train recipes/tiny/qwen2_5_vl_lora.yaml model.path="$OUT/model" output.dir="$OUT/lora" \
  output.overwrite=true data.num_workers=0

python - "$OUT/lora/trainer_state.json" <<'PY'
import json, sys
losses = [h["loss"] for h in json.load(open(sys.argv[1]))["log_history"] if "loss" in h]
print(f"\ntraining loss: {losses[0]:.3f} (step 1) -> {losses[-1]:.3f} (step {len(losses)})")
PY
echo "== 4/5 merge the adapter into standalone weights and verify the logits"
qwenvl-ft merge "$OUT/lora" --output "$OUT/merged" --dtype fp32 --force

echo "== 5/5 evaluate on the bundled data, before and after training"
# The demo data is also the training data: this shows the loop closing (generate, parse boxes
# back to pixels, score), not generalisation; tests/e2e/test_learning.py measures that.
EVAL=(--data data/demo/demo.jsonl --task caption --dtype fp32 --max-new-tokens 32)
qwenvl-ft eval "$OUT/model" "${EVAL[@]}" --output "$OUT/eval_before.json" > /dev/null
qwenvl-ft eval "$OUT/lora" "${EVAL[@]}" --output "$OUT/eval_after.json" > /dev/null
python - "$OUT/eval_before.json" "$OUT/eval_after.json" <<'PY'
import json, sys
before, after = (json.load(open(p)) for p in sys.argv[1:])
rows = [("grounding", "acc@0.5"), ("grounding", "miou")]
rows += [("caption", m) for m in ("cider_d", "bleu1", "bleu4")]
print(f"\n{'metric (demo data)':<22}{'before':>10}{'after':>10}")
for task, name in rows:
    if name in before.get(task, {}):
        print(f"{task + '.' + name:<22}{before[task][name]:>10.4f}{after[task][name]:>10.4f}")
PY

echo
echo "outputs:"
echo "  tiny base model:   $PWD/$OUT/model"
echo "  LoRA adapter:      $PWD/$OUT/lora   (adapter, tokenizer, processor, qwenvl_ft.json, resolved_config.yaml)"
echo "  loss curve:        $PWD/$OUT/lora/loss.png"
echo "  eval reports:      $PWD/$OUT/eval_before.json, $PWD/$OUT/eval_after.json"
echo "  merged model:      $PWD/$OUT/merged   (loads with transformers alone: Qwen2_5_VLForConditionalGeneration.from_pretrained)"
