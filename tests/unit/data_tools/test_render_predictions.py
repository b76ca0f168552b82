"""render_predictions: reference and predicted boxes of prediction files drawn side by side."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "data_tools"))

import render_predictions  # noqa: E402

from qwenvl_ft.data.synthetic import write_grounding_set  # noqa: E402


def predictions(path: Path, data: Path, answers: list[str]) -> Path:
    """Prediction lines as `qwenvl-ft predict` writes them for a Qwen3-VL model ([0, 1000) boxes)."""
    lines = []
    for line, answer in zip(data.read_text().splitlines(), answers, strict=True):
        sample = json.loads(line)
        record = {
            "id": sample["id"],
            "prediction": answer,
            "reference": "",
            "reference_boxes": sample["objects"]["bbox"],
            "image_sizes": [[96, 96]],
            "family": "qwen3_vl",
            "resized_sizes": [[96, 96]],
        }
        lines.append(json.dumps(record) + "\n")
    path.write_text("".join(lines))
    return path


def test_two_columns_of_panels_with_the_boxes_where_they_are(tmp_path):
    data = write_grounding_set(tmp_path / "set", 2, seed=0, heldout=True)
    refs = [json.loads(line)["objects"]["bbox"][0] for line in data.read_text().splitlines()]
    exact = [f"[{', '.join(str(round(v / 96 * 1000)) for v in box)}]" for box in refs]
    before = predictions(tmp_path / "before.jsonl", data, ["I cannot tell.", "I cannot tell."])
    after = predictions(tmp_path / "after.jsonl", data, exact)
    out = tmp_path / "boxes.png"
    assert (
        render_predictions.main([str(data), str(before), str(after), "--rows", "2", "--out", str(out)]) == 0
    )

    sheet = np.asarray(Image.open(out).convert("RGB"))
    scale, title, gap, line = 3, render_predictions.TITLE_HEIGHT, 6, render_predictions.LINE
    side = 96 * scale
    assert sheet.shape == (2 * (side + title + gap) + title, 2 * side + gap, 3)
    for row, (x1, y1, _, _) in enumerate(refs):
        top = row * (side + title + gap) + title
        for column, left in enumerate((0, side + gap)):
            # Reference: green just outside the box; prediction (after only): red just inside it.
            assert tuple(sheet[top + y1 * scale - 1, left + x1 * scale + 5]) == render_predictions.REFERENCE
            inside = tuple(sheet[top + y1 * scale + line - 1, left + x1 * scale + 5])
            if column == 1:
                assert inside == render_predictions.PREDICTED
            else:
                assert inside != render_predictions.PREDICTED


def test_a_sample_missing_from_a_column_is_named(tmp_path, capsys):
    data = write_grounding_set(tmp_path / "set", 2, seed=0)
    full = predictions(tmp_path / "a.jsonl", data, ["[0, 0, 1, 1]"] * 2)
    short = tmp_path / "b.jsonl"
    short.write_text(full.read_text().splitlines()[1] + "\n")
    args = [str(data), str(full), str(short), "--out", str(tmp_path / "x.png")]
    assert render_predictions.main(args) == 1
    assert "is not in" in capsys.readouterr().err


def test_a_repeated_image_and_question_is_drawn_once(tmp_path):
    data = write_grounding_set(tmp_path / "set", 30, seed=0, heldout=True)  # 27 images: repeats
    lines = data.read_text().splitlines()
    preds = predictions(tmp_path / "p.jsonl", data, ["none"] * len(lines))
    out = tmp_path / "boxes.png"
    assert render_predictions.main([str(data), str(preds), "--rows", "30", "--out", str(out)]) == 0
    distinct = {(s["messages"][0]["content"], tuple(s["objects"]["bbox"][0])) for s in map(json.loads, lines)}
    rows = (Image.open(out).height - render_predictions.TITLE_HEIGHT + 6) // (96 * 3 + 16 + 6)
    assert rows == len(distinct) < 30
