"""Qwen-VL-Chat LoRA and Int4 LoRA against the original project's published single-A100 table.

    python bench/bench_qwen_vl.py --out bench/results/gpu_qwen_vl.json             # GPU, real size
    python bench/bench_qwen_vl.py --tiny --lengths 384 512 --steps 2 --warmup 1 \
        --out /tmp/qwen_vl_smoke.json                                             # CPU smoke test

The original README profiles one A100-SXM4-80G, batch 1, gradient accumulation 8, one image per
sample, at 384, 512, 1024 and 2048 tokens: memory (GB) and seconds per iteration (an optimizer
step). Its three methods, and the recipe each run here starts from:
- LoRA (Chat): LoRA r 64 / alpha 16 on c_attn, attn.c_proj, w1, w2, bf16 (`recipes/qwen_vl/chat_lora.yaml`);
- LoRA (Base): the same plus wte and lm_head trained in full (`recipes/qwen_vl/base_lora.yaml`);
- Q-LoRA: LoRA on Qwen-VL-Chat-Int4, the GPTQ checkpoint, in fp16 (`recipes/qwen_vl/chat_int4_lora.yaml`).

Model: the published config (`qwenvl_ft/models/published/qwen_vl.json`, 9.6 B parameters),
random-initialised on the GPU and saved as a checkpoint directory, then written once more as a
GPTQ checkpoint in Qwen-VL-Chat-Int4's layout (`quantize_checkpoint`; round to nearest, which
changes values, not speed or memory). Each run is `qwenvl_ft.train.train` on that directory, single
GPU, no DeepSpeed, gradient checkpointing on, as the original's single-GPU scripts.

Data: synthetic samples of exactly the target length (one 448x448 image = 258 tokens, the rest
an assistant answer), lengths checked by the data check before each run.

Measured per run, over the optimizer steps after `--warmup`: seconds per step (8 x length tokens /
the trainer's logged tokens per second, data loading included, as a progress bar's s/it), peak
`torch.cuda.max_memory_allocated` and `max_memory_reserved` (the original does not say which it
reports; nvidia-smi shows about the reserved figure plus the CUDA context), and the planner's
estimate for the same recipe (`planner`, see `common.planned_peak`). The JSON is rewritten after
every row, so a run stopped early keeps the rows it finished (`complete` says which). Q-LoRA needs
gptqmodel; without it that method is listed under `skipped` with the reason.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import traceback
from pathlib import Path

import torch
from bench_gpu_train import build_model, checkpoint_dir
from common import planned_peak

from qwenvl_ft import __version__
from qwenvl_ft.config.loader import load_recipe
from qwenvl_ft.config.schema import DatasetSpec
from qwenvl_ft.data.check import check_sources
from qwenvl_ft.data.sources import Source
from qwenvl_ft.data.synthetic import shapes_image
from qwenvl_ft.models import get_family
from qwenvl_ft.models.gptq import quantize_checkpoint
from qwenvl_ft.tiny import make_tiny
from qwenvl_ft.train import train

REPO = Path(__file__).resolve().parents[1]
FAMILY = get_family("qwen_vl")
METHODS = {  # name -> (recipe, int4 checkpoint)
    "lora_chat": ("recipes/qwen_vl/chat_lora.yaml", False),
    "lora_base": ("recipes/qwen_vl/base_lora.yaml", False),
    "qlora_int4": ("recipes/qwen_vl/chat_int4_lora.yaml", True),
}
# Qwen-VL README, "Profiling of Memory and Speed": GB / s per iteration at 384, 512, 1024, 2048 tokens.
PUBLISHED_A100 = {
    "lora_base": {384: (37.1, 2.3), 512: (37.3, 2.4), 1024: (38.7, 3.6), 2048: (38.7, 6.1)},
    "lora_chat": {384: (23.3, 2.2), 512: (23.6, 2.3), 1024: (25.1, 3.5), 2048: (27.3, 5.9)},
    "qlora_int4": {384: (17.0, 4.2), 512: (17.2, 4.5), 1024: (18.2, 5.5), 2048: (19.3, 7.9)},
}
ACCUMULATION = 8


def checkpoints(root: Path, tiny: bool, seed: int, with_int4: bool) -> dict[bool, Path]:
    """{int4: directory}: the same random weights, 16-bit and (`with_int4`) GPTQ."""
    fp, int4 = root / "qwen_vl", root / "qwen_vl-int4"
    if tiny:
        make_tiny(FAMILY, fp, seed=seed)
        if with_int4:
            make_tiny(FAMILY, int4, seed=seed, int4=True)
        return {False: fp, True: int4}
    published = REPO / "qwenvl_ft/models/published/qwen_vl.json"
    for d in (fp, int4) if with_int4 else (fp,):  # config.json, the real tokenizer, the image processor
        checkpoint_dir(d, published)
    model = build_model(FAMILY, fp, "sdpa", "cuda", seed)
    model.save_pretrained(fp)
    if with_int4:
        quantize_checkpoint(model, FAMILY, int4)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return {False: fp, True: int4}


def write_data(path: Path, model_dir: Path, length: int, samples: int) -> None:
    """`samples` conversations of exactly `length` tokens: one image and an answer of filler words."""
    image_dir = path.parent / "images"
    image_dir.mkdir(exist_ok=True)
    shapes_image(seed=0, size=(448, 448)).save(image_dir / "0.png")
    processor = FAMILY.load_processor(str(model_dir))

    def write(words: int) -> list[int]:
        line = {
            "messages": [
                {"role": "user", "content": "<image>Describe the picture."},
                {"role": "assistant", "content": " ".join(["shape"] * words)},
            ],
            "images": ["images/0.png"],
        }
        path.write_text("".join(json.dumps({"id": f"s{i}", **line}) + "\n" for i in range(samples)))
        report = check_sources([Source(DatasetSpec(path=str(path)))], processor, 8192, progress=False)
        if not report.ok:
            raise RuntimeError(f"synthetic data rejected: {report.errors[0]}")
        return [p.length for p in report.plan]

    base = write(1)[0] - 1
    got = write(length - base)  # one token per " shape"
    if set(got) != {length}:
        raise RuntimeError(f"could not build {length}-token samples (got {sorted(set(got))})")


def overrides(
    method: str, model_dir: Path, data: Path, length: int, out: Path, steps: int, tiny: bool
) -> list[str]:
    """The recipe's overrides for one row: the original's single-GPU setup at `length` tokens."""
    int4 = METHODS[method][1]
    dtype = ("bf16" if int4 else "fp32") if tiny else ("fp16" if int4 else "bf16")  # no fp16 on CPU
    return [
        f"model.path={model_dir}",
        f"model.dtype={dtype}",
        f"data.train=[{{path: {data}}}]",
        f"data.max_length={length}",
        f"output.dir={out}",
        f"train.max_steps={steps}",
        "train.per_device_batch_size=1",
        f"train.gradient_accumulation_steps={ACCUMULATION}",
        "train.logging_steps=1",
        "train.save_steps=100000",
        "train.deepspeed=null",
        "train.report_to=[]",
        "train.resume=null",
    ]


def run(method: str, settings: list[str]) -> dict:
    cfg = load_recipe(REPO / METHODS[method][0], settings)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = train(cfg)
    logs = [h for h in result.log_history if "tokens_per_s" in h]
    reserved = torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None
    del result
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"logs": logs, "reserved_gb": reserved}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[384, 512, 1024, 2048])
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the figures (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny model on CPU: a smoke test, not a measurement")
    p.add_argument(
        "--plan-only",
        action="store_true",
        help="real sizes on CPU: the data check at each length and the planner's estimate per row; no model",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if not args.tiny and not args.plan_only and not torch.cuda.is_available():
        sys.exit("bench_qwen_vl: needs a CUDA GPU (or --tiny for the CPU smoke test)")
    if args.warmup >= args.steps:
        sys.exit("bench_qwen_vl: --warmup must be below --steps")

    methods, skipped = list(args.methods), {}
    if "qlora_int4" in methods and not args.tiny and not importlib.util.find_spec("gptqmodel"):
        methods.remove("qlora_int4")  # GPTQ kernels come from gptqmodel (a CUDA build, not carried)
        skipped["qlora_int4"] = "gptqmodel not installed"
    rows: list[dict] = []

    def write(complete: bool) -> None:
        """The rows so far, rewritten after each one: a run stopped early keeps what it measured."""
        result = {
            "command": "python " + " ".join(sys.argv),
            "device": torch.cuda.get_device_name()
            if torch.cuda.is_available()
            else platform.processor() or "cpu",
            "versions": {"qwenvl_ft": __version__, "torch": torch.__version__},
            "setup": f"batch 1, gradient accumulation {ACCUMULATION}, one image, gradient checkpointing, single device",
            "tiny": args.tiny,
            "rows": rows,
            "skipped": skipped,
            "complete": complete,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.plan_only:  # the checkpoint directory without weights: config, tokenizer, processor
            for name in ("qwen_vl", "qwen_vl-int4"):
                checkpoint_dir(root / name, REPO / f"qwenvl_ft/models/published/{name}.json")
            dirs = {False: root / "qwen_vl", True: root / "qwen_vl-int4"}
        else:
            dirs = checkpoints(root, args.tiny, args.seed, with_int4="qlora_int4" in methods)
        for length in args.lengths:
            data = root / f"data{length}" / "train.jsonl"
            data.parent.mkdir()
            write_data(data, dirs[False], length, samples=ACCUMULATION * args.steps)
            for method in methods:
                int4 = METHODS[method][1]
                settings = overrides(
                    method, dirs[int4], data, length, root / f"run-{method}-{length}", args.steps, args.tiny
                )
                if args.plan_only:
                    rows.append(
                        {
                            "method": method,
                            "length": length,
                            "planner": planned_peak(REPO / METHODS[method][0], settings, None),
                        }
                    )
                    write(complete=False)
                    continue
                try:
                    r = run(method, settings)
                except Exception as e:  # out of memory or a bug: recorded, the other rows still run
                    traceback.print_exc()
                    rows.append(
                        {"method": method, "length": length, "error": f"{type(e).__name__}: {e}"[:1000]}
                    )
                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    write(complete=False)
                    continue
                rows.append(row(method, length, r, args))
                rows[-1]["planner"] = planned_peak(
                    REPO / METHODS[method][0],
                    settings,
                    rows[-1]["peak_allocated_gb"] if torch.cuda.is_available() else None,
                )
                print(json.dumps(rows[-1]), flush=True)
                write(complete=False)
    write(complete=True)
    print(Path(args.out).read_text())
    if any("error" in r for r in rows):
        sys.exit("bench_qwen_vl: some rows failed (see 'error' in the rows and the tracebacks above)")


def row(method: str, length: int, r: dict, args) -> dict:
    """One table row: seconds per optimizer step and peak memory, beside the published A100 figures."""
    kept = r["logs"][args.warmup :]
    tokens = ACCUMULATION * length
    sec = statistics.median(tokens / h["tokens_per_s"] for h in kept)
    published = None if args.tiny else PUBLISHED_A100[method].get(length)
    out = {
        "method": method,
        "length": length,
        "s_per_step": round(sec, 3),
        "peak_allocated_gb": max(h["peak_mem_gb"] for h in r["logs"]),
        "peak_reserved_gb": r["reserved_gb"] and round(r["reserved_gb"], 2),
        "published_a100": published and {"gb": published[0], "s_per_step": published[1]},
    }
    if published:
        out["ratio_s_per_step"] = round(sec / published[1], 3)
        out["ratio_allocated_gb"] = round(out["peak_allocated_gb"] / published[0], 3)
    return out


if __name__ == "__main__":
    main()
