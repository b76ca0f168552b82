"""`qwenvl-ft plan RECIPE [key=value ...] --gpu NAME`: will the recipe fit? Peak GPU memory per rank.

Exits 0 when it fits (or no GPU is named), 1 when it does not fit, 2 on an error.
"""

from __future__ import annotations

import argparse

from ..config import load_recipe


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="estimate peak GPU memory per rank and whether a recipe fits a GPU",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/qwen2_5_vl/7b_lora.yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. train.per_device_batch_size=4",
    )
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument(
        "--gpu",
        metavar="NAME",
        help="H100-80GB, H200-141GB, A100-80GB, A100-40GB, L40S-48GB, A10-24GB, RTX4090-24GB, V100-32GB",
    )
    gpu.add_argument(
        "--gpu-memory", type=float, metavar="GIB", help="GPU memory in GiB, for a GPU not listed"
    )
    p.add_argument(
        "--nproc", type=int, default=1, metavar="N", help="ranks that ZeRO / FSDP shard over (default 1)"
    )
    p.add_argument(
        "--config",
        metavar="PATH_OR_NAME",
        help="a config.json (or checkpoint folder), or a published name such as Qwen2.5-VL-7B-Instruct "
        "or qwen2_5_vl-7b; default: model.path's config.json, else the published config its name matches",
    )
    p.add_argument(
        "--images-per-sample",
        type=int,
        default=1,
        metavar="N",
        help="images at model.max_pixels per sample (default 1)",
    )
    p.set_defaults(func=plan)


def plan(args: argparse.Namespace) -> int:
    from ..plan import format_plan, plan_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    recipe = " ".join([args.recipe, *args.overrides])
    report = plan_recipe(
        cfg,
        recipe=recipe,
        nproc=args.nproc,
        config=args.config,
        images_per_sample=args.images_per_sample,
        gpu=args.gpu,
        gpu_memory=args.gpu_memory,
    )
    print(format_plan(report))
    return 1 if report.fits is False else 0
