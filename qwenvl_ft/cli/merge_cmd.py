"""`qwenvl-ft merge RUN_OR_CHECKPOINT_DIR`: standalone weights from a run, verified.

LoRA and Q-LoRA adapters are merged into the base model loaded in full precision (Q-LoRA never
merges into 4-bit weights); full fine-tuning runs, and DeepSpeed ZeRO checkpoints without
consolidated weights, are exported as they are. The run's qwenvl_ft.json names the base model
and family; --base overrides the base (a moved run, or the unquantized model behind a GPTQ one).
The output is a normal checkpoint of the generation: sharded safetensors, config, generation
config, tokenizer, preprocessor config and chat template.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="export standalone weights from a run (merge LoRA, gather ZeRO)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run's output directory or one of its checkpoint-N directories")
    p.add_argument("--output", help="where to write (default: RUN_DIR-merged next to it)")
    p.add_argument(
        "--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="weights dtype (default bf16)"
    )
    p.add_argument("--base", help="base model directory, overriding the one the run recorded")
    p.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default 2GB)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--no-verify", action="store_true", help="skip comparing adapter and merged logits")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..merge import merge

    result = merge(
        args.run_dir,
        args.output,
        args.dtype,
        args.base,
        args.max_shard_size,
        args.force,
        verify=not args.no_verify,
    )
    if result.max_logit_diff is not None:
        print(
            f"verified: largest logit difference adapter vs merged {result.max_logit_diff:.3g} "
            f"(tolerance {result.tolerance:.3g} for {args.dtype})"
        )
    print(f"merged ({result.kind}) -> {result.output.resolve()}")
    return 0
