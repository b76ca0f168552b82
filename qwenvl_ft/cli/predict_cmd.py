"""`qwenvl-ft predict MODEL_OR_RUN_DIR DATA --output preds.jsonl`: batched generation, resumable.

MODEL_OR_RUN_DIR is a base or merged checkpoint, a full fine-tuning run, or a LoRA run or
checkpoint directory (the adapter is loaded on the base model the run recorded). DATA is any
format `qwenvl-ft data check` reads; each sample's last assistant turn is the reference. Greedy
decoding. A rerun with the same --output skips the samples already written. On generations with
a thinking mode, --thinking on|off overrides the run's default (the mode it was trained in); the reasoning is written
apart from the prediction (field `reasoning`).
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="generate answers for a dataset into a JSONL file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="checkpoint directory, or a qwenvl-ft run / checkpoint directory")
    p.add_argument("data", help="JSON / JSONL / HF dataset of conversations")
    p.add_argument("--output", required=True, help="predictions JSONL (appended to; existing ids skipped)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, help="only the first N samples")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--base", help="base model directory, overriding the one a LoRA run recorded")
    add_thinking_argument(p)
    p.set_defaults(func=run)


def add_thinking_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--thinking",
        type=_on_off,
        metavar="on|off",
        help="thinking mode of generations that have one (default: the mode the run was trained in, else the "
        "template's); refused by the others",
    )
    p.add_argument(
        "--reasoning-effort",
        metavar="LEVEL",
        help="the template's reasoning_effort on generations that have one (Qwen3.8: xhigh, medium, low; "
        "default: the run's data.reasoning_effort, else the template's xhigh); refused by the others",
    )


def load_predictor(args: argparse.Namespace, model: str):
    """The command's model with its --dtype, --base, --thinking and --reasoning-effort; one line when
    the thinking mode came from how the run was trained, not from a flag."""
    from ..infer import Predictor

    predictor = Predictor.load(
        model,
        dtype=args.dtype,
        base=args.base,
        thinking=args.thinking,
        reasoning_effort=args.reasoning_effort,
    )
    line = predictor.thinking_line()
    if line:
        print(line)
    return predictor


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")
    return value == "on"


def run(args: argparse.Namespace) -> int:
    from ..predict import predict

    predictor = load_predictor(args, args.model)
    out = predict(predictor, args.data, args.output, args.max_new_tokens, args.batch_size, args.limit)
    print(f"predictions: {out}")
    return 0
