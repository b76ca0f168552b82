"""Training throughput on a GPU: our trainer path against what a user would write, one run, same data.

    python bench/bench_gpu_train.py --mode lora --config qwenvl_ft/models/published/qwen2_5_vl-7b.json \
        --out bench/results/gpu_qwen2_5_vl-7b_lora.json
    python bench/bench_gpu_train.py --mode full --config qwenvl_ft/models/published/qwen2_5_vl-3b.json \
        --out bench/results/gpu_qwen2_5_vl-3b_full.json
    python bench/bench_gpu_train.py --tiny --steps 4 --warmup 1 --out /tmp/gpu_smoke.json   # CPU smoke test

Model: the published config (`--config`, a config.json shipped in `qwenvl_ft/models/published/`),
random-initialised in bf16 directly on the GPU (no checkpoint files), attention `flash_attention_2`
when flash-attn is installed, else `sdpa`; gradient checkpointing on. A checkpoint-like directory
(that config.json plus the real Qwen tokenizer and the family's image processor) stands in for
`model.path`, so the recipe, the data check and `adapt` run exactly as in a real run.

Data: the length-varied synthetic set of `bench_pack.py` (`varied_data`) with bigger images
(56..896 px sides, up to 1024 visual tokens) and answers of 3..600 words, checked once with
`build_dataset` and encoded once; both sides train on those same encoded samples.

Sides, one after the other in one process, the same `TrainingArguments` (`training_arguments`,
bf16, gradient checkpointing, AdamW) except the batch size, the same seed before the model is built:
- baseline: a plain `transformers.Trainer`; LoRA (r 64, alpha 16, dropout 0.05, the family's
  language-model target regex) by `peft.get_peft_model`, or in full mode the same parameters
  trainable as ours (vision tower frozen, merger trained); `PaddingCollator` batches of `--batch`
  samples in random order; the model's own loss (full logits).
- ours: `VLTrainer` on `PackedDataset` + `PackingCollator` (one row a step, the row length the
  shortest that packs the data into no more rows than the baseline has batches, so both take the
  same steps and the same real tokens per step on average), `loss="chunked"`, LoRA by
  `qwenvl_ft.training.setup.adapt` and trainable weights upcast to fp32 as `train()` does.
- ours_liger: ours with Liger's kernels and fused linear cross-entropy, when liger_kernel imports.
- ours_padded: ours on `PaddingCollator` batches of `--batch` samples in random order (packing's
  effect alone: ours / ours_padded, same trainer and loss).
- ours_flash: ours with `flash_attention_2` (packed rows by `cu_seqlens`, no masked blocks), when
  flash_attn imports; `ours` then uses `--attn`. (transformers 5.24 has no flex_attention path for
  these models: `_flex_attn_can_dispatch` refuses Qwen2.5-VL.)

Measured per side, over the steps after `--warmup`: real (non-pad) tokens / s (step time from
on_step_begin to on_step_end, the GPU synchronised at both), peak `torch.cuda.max_memory_allocated`
(reset before each side; `max_memory_reserved` beside it), padding efficiency, the planner's
estimate for the recipe the side ran (`planner`: `qwenvl-ft plan`'s terms, see `common.planned_peak`),
and MFU = model FLOPs / (step time x peak bf16 FLOPs).
Model FLOPs of a sample of s tokens, k of them targets, with p vision patches (see `model_flops`):

    a*N_dec*s + 6*N_lora*s + 6*L*d_attn*s^2 + a*N_head*k + 2*N_vis*p + m*N_merger*p/4

a = 6 (full: forward, input gradient, weight gradient) or 4 (LoRA: frozen weights need no weight
gradient); N_dec the decoder's weights (no embeddings); causal attention inside the sample, forward
plus backward; lm_head credited for target tokens only on both sides (the work the loss needs), the
frozen vision tower for its forward (its attention left out: the MFU is a slight underestimate);
m = 4 when the merger trains, else 2. Gradient-checkpointing recompute is not counted (model FLOPs,
not hardware FLOPs). Peak: 989 TFLOP/s dense bf16 for H100 / H200 SXM, 756 H100 PCIe, 312 A100
(`--peak-tflops` for others).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from bench_pack import BatchLog, pick_pack_length, varied_data
from common import ListDataset, StepTimer, planned_peak, quiet
from transformers.utils import logging as hf_logging

from qwenvl_ft import __version__
from qwenvl_ft.config.loader import load_recipe
from qwenvl_ft.data.packing import pack_bins
from qwenvl_ft.models import FAMILIES

PUBLISHED = Path(__file__).resolve().parents[1] / "qwenvl_ft" / "models" / "published"
RECIPE = Path("recipes/tiny/qwen2_5_vl_lora.yaml")  # a base: model, data, LoRA and batch overridden below
PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,
    "H200": 989.4,
    "GH200": 989.4,
    "A100": 312.0,
}
TARGETS = {"lora": {"tokens_per_s": 2.0, "peak_mem": 0.7}, "full": {"mfu": 0.40}}


class SyncedTimer(StepTimer):
    """StepTimer that waits for the GPU at both ends, so a step's time is its own work."""

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        super().on_step_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        super().on_step_end(args, state, control, **kwargs)


