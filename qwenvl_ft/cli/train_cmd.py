"""`qwenvl-ft train RECIPE [key=value ...]`: fine-tune as the recipe says.

Runs the same under `torchrun --nproc_per_node N -m qwenvl_ft train RECIPE` (multi-GPU, and
multi-node with --nnodes and the rendezvous flags). The data is checked before the model is
loaded; the output directory ends up holding the adapter or weights, the tokenizer and
processor, the resolved recipe, qwenvl_ft.json and loss.png.
"""

from __future__ import annotations

import argparse
import logging

from ..config import load_recipe


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune from a YAML recipe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/tiny/qwen2_5_vl_lora.yaml")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=100"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train import is_main_process, train

    # Under torchrun only rank 0 narrates.
    logging.basicConfig(
        level=logging.INFO if is_main_process() else logging.WARNING, format="[qwenvl-ft] %(message)s"
    )
    train(load_recipe(args.recipe, args.overrides))
    shutdown_distributed()  # after success only: on an error a barrier would wait for ranks that died
    return 0


def shutdown_distributed() -> None:
    """Tear the process group down before the interpreter does.

    Left to exit, a rank that finishes first closes its sockets while another rank's gloo/NCCL
    threads are still live, and that rank dies with `terminate called without an active exception`
    (SIGABRT) after a successful run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
