"""Scoring a predictions file: boxes read back with each generation's convention, by hand."""

from __future__ import annotations

import json

import pytest

from qwenvl_ft.cli import main
from qwenvl_ft.eval.report import read_predictions, score


def line(family, prediction, reference="", boxes=(), size=(160, 120), resized=(168, 112), **extra):
    return {
        "id": prediction,
        "family": family,
        "prediction": prediction,
        "reference": reference,
        "reference_boxes": [list(b) for b in boxes],
        "image_sizes": [list(size)],
        "resized_sizes": [list(resized)],
        **extra,
    }


def test_boxes_are_read_in_each_generation_convention():
    records = [
        # Qwen2-VL, [0, 1000): (300,400),(600,900) of 160x120 is (48, 48)-(96, 108).
        line("qwen2_vl", "<|box_start|>(300,400),(600,900)<|box_end|>", boxes=[(48, 48, 96, 108)]),
        # Qwen2.5-VL, pixels of the 224x112 resized image: (112,56)-(224,112) of 200x100 is (100,50)-(200,100);
        # against (150,50)-(250,100): overlap 50x50 = 2500, union 5000 + 5000 - 2500 -> IoU 1/3.
        line(
            "qwen2_5_vl",
            "<|box_start|>(112,56),(224,112)<|box_end|>",
            boxes=[(150, 50, 250, 100)],
            size=(200, 100),
            resized=(224, 112),
        ),
        # Qwen3-VL: plain [x1, y1, x2, y2] in [0, 1000).
        line("qwen3_vl", "It is at [0, 0, 500, 500].", boxes=[(0, 0, 80, 60)]),
        line("qwen2_vl", "no box here", boxes=[(0, 0, 10, 10)]),
    ]
    g = score(records)["grounding"]
    assert g["n"] == 4 and g["no_box"] == 1
    assert g["miou"] == pytest.approx((1 + 1 / 3 + 1 + 0) / 4)
    assert g["acc@0.5"] == pytest.approx(2 / 4)


def test_text_tasks():
    recs = [line("qwen2_vl", "Two", "2"), line("qwen2_vl", "a cat", "dog")]
    assert score(recs, "vqa")["vqa"]["exact_match"] == pytest.approx(0.5)
    ocr = score([line("qwen2_vl", "kitten", "sitting")], "ocr")["ocr"]
    assert ocr["cer"] == pytest.approx(3 / 7)
    with pytest.raises(ValueError, match="unknown task 'bleu'"):
        score(recs, "bleu")


def test_cli_report_and_bad_line(tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps(line("qwen2_vl", "Two", "2")) + "\n")
    assert main(["eval", str(preds), "--output", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["vqa"]["exact_match"] == 1.0
    assert "vqa.exact_match" in capsys.readouterr().out
    preds.write_text(json.dumps(line("qwen2_vl", "x", "y")) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"p.jsonl:2: not a JSON line"):
        read_predictions(preds)