# -- model --------------------------------------------------------------------------------------
def checkpoint_dir(root: Path, config_path: Path | None, tiny: str = "qwen2_5_vl") -> tuple[Path, object]:
    """A checkpoint directory without weights: the config.json, the tokenizer, the image processor;
    with no config (--tiny), the tiny checkpoint of the family `tiny`."""
    from qwenvl_ft.models.processor import VLProcessor
    from qwenvl_ft.models.tokenizer import build_tokenizer
    from qwenvl_ft.tiny import make_tiny

    if config_path is None:  # --tiny: make_tiny writes a scaled-down config (and unused weights)
        family = FAMILIES[tiny]
        make_tiny(family, root)
        return root, family
    model_type = json.loads(config_path.read_text())["model_type"]
    family = next(f for f in FAMILIES.values() if model_type in f.model_types)
    root.mkdir(parents=True)
    (root / "config.json").write_text(config_path.read_text())
    tokenizer = build_tokenizer(family.special_tokens, family.chat_template, real_vocab=True)
    VLProcessor.for_family(family, tokenizer).save_pretrained(root)
    return root, family


def build_model(family, path: Path, attn: str, device: str, seed: int):
    """The architecture of `path/config.json`, random-initialised in bf16 on `device`."""
    from transformers import AutoConfig

    torch.manual_seed(seed)  # the same base weights on every side
    with torch.device(device):
        return family.model_class()._from_config(
            AutoConfig.from_pretrained(path), dtype=torch.bfloat16, attn_implementation=attn
        )


