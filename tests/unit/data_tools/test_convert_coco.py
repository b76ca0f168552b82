"""convert_coco: COCO detection and RefCOCO referring annotations -> messages JSONL."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "data_tools"))

import convert_coco  # noqa: E402

from qwenvl_ft.data.readers import read_file  # noqa: E402

COCO = {
    "images": [
        {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
        {"id": 2, "file_name": "b.jpg", "width": 100, "height": 100},
        {"id": 3, "file_name": "empty.jpg", "width": 50, "height": 50},
    ],
    "annotations": [
        {"image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 40]},
        {"image_id": 1, "category_id": 3, "bbox": [100.5, 50, 20.25, 10]},
        {"image_id": 1, "category_id": 7, "bbox": [0, 0, 640, 480]},
        {"image_id": 2, "category_id": 3, "bbox": [5, 5, 90, 90]},
    ],
    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "person"}],
}
PROMPT = "<image>Locate every object in the image."
EXPECTED = [
    {
        "id": 1,
        "messages": [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": "<ref-object><bbox><bbox>, <ref-object><bbox>"},
        ],
        "images": ["imgs/a.jpg"],
        "objects": {
            "ref": ["person", "cat"],
            "bbox": [[10, 20, 40, 60], [0, 0, 640, 480], [100.5, 50, 120.75, 60]],
        },
    },
    {
        "id": 2,
        "messages": [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": "<ref-object><bbox>"},
        ],
        "images": ["imgs/b.jpg"],
        "objects": {"ref": ["cat"], "bbox": [[5, 5, 95, 95]]},
    },
]


def run(tmp_path, data, *args) -> tuple[int, list[dict], Path]:
    src, out = tmp_path / "in.json", tmp_path / "out.jsonl"
    src.write_text(json.dumps(data))
    rc = convert_coco.main([str(src), "--out", str(out), *args])
    lines = out.read_text().splitlines() if out.exists() else []
    return rc, [json.loads(line) for line in lines], out


def test_detection_exact_lines_and_skip_count(tmp_path, capsys):
    rc, lines, out = run(tmp_path, COCO, "--image-prefix", "imgs")
    assert rc == 0
    assert lines == EXPECTED
    summary = capsys.readouterr().out
    assert "images without annotations skipped: 1" in summary and "samples written: 2" in summary
    # The output is valid input for the toolkit's reader.
    convs = list(read_file(out))
    assert [s.kind for s in convs[0].turns[1].segments] == ["ref", "box", "box", "text", "ref", "box"]


def test_detection_custom_prompt_and_no_prefix():
    samples, stats = convert_coco.convert_detection(COCO, prompt="<image>Find all.")
    assert samples[0]["messages"][0]["content"] == "<image>Find all."
    assert samples[0]["images"] == ["a.jpg"]
    assert stats["images without annotations skipped"] == 1


@pytest.mark.parametrize(
    ("index", "change", "message"),
    [
        (
            2,
            {"bbox": [600, 0, 41, 10]},
            r"annotation 2: bbox \[600, 0, 41, 10\] lies outside its 640x480 image",
        ),
        (1, {"image_id": 99}, r"annotation 1: image_id 99 is not in 'images'"),
        (3, {"bbox": [5, 5, 0, 10]}, r"annotation 3: bbox \[5, 5, 0, 10\] has non-positive width or height"),
        (0, {"category_id": 42}, r"annotation 0: category_id 42 is not in 'categories'"),
    ],
)
def test_detection_errors_name_the_annotation(tmp_path, capsys, index, change, message):
    data = copy.deepcopy(COCO)
    data["annotations"][index].update(change)
    with pytest.raises(convert_coco.AnnotationError, match=message):
        convert_coco.convert_detection(data)
    rc, _, _ = run(tmp_path, data)
    assert rc == 1
    assert f"annotation {index}:" in capsys.readouterr().err


def test_skip_invalid_counts(tmp_path, capsys):
    data = copy.deepcopy(COCO)
    data["annotations"][3]["bbox"] = [5, 5, 0, 10]  # image 2 loses its only annotation
    rc, lines, _ = run(tmp_path, data, "--skip-invalid", "--image-prefix", "imgs")
    assert rc == 0 and lines == EXPECTED[:1]
    summary = capsys.readouterr().out
    assert "invalid annotations skipped: 1" in summary
    assert "images without annotations skipped: 2" in summary


REFCOCO = [
    {
        "file_name": "COCO_train2014_000000000009.jpg",
        "bbox": [10, 20, 30.5, 40],
        "sentences": ["the man on the left", {"sent": "left guy"}],
    }
]


def test_refcoco_one_sample_per_sentence(tmp_path):
    rc, lines, out = run(tmp_path, REFCOCO, "--refcoco", "--image-prefix", "coco/train2014")
    assert rc == 0
    image = "coco/train2014/COCO_train2014_000000000009.jpg"
    assert lines == [
        {
            "id": f"0-{j}",
            "messages": [
                {"role": "user", "content": f"<image>Locate: {sentence}"},
                {"role": "assistant", "content": "<ref-object><bbox>"},
            ],
            "images": [image],
            "objects": {"ref": [sentence], "bbox": [[10, 20, 40.5, 60]]},
        }
        for j, sentence in enumerate(["the man on the left", "left guy"])
    ]
    assert len(list(read_file(out))) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": [0, 0, -1, 5]}, r"annotation 1: bbox .* non-positive"),
        ({"width": 20, "height": 100}, r"annotation 1: bbox .* outside its 20x100 image"),
        ({"sentences": []}, r"annotation 1: 'sentences' must be a non-empty list"),
        ({"file_name": None}, r"annotation 1: needs a 'file_name'"),
    ],
)
def test_refcoco_errors_and_skip(change, message):
    data = [REFCOCO[0], {**REFCOCO[0], **change}]
    with pytest.raises(convert_coco.AnnotationError, match=message):
        convert_coco.convert_refcoco(data)
    samples, stats = convert_coco.convert_refcoco(data, skip_invalid=True)
    assert len(samples) == 2 and stats["invalid annotations skipped"] == 1


def test_image_entry_without_size_is_named():
    data = copy.deepcopy(COCO)
    del data["images"][1]["width"]
    with pytest.raises(convert_coco.AnnotationError, match=r"images\[1\]: missing 'width'"):
        convert_coco.convert_detection(data)
