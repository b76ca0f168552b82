"""`qwenvl-ft config show RECIPE [key=value ...]`: print the resolved, validated recipe."""

from __future__ import annotations

import argparse

from ..config import dump_yaml, load_recipe


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="inspect recipes", description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved recipe (defaults filled, overrides applied)")
    show.add_argument("recipe", help="YAML recipe, e.g. recipes/tiny/qwen2_5_vl_lora.yaml")
    show.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.learning_rate=1e-5"
    )
    show.set_defaults(func=show_config)


def show_config(args: argparse.Namespace) -> int:
    cfg = load_recipe(args.recipe, args.overrides)
    print(f"# resolved from {args.recipe}" + (f" with {' '.join(args.overrides)}" if args.overrides else ""))
    print(dump_yaml(cfg), end="")
    return 0
