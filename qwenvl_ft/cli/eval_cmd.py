"""`qwenvl-ft eval PREDICTIONS.jsonl [--task vqa|caption|ocr] [--output report.json]`: task metrics.

PREDICTIONS is what `qwenvl-ft predict` writes. Lines whose reference has boxes are scored as
grounding (IoU and accuracy at IoU 0.5 / 0.75, boxes read back to pixels in the generation's
own convention); the other lines by --task: vqa (normalised exact match, VQAv2 accuracy when a
line has several `answers`), caption (CIDEr-D, BLEU) or ocr (character error rate).
"""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score a predictions file (grounding, VQA, captions, OCR)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("predictions", help="JSONL written by qwenvl-ft predict")
    p.add_argument("--task", choices=["vqa", "caption", "ocr"], default="vqa", help="metric for text answers")
    p.add_argument("--output", help="write the report as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval import format_table
    from ..eval.report import read_predictions, score

    report = score(read_predictions(args.predictions), args.task)
    print(format_table(report))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0
