"""Readers: the same content in every format reads into the same neutral conversation; errors carry locations."""

from __future__ import annotations

import json

import pytest

from qwenvl_ft.data.conversation import Box, Segment, Turn
from qwenvl_ft.data.readers import DataError, detect_format, read_file

SAME_CONTENT = {
    "qwen_vl": {
        "id": "s1",
        "conversations": [
            {"from": "user", "value": "Picture 1: <img>img/cat.png</img>\nWhat is this?"},
            {"from": "assistant", "value": "A cat."},
        ],
    },
    "llava": {
        "id": "s1",
        "image": "img/cat.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"},
            {"from": "gpt", "value": "A cat."},
        ],
    },
    "messages": {
        "id": "s1",
        "messages": [
            {"role": "user", "content": "<image>What is this?"},
            {"role": "assistant", "content": "A cat."},
        ],
        "images": ["img/cat.png"],
    },
    "openai": {
        "id": "s1",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": "img/cat.png"},
                    {"type": "text", "text": "What is this?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        ],
    },
}


def expected(base) -> list[Turn]:
    return [
        Turn("user", [Segment("image", str(base / "img/cat.png")), Segment("text", "What is this?")]),
        Turn("assistant", [Segment("text", "A cat.")]),
    ]


@pytest.mark.parametrize("fmt", sorted(SAME_CONTENT))
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_every_format_reads_the_same(tmp_path, fmt, suffix):
    path = tmp_path / f"data{suffix}"
    record = SAME_CONTENT[fmt]
    path.write_text(json.dumps([record]) if suffix == ".json" else json.dumps(record) + "\n")
    (conv,) = read_file(path)
    assert detect_format(record) == fmt
    assert conv.turns == expected(tmp_path)
    assert conv.id == (f"{path}:1 (id s1)" if suffix == ".jsonl" else f"{path}[0] (id s1)")


def test_image_root_overrides_the_file_folder(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(SAME_CONTENT["messages"]) + "\n")
    (conv,) = read_file(path, image_root="/data/coco")
    assert conv.turns[0].segments[0] == Segment("image", "/data/coco/img/cat.png")


def test_grounding_in_qwen_vl_and_messages(tmp_path):
    qwen = {
        "conversations": [
            {"from": "user", "value": "Picture 1: <img>a.jpg</img>\nFind the cats"},
            {
                "from": "assistant",
                "value": "<ref>two cats</ref><box>(10,20),(300,400)</box><box>(500,20),(900,999)</box>",
            },
        ]
    }
    msgs = {
        "messages": [
            {"role": "user", "content": "<image>Find the cats"},
            {"role": "assistant", "content": "<ref-object><bbox><bbox>"},
        ],
        "images": ["a.jpg"],
        "objects": {
            "ref": ["two cats"],
            "bbox": [[10, 20, 300, 400], [500, 20, 900, 999]],
            "bbox_type": "norm1000",
        },
    }
    want = [
        Segment("ref", "two cats"),
        Segment("box", Box(10, 20, 300, 400, 0, True)),
        Segment("box", Box(500, 20, 900, 999, 0, True)),
    ]
    for rec in (qwen, msgs):
        path = tmp_path / "g.jsonl"
        path.write_text(json.dumps(rec) + "\n")
        (conv,) = read_file(path)
        assert conv.turns[1].segments == want


def test_pixel_boxes_and_second_image(tmp_path):
    rec = {
        "messages": [
            {"role": "user", "content": "<image><image>Which?"},
            {"role": "assistant", "content": "<ref-object> at <bbox>"},
        ],
        "images": ["a.png", "b.png"],
        "objects": {"ref": ["dog"], "bbox": [[1.5, 2, 30, 40]], "image_id": [1]},
    }
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (conv,) = read_file(path)
    assert conv.turns[1].segments == [
        Segment("ref", "dog"),
        Segment("text", " at "),
        Segment("box", Box(1.5, 2, 30, 40, 1)),
    ]


def test_quad_is_kept_as_text(tmp_path):
    rec = {
        "conversations": [
            {"from": "user", "value": "Read it"},
            {"from": "assistant", "value": "<ref>sign</ref><quad>(1,2),(3,4),(5,6),(7,8)</quad>"},
        ]
    }
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (conv,) = read_file(path)
    assert conv.turns[1].segments == [
        Segment("ref", "sign"),
        Segment("text", "<quad>(1,2),(3,4),(5,6),(7,8)</quad>"),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"messages": [{"role": "user", "content": "<image><image>hi"}], "images": ["a.png"]}',
            r"d.jsonl:2: 2 <image> placeholder\(s\) but 1 entries in 'images'",
        ),
        (
            '{"id": 7, "messages": [{"role": "robot", "content": "hi"}]}',
            r"d.jsonl:2 \(id 7\): unknown role 'robot'",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}', r"d.jsonl:2: not valid JSON"),
        ('{"text": "hi"}', r"d.jsonl:2: record has neither 'messages' nor 'conversations'"),
        (
            '{"messages": [{"role": "user", "content": "<bbox>"}], "objects": {"bbox": [[1, 2, 3]]}}',
            r"d.jsonl:2: bbox 0 must be \[x1, y1, x2, y2\], got \[1, 2, 3\]",
        ),
    ],
)
def test_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(SAME_CONTENT["messages"]) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        list(read_file(path))


def test_jsonl_is_read_line_by_line(tmp_path):
    from qwenvl_ft.config import DatasetSpec
    from qwenvl_ft.data.index import JsonlIndex
    from qwenvl_ft.data.sources import Source

    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(json.dumps(SAME_CONTENT["messages"] | {"id": i}) for i in range(1000)) + "\n\n")
    index = JsonlIndex(path)
    assert len(index) == 1000
    record, where = Source(DatasetSpec(path=str(path))).record(999)
    assert record["id"] == 999 and where == f"{path}:1000"


def test_unsupported_file_type(tmp_path):
    with pytest.raises(DataError, match=r"unsupported data file type '.csv'"):
        list(read_file(tmp_path / "x.csv"))