def parameter_counts(family, path: Path) -> dict[str, int]:
    """Weights per part, counted on the meta device (nothing allocated)."""
    from transformers import AutoConfig

    with torch.device("meta"):
        model = family.model_class()._from_config(AutoConfig.from_pretrained(path))
    paths = family.paths
    counts = {"embeddings": 0, "lm_head": 0, "vision": 0, "merger": 0, "decoder": 0, "other": 0}
    for name, p in model.named_parameters():
        if name.startswith(paths.embeddings + "."):
            part = "embeddings"
        elif name.startswith(paths.lm_head + "."):
            part = "lm_head"
        elif any(name.startswith(m + ".") for m in paths.merger):
            part = "merger"
        elif name.startswith(paths.vision + "."):
            part = "vision"
        elif any(name.startswith(m + ".") for m in paths.language):
            part = "decoder"
        else:
            part = "other"
        counts[part] += p.numel()
    text = model.config.get_text_config()
    # Tied embeddings (3B) share one tensor, counted once above; lm_head still multiplies by it.
    counts["lm_head"] = model.get_output_embeddings().weight.numel()
    counts["tied"] = int(model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    counts["layers"] = text.num_hidden_layers
    counts["attn_width"] = text.num_attention_heads * getattr(
        text, "head_dim", text.hidden_size // text.num_attention_heads
    )
    return counts


def model_flops(samples: list[tuple[int, int, int]], n: dict[str, int], mode: str, lora_params: int) -> float:
    """Model FLOPs of one step's samples (length, targets, vision patches); formula in the module doc."""
    a = 6 if mode == "full" else 4
    m = 4 if mode == "full" else 2
    total = 0.0
    for s, k, p in samples:
        total += a * n["decoder"] * s + 6 * lora_params * s + 6 * n["layers"] * n["attn_width"] * s * s
        total += a * n["lm_head"] * k + 2 * n["vision"] * p + m * n["merger"] * p / 4
    return total


def peak_flops(override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"--peak-tflops {override}"
    if not torch.cuda.is_available():
        return None, "no GPU"
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS.items():  # "H100 PCIe" / "H100 NVL" before "H100"
        if key in name:
            return tflops * 1e12, f"{name}: {tflops} TFLOP/s dense bf16"
    return None, f"{name}: unknown peak, pass --peak-tflops"


def freeze_like_ours(model, family) -> None:
    """Full-mode baseline: the vision tower frozen, the merger and the language model trained."""
    for name, p in model.named_parameters():
        in_merger = any(name.startswith(m + ".") for m in family.paths.merger)
        p.requires_grad = in_merger or not name.startswith(family.paths.vision + ".")


# -- sides --------------------------------------------------------------------------------------
def run_side(side: str, ctx: dict) -> dict:
    """Build the model, train `ctx['steps']` steps with one side's trainer, return its measurements."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer

    from qwenvl_ft.data.collate import PaddingCollator
    from qwenvl_ft.data.packing import PackedDataset, PackingCollator
    from qwenvl_ft.train import training_arguments
    from qwenvl_ft.training.setup import adapt, upcast_trainable
    from qwenvl_ft.training.trainer import VLTrainer

    cfg, family, mode = ctx["cfg"](side), ctx["family"], ctx["mode"]
    pad, packed_side = ctx["pad"], side not in ("baseline", "ours_padded")
    start_gb = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model = build_model(family, ctx["path"], cfg.model.attn_implementation, ctx["device"], cfg.train.seed)
    timer = SyncedTimer()
    args = training_arguments(cfg, ctx["out"] / side)
    if side == "baseline":
        if mode == "lora":
            lora = LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=family.lora_target_regex,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
        else:
            freeze_like_ours(model, family)
        log = BatchLog(PaddingCollator(pad))
        trainer = Trainer(
            model=model, args=args, train_dataset=ctx["data"], data_collator=log, callbacks=[timer]
        )
    else:
        if side == "ours_liger":
            family.apply_liger(model)
        model = adapt(model, cfg, family, is_base=False)
        upcast_trainable(model)  # as train() does for a bf16 model without DeepSpeed
        if packed_side:
            log = BatchLog(PackingCollator(pad))
            data = PackedDataset(ctx["data"], ctx["pack_length"], cfg.train.seed, family, ctx["config"])
        else:
            log, data = BatchLog(PaddingCollator(pad)), ctx["data"]
        trainer = VLTrainer(
            model=model,
            args=args,
            train_dataset=data,
            data_collator=log,
            family=family,
            vision_lr=cfg.train.vision_lr,
            merger_lr=cfg.train.merger_lr,
            loss="liger" if side == "ours_liger" else "chunked",
            callbacks=[timer],
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora_params = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    quiet(trainer)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    w, n = ctx["warmup"], ctx["steps"]
    batches, step_s = log.batches[w:n], timer.step[w:n]
    real = sum(s for b in batches for s, _, _ in b["samples"])
    flops = sum(model_flops(b["samples"], ctx["counts"], mode, lora_params) for b in batches)
    peak = ctx["peak_flops"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {
        "steps_timed": len(batches),
        "real_tokens_per_step": round(real / len(batches), 1),
        "padding_efficiency": round(real / sum(b["computed"] for b in batches), 4),
        "step_s": round(sum(step_s) / len(step_s), 4),
        "step_s_median": round(statistics.median(step_s), 4),
        "tokens_per_s": round(real / sum(step_s), 1),
        "loop_tokens_per_s": round(real / sum(timer.loop[w:n]), 1),  # adds batch fetch and collation
        "model_tflops_per_step": float(f"{flops / len(batches) / 1e12:.4g}"),
        "mfu": round(flops / sum(step_s) / peak, 4) if peak else None,
        "peak_mem_gb": round(peak_memory_gb(), 2),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
        "mem_at_start_gb": round(start_gb, 2),  # left over from the side before: should be ~0
        "trainable_params": trainable,
        "first_loss": round(losses[0], 4),
        "final_loss": round(losses[-1], 4),
        "train_wall_s": round(wall, 1),
        "planner": planned_peak(
            RECIPE, ctx["plan_overrides"](side), peak_memory_gb() if ctx["device"] == "cuda" else None
        ),
    }
    del trainer, model, log
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def peak_memory_gb() -> float:
    """Peak GPU memory allocated since the side began; on CPU the process's peak RSS (never reset)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def fits(mode: str, counts: dict[str, int], side: str) -> str | None:
    """Why a full fine-tuning side cannot fit on this GPU (None: it may fit)."""
    if mode != "full" or not torch.cuda.is_available():
        return None
    trainable = sum(counts[k] for k in ("decoder", "embeddings", "merger", "other"))
    if not counts["tied"]:
        trainable += counts["lm_head"]
    # bytes per trainable weight: ours keeps fp32 weights, gradients and two AdamW states (16);
    # the baseline keeps them in bf16 (8); the frozen vision tower is bf16 (2).
    need = trainable * (8 if side == "baseline" else 16) + counts["vision"] * 2
    total = torch.cuda.get_device_properties(0).total_memory
    if need > 0.95 * total:
        return f"weights, gradients and AdamW states alone need {need / 2**30:.0f} GiB of {total / 2**30:.0f} GiB"
    return None


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=PUBLISHED / "qwen2_5_vl-7b.json")
    parser.add_argument("--mode", choices=("lora", "full"), default="lora")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4, help="samples per baseline batch")
    parser.add_argument("--steps", type=int, default=None, help="steps a side (default: one baseline epoch)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the measurement")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--max-pixels", type=int, default=802816, help="896*896: at most 1024 visual tokens")
    parser.add_argument(
        "--sides",
        default="baseline,ours,ours_liger",
        help="of baseline, ours, ours_liger, ours_padded, ours_flash (the last two skipped without "
        "Liger / flash-attn or a GPU)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats of all sides")
    parser.add_argument("--attn", choices=("auto", "sdpa", "flash_attention_2"), default="auto")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU: a smoke test of this script")
    parser.add_argument("--tiny-family", default="qwen2_5_vl", help="the family of the --tiny model")
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="real sizes on CPU: the data, pack length, parameter counts and the planner's estimate per "
        "side, written to --out; no model is built (bench/gpu/run.sh --dry-run runs it)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default bench/results/gpu_<model>_<mode>.json"
    )
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("qwenvl_ft").setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.tiny:  # a few small samples: the point is that every code path runs
        # 224 x 224 at most; Qwen3-VL and Qwen3.5 start at 256 x 256 (their published floor)
        floor = 50176 if args.tiny_family in ("qwen2_vl", "qwen2_5_vl") else 65536
        args.samples, args.max_length, args.max_pixels = min(args.samples, 32), 512, floor
        sides_px, words = (28, 224), (3, 100)
    else:
        sides_px, words = (56, 896), (3, 600)
        if not torch.cuda.is_available() and not args.plan_only:
            sys.exit("no CUDA GPU: this benchmark needs one (or --tiny for the CPU smoke test)")
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    attn = args.attn
    if attn == "auto":
        attn = "flash_attention_2" if device == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
    model_name = "tiny" if args.tiny else args.config.stem
    out_path = args.out or Path(f"bench/results/gpu_{model_name}_{args.mode}.json")
    sides = [s for s in args.sides.split(",") if s]
    skipped = {}
    no_liger = device != "cuda" or not importlib.util.find_spec("liger_kernel")
    if "ours_liger" in sides and no_liger and not args.plan_only:
        sides.remove("ours_liger")
        skipped["ours_liger"] = "liger_kernel not installed or no GPU"
    if "ours_flash" in sides and (device != "cuda" or not importlib.util.find_spec("flash_attn")):
        sides.remove("ours_flash")
        skipped["ours_flash"] = "flash_attn not installed or no GPU"
    unknown = set(sides) - {"baseline", "ours", "ours_liger", "ours_padded", "ours_flash"}
    if unknown:
        sys.exit(f"unknown side(s): {', '.join(sorted(unknown))}")

    from transformers import AutoConfig

    from qwenvl_ft.data.dataset import build_dataset
    from qwenvl_ft.models import resolve_family

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, family = checkpoint_dir(tmp / "model", None if args.tiny else args.config, args.tiny_family)
        resolve_family(path, family.name)
        jsonl = varied_data(tmp / "data", args.samples, sides=sides_px, words=words)

        def overrides(side: str, steps: int) -> list[str]:
            batch = args.batch if side in ("baseline", "ours_padded") else 1
            return [
                f"model.path={path}",
                "model.dtype=bf16",
                f"model.attn_implementation={'flash_attention_2' if side == 'ours_flash' else attn}",
                f"model.max_pixels={args.max_pixels}",
                f"output.dir={tmp / 'out' / side}",
                f"data.train=[{{path: {jsonl}}}]",
                f"data.max_length={args.max_length}",
                "data.num_workers=0",
                f"train.mode={args.mode}",
                "lora.r=64",
                "lora.alpha=16",
                "lora.dropout=0.05",
                "train.learning_rate=1e-5",
                f"train.per_device_batch_size={batch}",
                "train.gradient_accumulation_steps=1",
                f"train.max_steps={steps}",
                f"train.save_steps={steps * 100}",
                "train.logging_steps=1",
                "train.gradient_checkpointing=true",
            ]

        def recipe(side: str, steps: int):
            return load_recipe(RECIPE, overrides(side, steps))

        def plan_overrides(side: str) -> list[str]:
            """The side's run as a recipe for the planner: packing, loss and Liger as the side had them."""
            extra = {"baseline": ["train.loss=standard"], "ours_liger": ["train.liger=true"]}.get(side, [])
            if side not in ("baseline", "ours_padded"):
                longest = min(args.max_length, pack_length)
                extra += [
                    "data.packing=true",
                    f"data.pack_length={pack_length}",
                    f"data.max_length={longest}",
                ]
            return overrides(side, steps) + extra

        cfg = recipe("check", 1)
        processor = family.load_processor(str(path), cfg.model.min_pixels, cfg.model.max_pixels)
        t0 = time.perf_counter()
        ds, report = build_dataset(
            cfg.data, processor, cfg.train.seed, cache_dir=tmp / "cache", progress=False
        )
        data = ListDataset([ds[i] for i in range(len(ds))])
        encode_s = time.perf_counter() - t0
        lengths = data.lengths()
        batches = -(-len(data) // args.batch)
        steps = args.steps or batches
        if steps <= args.warmup:
            sys.exit(f"--steps {steps} must exceed --warmup {args.warmup}")
        pack_length = pick_pack_length(lengths, batches, cfg.train.seed)
        counts = parameter_counts(family, path)
        flops_peak, peak_note = peak_flops(args.peak_tflops)
        ctx = {
            "cfg": lambda side: recipe(side, steps),
            "family": family,
            "mode": args.mode,
            "path": path,
            "config": AutoConfig.from_pretrained(path),
            "attn": attn,
            "device": device,
            "data": data,
            "pad": processor.tokenizer.pad_token_id,
            "pack_length": pack_length,
            "steps": steps,
            "warmup": args.warmup,
            "counts": counts,
            "peak_flops": flops_peak,
            "out": tmp / "out",
            "plan_overrides": plan_overrides,
        }
        params = sum(counts[k] for k in ("embeddings", "vision", "merger", "decoder", "other"))
        params += 0 if counts["tied"] else counts["lm_head"]
        print(
            f"{family.title} {model_name}, {params / 1e9:.2f} B parameters, {args.mode}, {attn}, {device}; "
            f"{len(data)} samples {min(lengths)}..{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}), {batches} batches of {args.batch}, "
            f"pack_length {pack_length} -> {len(pack_bins(lengths, pack_length, cfg.train.seed))} rows; "
            f"{steps} steps a side, {peak_note}",
            file=sys.stderr,
            flush=True,
        )
        if args.plan_only:
            write_plan(
                out_path,
                counts,
                pack_length,
                steps,
                {s: planned_peak(RECIPE, plan_overrides(s), None) for s in sides},
            )
            return
        runs: dict[str, list[dict]] = {s: [] for s in sides}
        failed: dict[str, str] = {}  # side -> the error that stopped it (the run then exits 1)

        def write(complete: bool) -> dict:
            """The result so far, written to --out after every side: a run stopped early keeps its sides."""
            result = {
                "command": "python " + " ".join(sys.argv),
                "version": __version__,
                "device": torch.cuda.get_device_name()
                if device == "cuda"
                else f"CPU ({platform.machine()}), smoke test",
                "software": f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
                f"peft {__import__('peft').__version__}",
                "model": f"{model_name}: {family.title}, random init, bf16, {attn}, gradient checkpointing, "
                f"{args.mode}" + (" r 64 alpha 16" if args.mode == "lora" else ""),
                "parameters": counts,
                "data": f"{len(data)} synthetic samples, {min(lengths)}..{max(lengths)} tokens (mean "
                f"{statistics.mean(lengths):.0f}), {sum(1 for s in data.items if s.pixel_values is None)} text-only, "
                f"dropped {len(report.dropped)}, checked and encoded in {encode_s:.1f} s",
                "baseline_batch": args.batch,
                "pack_length": pack_length,
                "steps_per_side": steps,
                "warmup": args.warmup,
                "peak_flops": peak_note,
                "peak_tflops": flops_peak / 1e12 if flops_peak else None,
                "flops_formula": "a*N_dec*s + 6*N_lora*s + 6*L*d_attn*s^2 + a*N_head*k + 2*N_vis*p + m*N_merger*p/4 "
                "per sample (a = 6 full / 4 LoRA, m = 4 full / 2 LoRA; s tokens, k targets, p patches)",
                "sides": {s: summary(v) for s, v in runs.items() if v},
                "skipped": skipped,
                "failed": failed,
                "ratios_over_baseline": ratios(runs, args.mode),
                "ratios_over_ours_padded": ratios(runs, args.mode, base="ours_padded"),
                "targets": TARGETS[args.mode],
                "runs": runs if args.repeats > 1 else None,
                "complete": complete,
            }
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(result, indent=2) + "\n")
            return result

        for r in range(args.repeats):
            for side in sides:
                reason = fits(args.mode, counts, side)
                if reason:
                    skipped[side] = reason
                    continue
                try:
                    runs[side].append(run_side(side, ctx))
                except torch.cuda.OutOfMemoryError as e:  # record it; the other sides still run
                    skipped[side] = f"CUDA out of memory: {str(e).splitlines()[0]}"
                    gc.collect()
                    torch.cuda.empty_cache()
                    continue
                except Exception as e:  # one GPU lease: a broken side must not cost the others
                    traceback.print_exc()
                    failed[side] = f"{type(e).__name__}: {e}"[:1000]
                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                print(f"repeat {r} {side}: {runs[side][-1]}", file=sys.stderr, flush=True)
                write(complete=False)
        result = write(complete=True)

    print(json.dumps(result, indent=2))
    if failed:
        sys.exit(f"side(s) failed: {', '.join(failed)} (the tracebacks are above; the others were written)")


