"""The `qwenvl-ft` command: one subcommand per module, each a plain function over parsed arguments.

qwenvl-ft config show recipes/tiny/qwen2_5_vl_lora.yaml train.learning_rate=1e-5
qwenvl-ft make-tiny qwen2_5_vl runs/tiny-qwen2_5_vl
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import (
    chat_cmd,
    config_cmd,
    data_cmd,
    eval_cmd,
    make_tiny_cmd,
    merge_cmd,
    plan_cmd,
    predict_cmd,
    train_cmd,
)

SUBCOMMANDS = (
    train_cmd,
    merge_cmd,
    chat_cmd,
    predict_cmd,
    eval_cmd,
    data_cmd,
    config_cmd,
    make_tiny_cmd,
    plan_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenvl-ft",
        description="Fine-tune the Qwen vision-language family (Qwen-VL, Qwen2-VL, Qwen2.5-VL, Qwen3-VL).",
        epilog="Run 'qwenvl-ft COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"qwenvl-ft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, NotImplementedError, OSError) as e:
        # User-facing errors: one clear line, no traceback.
        print(f"qwenvl-ft {args.command}: error: {e}", file=sys.stderr)
        return 2
