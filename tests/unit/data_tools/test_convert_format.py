"""convert_format: qwen_vl <-> messages <-> llava through the neutral conversation."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "data_tools"))

import convert_format  # noqa: E402

from qwenvl_ft.data.readers import read_file  # noqa: E402


def write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def load(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(path.read_text())


def run(src: Path, out: Path, to: str, *args: str) -> int:
    return convert_format.main([str(src), "--to", to, "--out", str(out), *args])


@pytest.fixture
def grounding(tmp_path) -> Path:
    """A messages file with pixel boxes on real PNGs: a.png is 200x100, b.png is 100x200."""
    (tmp_path / "in" / "img").mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(tmp_path / "in" / "img" / "a.png")
    Image.new("RGB", (100, 200)).save(tmp_path / "in" / "img" / "b.png")
    records = [
        {
            "id": "g1",
            "messages": [
                {"role": "user", "content": "<image>Where is the dog?"},
                {"role": "assistant", "content": "<ref-object><bbox> and <ref-object><bbox>"},
            ],
            "images": ["img/a.png"],
            "objects": {
                "ref": ["dog", "everything"],
                "bbox": [[12.34, 12.34, 150.77, 99.96], [0, 0, 200, 100]],
            },
        },
        {
            "id": "g2",
            "messages": [
                {"role": "user", "content": "<image>First. <image>Second: find the cat."},
                {"role": "assistant", "content": "<ref-object><bbox>"},
            ],
            "images": ["img/a.png", "img/b.png"],
            "objects": {"ref": ["cat"], "bbox": [[10, 20, 50, 100]], "image_id": [1]},
        },
    ]
    return write(tmp_path / "in" / "data.jsonl", records)


def test_messages_pixels_to_qwen_vl(tmp_path, grounding, capsys):
    out = tmp_path / "out" / "qwen.json"
    assert run(grounding, out, "qwen_vl") == 0
    # 12.34/200 -> 62, 12.34/100 -> 123, 150.77/200 -> 754, 99.96/100 -> 1000 -> 999 (clamped);
    # b.png: 10/100 -> 100, 20/200 -> 100, 50/100 -> 500, 100/200 -> 500.
    assert load(out) == [
        {
            "id": "g1",
            "conversations": [
                {"from": "user", "value": "Picture 1: <img>../in/img/a.png</img>\nWhere is the dog?"},
                {
                    "from": "assistant",
                    "value": "<ref>dog</ref><box>(62,123),(754,999)</box> and "
                    "<ref>everything</ref><box>(0,0),(999,999)</box>",
                },
            ],
        },
        {
            "id": "g2",
            "conversations": [
                {
                    "from": "user",
                    "value": "Picture 1: <img>../in/img/a.png</img>\nFirst. "
                    "Picture 2: <img>../in/img/b.png</img>\nSecond: find the cat.",
                },
                {"from": "assistant", "value": "<ref>cat</ref><box>(100,100),(500,500)</box>"},
            ],
        },
    ]
    assert "2 samples, 3 images, 0 videos, 3 boxes" in capsys.readouterr().out
    convs = list(read_file(out))  # valid input, and the relative paths resolve to the same files
    assert Path(convs[1].turns[0].segments[2].value).resolve() == (tmp_path / "in/img/b.png").resolve()


QWEN = [
    {
        "id": "q1",
        "conversations": [
            {"from": "system", "value": "You are helpful."},
            {"from": "user", "value": "Picture 1: <img>img/a.png</img>\nFind the cats"},
            {
                "from": "assistant",
                "value": "<ref>two cats</ref><box>(10,20),(300,400)</box><box>(500,20),(900,999)</box>",
            },
            {"from": "user", "value": "Picture 2: <img>img/b.png</img>\nAnd here?"},
            {"from": "assistant", "value": "<ref>a dog</ref><box>(0,0),(999,999)</box> only."},
        ],
    },
    {
        "id": "q2",
        "conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello."}],
    },
]


def test_qwen_vl_messages_qwen_vl_round_trip(tmp_path):
    # No image files exist: [0, 1000) boxes stay normalized, so no image is opened.
    src = write(tmp_path / "data" / "q.json", QWEN)
    mid, back = tmp_path / "other" / "mid.jsonl", tmp_path / "data" / "back.json"
    assert run(src, mid, "messages") == 0
    assert load(mid)[0] == {
        "id": "q1",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "<image>Find the cats"},
            {"role": "assistant", "content": "<ref-object><bbox><bbox>"},
            {"role": "user", "content": "<image>And here?"},
            {"role": "assistant", "content": "<ref-object><bbox> only."},
        ],
        "images": ["../data/img/a.png", "../data/img/b.png"],
        "objects": {
            "ref": ["two cats", "a dog"],
            "bbox": [[10, 20, 300, 400], [500, 20, 900, 999], [0, 0, 999, 999]],
            "bbox_type": "norm1000",
            "image_id": [0, 0, 1],
        },
    }
    assert run(mid, back, "qwen_vl") == 0
    assert load(back) == QWEN

    def norm(convs):
        for c in convs:
            for t in c.turns:
                for s in t.segments:
                    if s.kind == "image":
                        s.value = os.path.normpath(s.value)
        return [(convert_format.original_id(c, i), c.turns) for i, c in enumerate(convs)]

    assert norm(read_file(back)) == norm(read_file(src)) == norm(read_file(mid))


LLAVA = [
    {
        "id": "l1",
        "image": "img/a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"},
            {"from": "gpt", "value": "A cat."},
        ],
    },
    {
        "id": "l2",
        "image": ["img/a.png", "img/b.png"],
        "conversations": [
            {"from": "human", "value": "<image>\n<image>\nCompare them."},
            {"from": "gpt", "value": "Same."},
        ],
    },
]


def test_llava_messages_llava(tmp_path):
    src = write(tmp_path / "llava.json", LLAVA)
    mid, back = tmp_path / "mid.jsonl", tmp_path / "back.json"
    assert run(src, mid, "messages") == 0
    assert load(mid) == [
        {
            "id": "l1",
            "messages": [
                {"role": "user", "content": "<image>What is this?"},
                {"role": "assistant", "content": "A cat."},
            ],
            "images": ["img/a.png"],
        },
        {
            "id": "l2",
            "messages": [
                {"role": "user", "content": "<image><image>Compare them."},
                {"role": "assistant", "content": "Same."},
            ],
            "images": ["img/a.png", "img/b.png"],
        },
    ]
    assert run(mid, back, "llava") == 0
    assert load(back) == LLAVA
    assert [c.turns for c in read_file(back)] == [c.turns for c in read_file(src)]


def test_llava_refuses_boxes_unless_as_text(tmp_path, grounding, capsys):
    out = tmp_path / "out" / "llava.json"
    assert run(grounding, out, "llava") == 1
    err = capsys.readouterr().err
    assert "(id g1)" in err and "llava has no syntax for ref segments" in err and "--boxes-as-text" in err
    assert not out.exists()
    assert run(grounding, out, "llava", "--boxes-as-text") == 0
    first = load(out)[0]
    assert first["image"] == "../in/img/a.png"
    assert first["conversations"][1] == {
        "from": "gpt",
        "value": "<ref>dog</ref><box>(62,123),(754,999)</box> and <ref>everything</ref><box>(0,0),(999,999)</box>",
    }
    assert len(list(read_file(out))) == 2


def test_pixel_box_with_missing_image_is_a_clear_error(tmp_path, grounding, capsys):
    (tmp_path / "in" / "img" / "a.png").unlink()
    assert run(grounding, tmp_path / "q.json", "qwen_vl") == 1
    err = capsys.readouterr().err
    assert "(id g1): cannot read the size of" in err and "a.png" in err


def test_literal_placeholder_in_text_is_refused(tmp_path, capsys):
    src = write(
        tmp_path / "q.json", [{"id": "x", "conversations": [{"from": "user", "value": "say <bbox>"}]}]
    )
    assert run(src, tmp_path / "m.jsonl", "messages") == 1
    assert "(id x): text contains a literal <bbox>" in capsys.readouterr().err