def write_plan(out_path: Path, counts: dict, pack_length: int, steps: int, plans: dict) -> None:
    """--plan-only: what a GPU run would build, with the planner's estimate for each side."""
    result = {
        "command": "python " + " ".join(sys.argv),
        "plan_only": True,
        "parameters": counts,
        "pack_length": pack_length,
        "steps_per_side": steps,
        "planner": plans,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def summary(rs: list[dict]) -> dict:
    """One side over its repeats: means of the numbers (the one run itself when there is one)."""
    if len(rs) == 1:
        return rs[0]
    return {
        k: round(statistics.mean(r[k] for r in rs), 4) if isinstance(rs[0][k], (int, float)) else rs[-1][k]
        for k in rs[0]
    }


def ratios(runs: dict[str, list[dict]], mode: str, base: str = "baseline") -> dict:
    """side / `base` for tokens/s and peak memory; over the baseline, whether the targets are met."""
    reference, base = base, runs.get(base)
    if not base:
        return {}

    def mean(rs: list[dict], key: str) -> float | None:
        values = [r[key] for r in rs if r[key] is not None]
        return statistics.mean(values) if values else None

    out = {}
    for side, rs in runs.items():
        if side == reference or not rs or (reference != "baseline" and side == "baseline"):
            continue
        speed = mean(rs, "tokens_per_s") / mean(base, "tokens_per_s")
        memory = max(r["peak_mem_gb"] for r in rs) / max(r["peak_mem_gb"] for r in base)
        out[side] = {"tokens_per_s": round(speed, 3), "peak_mem": round(memory, 3)}
        if reference != "baseline":
            continue
        if mode == "lora":
            out[side]["targets_met"] = (
                speed >= TARGETS["lora"]["tokens_per_s"] and memory <= TARGETS["lora"]["peak_mem"]
            )
        elif mean(rs, "mfu") is not None:
            out[side]["targets_met"] = mean(rs, "mfu") >= TARGETS["full"]["mfu"]
    return out


if __name__ == "__main__":
    main()
