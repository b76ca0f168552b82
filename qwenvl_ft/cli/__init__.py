"""The `qwenvl-ft` command: one subcommand per module, each a plain function over parsed arguments.

qwenvl-ft config show recipes/tiny/qwen2_5_vl_lora.yaml train.learning_rate=1e-5
qwenvl-ft make-tiny qwen2_5_vl runs/tiny-qwen2_5_vl
qwenvl-ft --verbose train RECIPE    # also print the third-party messages quiet.py filters out
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__, noise
from . import (
    chat_cmd,
    config_cmd,
    data_cmd,
    demo_cmd,
    eval_cmd,
    make_tiny_cmd,
    merge_cmd,
    plan_cmd,
    predict_cmd,
    quiet,
    train_cmd,
)

SUBCOMMANDS = (
    train_cmd,
    merge_cmd,
    chat_cmd,
    demo_cmd,
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
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    for command_parser in _subparsers(parser):
        # Also after the command (`qwenvl-ft train --verbose ...`); SUPPRESS keeps a top-level one.
        command_parser.add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


VERBOSE_HELP = f"also print the third-party warnings filtered out as harmless (or {quiet.VERBOSE_ENV}=1)"


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command and sub-command parser below `parser`."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += [child, *_subparsers(child)]
    return found


def main(argv: list[str] | None = None) -> int:
    """Run one command. Without `argv` the command line is the process's own (the `qwenvl-ft`
    script, `python -m qwenvl_ft`, each torchrun rank), and the process is quieted first
    (quiet.py); with `argv` (tests, scripts) the caller's imports, warnings and logging stay as
    they are."""
    from ..config import ConfigError

    args = build_parser().parse_args(argv)
    if argv is None:
        quiet.quiet_process(args)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as e:
        if (name := noise.kept_out(e)) is None:
            raise
        # quiet.needed_libraries missed a use: say so plainly rather than "not installed".
        print(
            f"qwenvl-ft {args.command}: error: this command was not expected to need {name}, so it was "
            "not loaded (qwenvl_ft/cli/quiet.py); please report it with the command line",
            file=sys.stderr,
        )
        return 2
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, NotImplementedError, OSError) as e:
        # User-facing errors: one clear line, no traceback.
        print(f"qwenvl-ft {args.command}: error: {e}", file=sys.stderr)
        return 2
