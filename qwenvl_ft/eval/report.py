"""Scores for a predictions file (`qwenvl-ft predict`'s output): one report per task.

Task per line: `grounding` when the reference has boxes (predicted boxes are parsed with the
generation's own convention back to pixels of the original image, as training wrote them),
else the `--task` given for text answers: `vqa`, `caption` or `ocr`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..models import get_family
from .metrics import caption_scores, grounding_scores, ocr_scores, vqa_scores

TEXT_TASKS = ("vqa", "caption", "ocr")


def read_predictions(path: str | Path) -> list[dict]:
    lines = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line: {e}") from None
    if not lines:
        raise ValueError(f"{path}: no predictions")
    return lines


def answer(rec: dict) -> str:
    """The prediction without reasoning: `predict` writes it apart already; a think block that a
    prediction still opens with (another tool's file) is cut off here, never scored."""
    family = get_family(rec["family"]) if "family" in rec else None
    if family is None or not family.thinking:
        return rec["prediction"]
    return family.chat.think.split(rec["prediction"])[1]


def predicted_boxes(rec: dict) -> list[tuple[float, float, float, float]]:
    """Boxes written in the answer, in pixels of the sample's first image."""
    family = get_family(rec["family"])
    return family.parse_boxes(answer(rec), tuple(rec["image_sizes"][0]), tuple(rec["resized_sizes"][0]))


def score(records: list[dict], text_task: str = "vqa") -> dict:
    """{task: metrics} over the records; grounding for lines with reference boxes."""
    if text_task not in TEXT_TASKS:
        raise ValueError(f"unknown task {text_task!r}: choose one of {', '.join(TEXT_TASKS)}")
    grounding = [r for r in records if r.get("reference_boxes")]
    text = [r for r in records if not r.get("reference_boxes")]
    report: dict = {}
    if grounding:
        report["grounding"] = grounding_scores(
            [predicted_boxes(r) for r in grounding], [r["reference_boxes"] for r in grounding]
        )
    if text:
        preds = [answer(r) for r in text]
        refs = [r["reference"] for r in text]
        if text_task == "vqa":
            report["vqa"] = vqa_scores(preds, [r.get("answers") or r["reference"] for r in text])
        elif text_task == "caption":
            report["caption"] = caption_scores(preds, [r.get("answers") or [r["reference"]] for r in text])
        else:
            report["ocr"] = ocr_scores(preds, refs)
    return report
