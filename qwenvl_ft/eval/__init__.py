"""Evaluation: task metrics that score model predictions against references.

from qwenvl_ft.eval import grounding_scores, vqa_scores, caption_scores, ocr_scores, format_table
print(format_table({"vqa": vqa_scores(preds, answers)}))
"""

from __future__ import annotations

from .metrics import (
    bleu,
    bleu4,
    box_iou,
    caption_scores,
    caption_tokens,
    cer,
    cider_d,
    cider_d_per_sample,
    format_table,
    grounding_scores,
    levenshtein,
    normalize_answer,
    ocr_scores,
    vqa_accuracy,
    vqa_exact_match,
    vqa_scores,
)

__all__ = [
    "bleu",
    "bleu4",
    "box_iou",
    "caption_scores",
    "caption_tokens",
    "cer",
    "cider_d",
    "cider_d_per_sample",
    "format_table",
    "grounding_scores",
    "levenshtein",
    "normalize_answer",
    "ocr_scores",
    "vqa_accuracy",
    "vqa_exact_match",
    "vqa_scores",
]
