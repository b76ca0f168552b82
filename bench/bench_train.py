"""Trainer overhead on CPU: our `VLTrainer` against a plain `transformers.Trainer` + peft script, one run.

    python bench/bench_train.py [--steps 40] [--warmup 5] [--repeats 2] [--out bench/results/train_cpu.json]

Model: a tiny random Qwen2.5-VL built with `make_tiny` (real Qwen vocabulary, about 20 M
parameters), fp32, sdpa attention. Data: the bundled `data/demo/demo.jsonl` (8 samples, one image
each) repeated 8 times (image paths made absolute), checked and encoded once with our
`build_dataset` and materialised into a list, so both sides train on the same encoded samples in
the same order, batched by the same `PaddingCollator`.

- ours: the body of `qwenvl_ft.train.train()` minus saving: `resolve_family`, `check_compatible`,
  the family's processor, `load_model` + `adapt` (LoRA from the recipe), `VLTrainer` with
  family / vision_lr / merger_lr and the `DescribeCheckpoints` callback, on the tiny LoRA recipe
  (`recipes/tiny/qwen2_5_vl_lora.yaml`). `train()` itself takes no callbacks and encodes samples on
  access, so it is replicated here to add the timer and to share the pre-encoded data.
- baseline: what a user would write: `Qwen2_5_VLForConditionalGeneration.from_pretrained(dtype=
  float32)`, `peft.get_peft_model` with a `LoraConfig` of the same r / alpha / dropout and the
  family's target regex, a plain `transformers.Trainer`.

Both get identical `TrainingArguments` (`qwenvl_ft.train.training_arguments(cfg, out)`: batch 2,
lr 2e-3 cosine, logging every step, no checkpoint while timing) and the same seed before the
LoRA weights are initialised, so their losses should agree. The progress-bar / printer callback
is removed on both sides (identically) to keep the output readable.

Step time: a `TrainerCallback` measures on_step_begin -> on_step_end (forward, backward, clipping,
optimizer and scheduler step); "loop" time measures on_step_end -> next on_step_end (adds batch
fetch, collation and logging, where `VLTrainer.log` adds tokens/s and peak memory). Medians over
the steps after a warmup, pooled over the repeats; runs are interleaved (baseline, ours, baseline,
ours) so drift in machine load hits both sides alike; `pair_ratios` gives ours / baseline for each
adjacent pair, to show how much of the headline ratio is machine noise. Setup (model load, LoRA
wrapping, processor load) is outside the timed steps; the data check and encoding run once, before
both sides.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ListDataset, StepTimer, quiet
from transformers.utils import logging as hf_logging

from qwenvl_ft import __version__
from qwenvl_ft.config.loader import load_recipe
from qwenvl_ft.data.collate import PaddingCollator
from qwenvl_ft.data.dataset import build_dataset
from qwenvl_ft.models import get_family, resolve_family
from qwenvl_ft.tiny import make_tiny
from qwenvl_ft.train import training_arguments

RECIPE = Path("recipes/tiny/qwen2_5_vl_lora.yaml")
DEMO = Path("data/demo/demo.jsonl")
TARGET_PCT = 10.0


def repeated_demo(root: Path, times: int) -> Path:
    lines = []
    for line in DEMO.read_text().splitlines():
        rec = json.loads(line)
        rec["images"] = [str((DEMO.parent / p).resolve()) for p in rec["images"]]
        lines.append(rec)
    path = root / f"demo_x{times}.jsonl"
    path.write_text(
        "".join(json.dumps(dict(r, id=f"{r['id']}-{k}")) + "\n" for k in range(times) for r in lines)
    )
    return path


def run_ours(cfg, data, out: Path, timer: StepTimer):
    from qwenvl_ft.training.outputs import DescribeCheckpoints, run_metadata
    from qwenvl_ft.training.setup import adapt, check_compatible, checkpoint_meta, load_model, resolve_is_base
    from qwenvl_ft.training.trainer import VLTrainer

    family = resolve_family(cfg.model.path, cfg.model.family)
    check_compatible(cfg, checkpoint_meta(cfg.model.path))
    processor = family.load_processor(cfg.model.path, cfg.model.min_pixels, cfg.model.max_pixels)
    is_base = resolve_is_base(cfg)
    torch.manual_seed(cfg.train.seed)  # same LoRA initialisation on both sides
    model = adapt(load_model(cfg, family), cfg, family, is_base)
    trainer = VLTrainer(
        model=model,
        args=training_arguments(cfg, out),
        train_dataset=data,
        data_collator=PaddingCollator(processor.tokenizer.pad_token_id),
        family=family,
        vision_lr=cfg.train.vision_lr,
        merger_lr=cfg.train.merger_lr,
        callbacks=[DescribeCheckpoints(run_metadata(cfg, family.name, is_base), cfg, processor), timer],
    )
    quiet(trainer)
    trainer.train()
    return trainer.state.log_history


def run_baseline(cfg, data, out: Path, timer: StepTimer, pad_token_id: int):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration, Trainer

    torch.manual_seed(cfg.train.seed)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        cfg.model.path, dtype=torch.float32, attn_implementation="sdpa"
    )
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=get_family("qwen2_5_vl").lora_target_regex,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg, out),
        train_dataset=data,
        data_collator=PaddingCollator(pad_token_id),
        callbacks=[timer],
    )
    quiet(trainer)
    trainer.train()
    return trainer.state.log_history


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median, per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--repeat-data", type=int, default=8, help="copies of the 8 demo samples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()

    family = get_family("qwen2_5_vl")
    ours: dict[str, list] = {"step": [], "loop": [], "runs": []}
    base: dict[str, list] = {"step": [], "loop": [], "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = make_tiny(family, tmp / "model")
        jsonl = repeated_demo(tmp, args.repeat_data)

        def recipe(out: str):
            return load_recipe(
                RECIPE,
                [
                    f"model.path={tmp / 'model'}",
                    "model.dtype=fp32",
                    f"output.dir={tmp / out}",
                    f"data.train=[{{path: {jsonl}}}]",
                    "data.num_workers=0",
                    f"train.max_steps={args.steps}",
                    f"train.save_steps={args.steps * 100}",
                    "train.logging_steps=1",
                    "train.gradient_checkpointing=false",
                ],
            )

        cfg = recipe("encode")
        processor = family.load_processor(cfg.model.path, cfg.model.min_pixels, cfg.model.max_pixels)
        ds, report = build_dataset(cfg.data, processor, cfg.train.seed, cache_dir=None, progress=False)
        data = ListDataset([ds[i] for i in range(len(ds))])
        tokens = statistics.mean(len(s.input_ids) for s in data.items)

        for r in range(args.repeats):
            for name, side in (("baseline", base), ("ours", ours)):
                timer = StepTimer()
                t0 = time.perf_counter()
                if name == "ours":
                    history = run_ours(recipe(f"ours{r}"), data, tmp / f"ours{r}", timer)
                else:
                    history = run_baseline(
                        recipe(f"base{r}"), data, tmp / f"base{r}", timer, processor.tokenizer.pad_token_id
                    )
                wall = time.perf_counter() - t0
                losses = [h["loss"] for h in history if "loss" in h]
                side["step"] += timer.step[args.warmup :]
                side["loop"] += timer.loop[args.warmup :]
                side["runs"].append(
                    {
                        "median_step_s": round(statistics.median(timer.step[args.warmup :]), 4),
                        "first_loss": round(losses[0], 4),
                        "final_loss": round(losses[-1], 4),
                        "wall_s": round(wall, 1),
                    }
                )
                print(f"repeat {r} {name}: {side['runs'][-1]}", file=sys.stderr, flush=True)

    ours_s, base_s = statistics.median(ours["step"]), statistics.median(base["step"])
    ours_loop, base_loop = statistics.median(ours["loop"]), statistics.median(base["loop"])
    ratio = ours_s / base_s
    result = {
        "command": "python " + " ".join(sys.argv),
        "version": __version__,
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
        "model": f"tiny qwen2_5_vl, {tiny.parameters / 1e6:.1f} M parameters, fp32, LoRA r {cfg.lora.r}",
        "data": f"{len(data)} samples (demo x{args.repeat_data}), mean {tokens:.0f} tokens, batch "
        f"{cfg.train.per_device_batch_size}",
        "steps_timed": len(ours["step"]),
        "ours_step_s": round(ours_s, 4),
        "baseline_step_s": round(base_s, 4),
        "ours_over_baseline": round(ratio, 3),
        "overhead_pct": round((ratio - 1) * 100, 1),
        "target_met": (ratio - 1) * 100 < TARGET_PCT,
        "pair_ratios": [
            round(o["median_step_s"] / b["median_step_s"], 3)
            for o, b in zip(ours["runs"], base["runs"], strict=True)
        ],
        "ours_loop_step_s": round(ours_loop, 4),
        "baseline_loop_step_s": round(base_loop, 4),
        "loop_ours_over_baseline": round(ours_loop / base_loop, 3),
        "ours_final_loss": ours["runs"][-1]["final_loss"],
        "baseline_final_loss": base["runs"][-1]["final_loss"],
        "runs": {"ours": ours["runs"], "baseline": base["runs"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
