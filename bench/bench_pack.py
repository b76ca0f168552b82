"""Packing on CPU: padded batches against packed rows through the real `VLTrainer` path, one run.

    python bench/bench_pack.py [--samples 128] [--batch 8] [--repeats 2] [--out bench/results/pack_cpu.json]

Model: a tiny random Qwen2.5-VL built with `make_tiny` (real Qwen vocabulary, about 20 M
parameters), fp32, sdpa attention, LoRA from `recipes/tiny/qwen2_5_vl_lora.yaml`.

Data: `varied_data` writes a length-varied synthetic set in the `messages` format: images of
28..448 px sides (4..256 visual tokens at max_pixels 200704), answers of 3..400 words, some
multi-turn, some text-only. It is checked once with `build_dataset` and encoded once; every run
trains on those same encoded samples (pickled, loaded by each run).

Sides, each a fresh process so that its peak resident memory is its own, all with the same
`TrainingArguments` (`training_arguments(cfg, out)`), seed and `train.loss`:
- padded:  `PaddingCollator`, `--batch` samples a step, random order (group_by_length false);
- grouped: the same, with `group_by_length` (`LengthGroupedSampler` on the checked lengths);
- packed:  `PackedDataset` + `PackingCollator`, one row a step; the row length is the smallest that
  packs the data into no more rows than the padded side has batches, so both sides take the same
  number of steps and the same real tokens per step on average.
Each side runs the same number of optimizer steps (one padded epoch unless `--steps`); the body of
`qwenvl_ft.train.train()` is replicated (minus saving) to add a step timer and a collator that
records what each batch holds.

Measured per side: real (non-pad) tokens / s over the steps after `--warmup` (step time =
forward + backward + optimizer; "loop" adds batch fetch and collation), padding efficiency (real
tokens / tokens computed), peak RSS of the process. Sides are interleaved (padded, grouped,
packed, padded, ...) and pooled over `--repeats`. A loss check first compares the summed
cross-entropy of every sample alone against padded batches and packed rows (same model, no
training, on the first `--check-samples`): packing must not change the loss.

Last, `--memory-steps` (default 3) short runs of padded and packed with `train.loss: standard`
(the model's own loss over full logits) and with `chunked`, the same batches for both losses, give
peak RSS and tokens / s of standard against chunked. All runs use `--threads` torch threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import ListDataset, StepTimer, quiet
from transformers.utils import logging as hf_logging

from qwenvl_ft import __version__
from qwenvl_ft.config.loader import load_recipe
from qwenvl_ft.data.encode import IGNORE
from qwenvl_ft.data.packing import pack_bins
from qwenvl_ft.data.synthetic import draw_shapes

RECIPE = Path("recipes/tiny/qwen2_5_vl_lora.yaml")
WORDS = (
    "the a red green blue yellow purple square circle triangle shape left right top bottom corner "
    "near far above below beside large small bright dark edge middle picture image background plain "
    "colour and with of on in is are two one three next to between under over centre side"
).split()
PROMPTS = ("Describe the picture.", "What shapes do you see?", "Where is each shape?", "Explain in detail.")


# -- data --------------------------------------------------------------------------------------
def varied_data(
    root: Path,
    count: int,
    seed: int = 0,
    sides: tuple[int, int] = (28, 448),
    words: tuple[int, int] = (3, 400),
) -> Path:
    """Write `count` length-varied samples (messages JSONL + PNGs) under `root`; returns the JSONL path.

    Image sides and answer lengths are log-uniform in `sides` / `words`, so short samples are
    common and long ones rare, as in real SFT mixes. 15 % are text-only, 25 % have 2-3 turns.
    """
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)

    def log_uniform(lo: int, hi: int) -> int:
        return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))

    def answer(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    records = []
    for i in range(count):
        text_only = rng.random() < 0.15
        turns = 1 if rng.random() < 0.75 else rng.randint(2, 3)
        record: dict = {"id": f"varied-{i:04d}", "messages": [], "images": []}
        for t in range(turns):
            prompt = rng.choice(PROMPTS)
            if t == 0 and not text_only:
                w = log_uniform(*sides)
                h = min(sides[1], max(sides[0], int(w * rng.uniform(0.5, 2.0))))
                image, _ = draw_shapes(seed * 100_000 + i, size=(w, h), count=2)
                rel = f"images/{i:04d}.png"
                image.save(root / rel)
                record["images"].append(rel)
                prompt = "<image>" + prompt
            record["messages"] += [
                {"role": "user", "content": prompt},
                {
                    "role": "assistant",
                    "content": answer(log_uniform(words[0], max(words[0], words[1] // turns))),
                },
            ]
        records.append(record)
    path = root / "varied.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def pick_pack_length(lengths: list[int], batches: int, seed: int, multiple: int = 8) -> int:
    """The shortest row (a multiple of `multiple`) that packs `lengths` into at most `batches` rows."""
    n = max(max(lengths), -(-sum(lengths) // batches))
    n = -(-n // multiple) * multiple
    while len(pack_bins(lengths, n, seed)) > batches:
        n += multiple
    return n


# -- measuring ----------------------------------------------------------------------------------
@dataclass
class BatchLog:
    """Wraps a collator and records, per batch in order: per-sample (length, supervised, patches), tokens computed."""

    collate: Callable
    batches: list[dict] = field(default_factory=list)

    def __call__(self, items: list):
        batch = self.collate(items)
        packed = isinstance(items[0], list)  # PackedDataset items are rows of (Encoded, positions)
        samples = [enc for row in items for enc, _ in row] if packed else items
        self.batches.append(
            {
                "samples": [
                    (
                        len(s.input_ids),
                        sum(1 for t in s.labels[1:] if t != IGNORE),  # positions that predict a target
                        int(s.image_grid_thw.prod(-1).sum()) if s.image_grid_thw is not None else 0,
                    )
                    for s in samples
                ],
                "computed": batch["input_ids"].numel(),
            }
        )
        return batch


def summarise(log: BatchLog, timer: StepTimer, warmup: int, steps: int, head: list[float]) -> dict:
    """Tokens/s and padding efficiency over steps [warmup, steps); batch k is the batch of step k."""
    batches = log.batches[warmup:steps]
    real = sum(n for b in batches for n, _, _ in b["samples"])
    computed = sum(b["computed"] for b in batches)
    step_s, loop_s = sum(timer.step[warmup:steps]), sum(timer.loop[warmup:steps])
    return {
        "steps_timed": len(batches),
        "real_tokens": real,
        "computed_tokens": computed,
        "samples": sum(len(b["samples"]) for b in batches),
        "padding_efficiency": round(real / computed, 4),
        "real_tokens_per_step": round(real / len(batches), 1),
        "targets_per_step": round(sum(k for b in batches for _, k, _ in b["samples"]) / len(batches), 1),
        "step_s": round(step_s / len(batches), 4),
        "tokens_per_s": round(real / step_s, 1),
        "loop_tokens_per_s": round(real / loop_s, 1),
        "head_share": round(sum(head[warmup:steps]) / step_s, 3) if head else None,
    }


def time_head() -> list[float]:
    """Seconds of each chunked lm_head + cross-entropy call from now on, in this process.

    The chunked loss computes its gradients inside the forward call (backward only scales them),
    so one call's time is nearly all the head costs in a step.
    """
    from qwenvl_ft.training import loss

    inner, times = loss.linear_cross_entropy, []

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        times.append(time.perf_counter() - t0)
        return out

    loss.linear_cross_entropy = timed  # looked up at call time by causal_lm_loss_from_hidden
    return times


# -- one side, in its own process ---------------------------------------------------------------
def run_side(spec: dict) -> dict:
    """Train one side for spec['steps'] steps; returns its measurements (run in a child process)."""
    from transformers import AutoConfig, set_seed

    from qwenvl_ft.data.collate import PaddingCollator
    from qwenvl_ft.data.packing import PackedDataset, PackingCollator
    from qwenvl_ft.models import resolve_family
    from qwenvl_ft.train import training_arguments
    from qwenvl_ft.training.setup import adapt, load_model, resolve_is_base
    from qwenvl_ft.training.trainer import VLTrainer

    torch.set_num_threads(spec["threads"])
    cfg = load_recipe(RECIPE, spec["overrides"])
    family = resolve_family(cfg.model.path, cfg.model.family)
    processor = family.load_processor(cfg.model.path, cfg.model.min_pixels, cfg.model.max_pixels)
    pad = processor.tokenizer.pad_token_id
    data = ListDataset(torch.load(spec["encoded"], weights_only=False))
    if spec["side"] == "packed":
        config = AutoConfig.from_pretrained(cfg.model.path)
        dataset = PackedDataset(data, spec["pack_length"], cfg.train.seed, family, config)
        log = BatchLog(PackingCollator(pad))
    else:
        dataset, log = data, BatchLog(PaddingCollator(pad))
    timer = StepTimer()
    set_seed(cfg.train.seed)  # the same LoRA initialisation on every side, as train() does
    model = adapt(load_model(cfg, family), cfg, family, resolve_is_base(cfg))
    trainer = VLTrainer(
        model=model,
        args=training_arguments(cfg, Path(spec["out"])),
        train_dataset=dataset,
        data_collator=log,
        family=family,
        vision_lr=cfg.train.vision_lr,
        merger_lr=cfg.train.merger_lr,
        group_by_length=spec["side"] == "grouped",
        loss=cfg.train.loss,
        callbacks=[timer],
    )
    quiet(trainer)
    head = time_head() if cfg.train.loss == "chunked" else []
    t0 = time.perf_counter()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        **summarise(log, timer, spec["warmup"], spec["steps"], head),
        "first_loss": round(losses[0], 4),
        "final_loss": round(losses[-1], 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "train_wall_s": round(time.perf_counter() - t0, 1),
    }


def in_child(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"side {spec['side']} ({spec['loss']}) failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- loss check ---------------------------------------------------------------------------------
def loss_check(cfg, family, data: ListDataset, batch: int, pack_length: int, pad: int) -> dict:
    """Summed cross-entropy and target count over `data`: each sample alone, in padded batches, packed."""
    from transformers import AutoConfig

    from qwenvl_ft.data.collate import PaddingCollator
    from qwenvl_ft.data.packing import PackedDataset, PackingCollator
    from qwenvl_ft.training.loss import loss_in_head

    model = family.load_model(cfg.model.path, dtype=torch.float32, attn_implementation="sdpa").eval()
    model.requires_grad_(False)
    packed = PackedDataset(
        data, pack_length, cfg.train.seed, family, AutoConfig.from_pretrained(cfg.model.path)
    )

    def total(batches) -> tuple[float, int]:
        loss, count = 0.0, 0
        for inputs in batches:
            labels = inputs.pop("labels")
            count += int((labels[:, 1:] != IGNORE).sum())
            with torch.no_grad(), loss_in_head(model.get_output_embeddings(), labels, 1):
                loss += float(model(**inputs).logits)  # num_items_in_batch 1: the sum
        return loss, count

    pc, kc = PaddingCollator(pad), PackingCollator(pad)
    alone = total(pc([data[i]]) for i in range(len(data)))
    padded = total(
        pc([data[j] for j in range(i, min(i + batch, len(data)))]) for i in range(0, len(data), batch)
    )
    rows = total(kc([packed[i]]) for i in range(len(packed)))
    return {
        "targets": {"alone": alone[1], "padded": padded[1], "packed": rows[1]},
        "mean_loss": {
            k: round(v[0] / v[1], 6) for k, v in (("alone", alone), ("padded", padded), ("packed", rows))
        },
        "samples": len(data),
        "packed_rows": len(packed),
        "packed_vs_alone_rel_diff": float(f"{abs(rows[0] - alone[0]) / alone[0]:.2e}"),
        "padded_vs_alone_rel_diff": float(f"{abs(padded[0] - alone[0]) / alone[0]:.2e}"),
    }


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="samples per padded batch")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-pixels", type=int, default=200704, help="448*448: at most 256 visual tokens")
    parser.add_argument("--steps", type=int, default=None, help="steps a run (default: one padded epoch)")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the measurement, per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sides", default="padded,grouped,packed")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps of the memory runs (0: none)")
    parser.add_argument("--check-samples", type=int, default=48, help="samples in the loss check (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for every side")
    parser.add_argument("--out", type=Path, default=Path("bench/results/pack_cpu.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("qwenvl_ft").setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()
    if args.worker:
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notices
        print(json.dumps(run_side(json.loads(args.worker))))
        return
    torch.set_num_threads(args.threads)

    from qwenvl_ft.data.dataset import build_dataset
    from qwenvl_ft.models import get_family
    from qwenvl_ft.tiny import make_tiny

    family = get_family("qwen2_5_vl")
    sides = args.sides.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = make_tiny(family, tmp / "model")
        jsonl = varied_data(tmp / "data", args.samples)

        def overrides(out: str, batch: int, steps: int, loss: str) -> list[str]:
            return [
                f"model.path={tmp / 'model'}",
                "model.dtype=fp32",
                f"model.max_pixels={args.max_pixels}",
                f"output.dir={tmp / out}",
                f"data.train=[{{path: {jsonl}}}]",
                f"data.max_length={args.max_length}",
                "data.num_workers=0",
                f"train.per_device_batch_size={batch}",
                f"train.max_steps={steps}",
                f"train.save_steps={steps * 100}",
                "train.logging_steps=1",
                "train.gradient_checkpointing=false",
                f"train.loss={loss}",
            ]

        cfg = load_recipe(RECIPE, overrides("check", args.batch, 1, "chunked"))
        processor = family.load_processor(cfg.model.path, cfg.model.min_pixels, cfg.model.max_pixels)
        t0 = time.perf_counter()
        ds, report = build_dataset(
            cfg.data, processor, cfg.train.seed, cache_dir=tmp / "cache", progress=False
        )
        data = ListDataset([ds[i] for i in range(len(ds))])
        encode_s = time.perf_counter() - t0
        torch.save(data.items, tmp / "encoded.pt")
        lengths = data.lengths()
        batches = -(-len(data) // args.batch)
        steps = args.steps or batches
        pack_length = pick_pack_length(lengths, batches, cfg.train.seed)
        rows = len(pack_bins(lengths, pack_length, cfg.train.seed))
        print(
            f"{len(data)} samples (dropped {len(report.dropped)}), "
            f"lengths {min(lengths)}..{max(lengths)} mean {statistics.mean(lengths):.0f}; "
            f"{batches} batches of {args.batch}, pack_length {pack_length} -> {rows} rows",
            file=sys.stderr,
            flush=True,
        )
        check = None
        if args.check_samples:
            t0 = time.perf_counter()
            subset = ListDataset(data.items[: args.check_samples])
            check = loss_check(cfg, family, subset, args.batch, pack_length, processor.tokenizer.pad_token_id)
            check["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"loss check: {check}", file=sys.stderr, flush=True)

        def spec(side: str, loss: str, n: int, run: str, warmup: int) -> dict:
            batch = 1 if side == "packed" else args.batch
            return {
                "side": side,
                "loss": loss,
                "steps": n,
                "warmup": warmup,
                "threads": args.threads,
                "pack_length": pack_length,
                "encoded": str(tmp / "encoded.pt"),
                "out": str(tmp / run),
                "overrides": overrides(run, batch, n, loss),
            }

        for r in range(args.repeats):
            for side in sides:  # interleaved: load drift on the shared machine hits every side alike
                res = in_child(spec(side, "chunked", steps, f"{side}{r}", args.warmup))
                runs[side].append(res)
                print(f"repeat {r} {side}: {res}", file=sys.stderr, flush=True)
        memory = {}
        for side in ("padded", "packed") if args.memory_steps else ():
            for loss in ("standard", "chunked"):
                res = in_child(spec(side, loss, args.memory_steps, f"mem-{side}-{loss}", 1))
                memory[f"{side}_{loss}"] = {
                    k: res[k] for k in ("peak_rss_gb", "tokens_per_s", "steps_timed", "padding_efficiency")
                }
                print(f"memory {side} {loss}: {res}", file=sys.stderr, flush=True)

    result = {
        "command": "python " + " ".join(sys.argv),
        "version": __version__,
        "machine": f"{platform.processor() or platform.machine()}, torch threads {args.threads}",
        "model": f"tiny qwen2_5_vl, {tiny.parameters / 1e6:.1f} M parameters, fp32, sdpa, LoRA r {cfg.lora.r}, "
        f"train.loss chunked",
        "data": f"{len(data)} synthetic samples, {min(lengths)}..{max(lengths)} tokens (mean "
        f"{statistics.mean(lengths):.0f}), {sum(1 for s in data.items if s.pixel_values is None)} text-only, "
        f"checked and encoded once in {encode_s:.1f} s",
        "batch": args.batch,
        "pack_length": pack_length,
        "rows": rows,
        "steps_per_run": steps,
        "warmup": args.warmup,
        "sides": {s: pooled(runs[s]) for s in sides},
        "loss_check": check,
        "memory_standard_vs_chunked": memory,
        "runs": runs,
    }
    if "padded" in runs:
        base = result["sides"]["padded"]
        result["ratios_over_padded"] = {
            s: {
                "tokens_per_s": round(result["sides"][s]["tokens_per_s"] / base["tokens_per_s"], 3),
                "loop_tokens_per_s": round(
                    result["sides"][s]["loop_tokens_per_s"] / base["loop_tokens_per_s"], 3
                ),
                "padding_efficiency": round(
                    result["sides"][s]["padding_efficiency"] / base["padding_efficiency"], 3
                ),
                "per_repeat_tokens_per_s": [
                    round(a["tokens_per_s"] / b["tokens_per_s"], 3)
                    for a, b in zip(runs[s], runs["padded"], strict=True)
                ],
            }
            for s in sides
            if s != "padded"
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def pooled(runs: list[dict]) -> dict:
    """Sums over the repeats of one side: tokens / s is total real tokens over total step time."""
    real = sum(r["real_tokens"] for r in runs)
    step_s = sum(r["real_tokens"] / r["tokens_per_s"] for r in runs)
    loop_s = sum(r["real_tokens"] / r["loop_tokens_per_s"] for r in runs)
    computed = sum(r["computed_tokens"] for r in runs)
    steps = sum(r["steps_timed"] for r in runs)
    return {
        "steps_timed": steps,
        "real_tokens_per_step": round(real / steps, 1),
        "targets_per_step": round(sum(r["targets_per_step"] * r["steps_timed"] for r in runs) / steps, 1),
        "padding_efficiency": round(real / computed, 4),
        "step_s": round(step_s / steps, 4),
        "tokens_per_s": round(real / step_s, 1),
        "loop_tokens_per_s": round(real / loop_s, 1),
        "head_share": round(
            sum(r["head_share"] * r["real_tokens"] / r["tokens_per_s"] for r in runs) / step_s, 3
        ),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
        "final_loss": runs[-1]["final_loss"],
    }


if __name__ == "__main__":
    main()
