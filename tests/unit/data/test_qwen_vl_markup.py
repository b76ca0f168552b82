"""First-generation Qwen-VL data in every published spelling is read as Qwen-VL's own tokenizer and
finetune.py read it, or refused at its file:line; never trained as plain text by accident.

Qwen-VL's tokenizer (`tokenization_qwen.py`) replaces whatever stands between `<img>` and `</img>`
with the image, wherever the pair stands; "Picture N: " before it is ordinary text that the data
writes or not (two spellings exist), as is the newline after it. Expected ids are tiktoken's on the
text written by hand with the path replaced by the 256 image pads."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_encode import tiktoken_ids

from qwenvl_ft.data.conversation import Box, Segment
from qwenvl_ft.data.encode import encode
from qwenvl_ft.data.readers import DataError, detect_format, read_file
from qwenvl_ft.models import get_family
from qwenvl_ft.models.processor import VLProcessor


def read_one(tmp_path, record: dict):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (conv,) = read_file(path)
    return conv


def record(user: str, answer: str = "A cat.", roles=("user", "assistant")) -> dict:
    return {"conversations": [{"from": roles[0], "value": user}, {"from": roles[1], "value": answer}]}


@pytest.mark.parametrize(
    "spelling",
    ["Picture 1: <img>{p}</img>\nWhat is it?", "Picture 1:<img>{p}</img>\nWhat is it?",
     "<img>{p}</img>What is it?", "<img>{p}</img>\nWhat is it?", "Look: <img>{p}</img> and say."],
)  # fmt: skip
def test_every_image_spelling_renders_as_the_original_tokenizer_reads_it(tmp_path, real_tokenizer, spelling):
    Image.new("RGB", (60, 40), (10, 200, 10)).save(tmp_path / "cat.png")
    path = str(tmp_path / "cat.png")
    conv = read_one(tmp_path, record(spelling.format(p=path)))
    fam = get_family("qwen_vl")
    proc = VLProcessor.for_family(fam, real_tokenizer("qwen_vl"))
    enc = encode(conv, proc, [Image.open(path)])
    user = spelling.format(p="<imgpad>" * 256)
    text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
    )
    assert enc.input_ids == tiktoken_ids(text, fam.special_tokens)


def test_the_same_data_for_a_later_generation_drops_the_picture_numbering(tmp_path, real_tokenizer):
    """Qwen2-VL introduces an image by its vision tokens alone: 'Picture 1: ' is not written."""
    Image.new("RGB", (56, 56)).save(tmp_path / "cat.png")
    conv = read_one(tmp_path, record(f"Picture 1: <img>{tmp_path / 'cat.png'}</img>\nWhat is it?"))
    proc = VLProcessor.for_family(get_family("qwen2_vl"), real_tokenizer("qwen2_vl"))
    text = proc.tokenizer.decode(encode(conv, proc, [Image.open(tmp_path / "cat.png")]).input_ids)
    assert "<|vision_end|>What is it?" in text and "Picture" not in text


def test_human_and_gpt_roles_with_qwen_vl_markup_are_qwen_vl_data(tmp_path):
    rec = record("Picture 1: <img>cat.png</img>\nWhere is the cat?", "<ref>cat</ref><box>(1,2),(300,400)</box>",
                 roles=("human", "gpt"))  # fmt: skip
    assert detect_format(rec) == "qwen_vl"
    conv = read_one(tmp_path, rec)
    assert [s.kind for s in conv.turns[0].segments] == ["image", "text"]
    assert conv.turns[1].segments == [Segment("ref", "cat"), Segment("box", Box(1, 2, 300, 400, 0, True))]
    assert detect_format(record("<image>\nWhat?", roles=("human", "gpt"))) == "llava"  # LLaVA stays LLaVA


def test_spaces_inside_a_box_are_read(tmp_path):
    conv = read_one(tmp_path, record("Where?", "<box>( 12, 34 ) , (56,78)</box>"))
    assert conv.turns[1].segments == [Segment("box", Box(12, 34, 56, 78, 0, True))]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("<box>(0.12,0.3),(0.5,0.61)</box>", r"d.jsonl:1: turn 2: '<box>\(0.12,0.3\),\(0.5,0.61\)</box>': Qwen-VL "
         r"box coordinates are integers in \[0, 1000\), got 0.12, 0.3, 0.5, 0.61 \(normalised to \[0, 1\]\? multiply by 1000\)"),
        ("<box>(12.5,30),(500,610)</box>", r"integers in \[0, 1000\), got 12.5, 30, 500, 610$"),
        ("<box>(1,2)</box>", r"turn 2: malformed Qwen-VL markup '<box>\(1,2\)</box>': <box> without its pair"),
        ("<ref>cat at (1,2)", r"malformed Qwen-VL markup '<ref>cat at \(1,2\)': <ref> without its pair"),
    ],
)  # fmt: skip
def test_boxes_that_are_not_qwen_vl_boxes_are_refused(tmp_path, answer, message):
    with pytest.raises(DataError, match=message):
        read_one(tmp_path, record("Where?", answer))


def test_an_unclosed_image_is_refused(tmp_path):
    with pytest.raises(
        DataError, match=r"turn 1: malformed Qwen-VL markup '<img>cat.png What\?': <img> without"
    ):
        read_one(tmp_path, record("<img>cat.png What?"))
