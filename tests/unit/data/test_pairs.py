"""Preference pairs: both layouts read to the same encoding, the check reports bad pairs by
file:line, and the prompt's tokens and pixels are kept once per pair."""

from __future__ import annotations

import json

import pytest
import torch

from qwenvl_ft.config import DatasetSpec
from qwenvl_ft.data.pairs import PairCollator, PairSource, check_pair_specs, load_and_encode
from qwenvl_ft.data.synthetic import draw_grid_shapes
from qwenvl_ft.models import get_family
from qwenvl_ft.tiny import make_tiny


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs-model")
    family = get_family("qwen3_vl")
    make_tiny(family, path, real_vocab=False, min_pixels=9216, max_pixels=9216)
    return family.load_processor(str(path))


@pytest.fixture()
def image(tmp_path):
    picture, _ = draw_grid_shapes(7, 96, 3, 1)
    picture.save(tmp_path / "a.png")
    return "a.png"


def write(tmp_path, records) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def encodings(path, processor):
    source = PairSource(DatasetSpec(path=path))
    return [load_and_encode(source.pair(i), processor) for i in range(len(source))]


def test_both_layouts_read_to_the_same_encoding(tmp_path, processor, image):
    question, good, bad = "Where is the shape?", "Top left.", "Bottom right."
    ours = {
        "messages": [{"role": "user", "content": f"<image>{question}"}],
        "images": [image],
        "chosen": good,
        "rejected": bad,
    }
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    trl_explicit = {
        "images": [image],
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": good}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": bad}]}],
    }
    trl_implicit = {  # the prompt as the shared leading messages
        "images": [image],
        "chosen": [*prompt, {"role": "assistant", "content": good}],
        "rejected": [*prompt, {"role": "assistant", "content": bad}],
    }
    a, b, c = encodings(write(tmp_path, [ours, trl_explicit, trl_implicit]), processor)
    for other in (b, c):
        assert other.prompt_ids == a.prompt_ids and other.prompt_types == a.prompt_types
        assert (other.chosen_ids, other.chosen_labels) == (a.chosen_ids, a.chosen_labels)
        assert (other.rejected_ids, other.rejected_labels) == (a.rejected_ids, a.rejected_labels)
        assert torch.equal(other.media["pixel_values"], a.media["pixel_values"])
    tok = processor.tokenizer
    assert tok.decode(a.chosen_ids).startswith(good) and tok.decode(a.rejected_ids).startswith(bad)
    supervised = [label != -100 for label in a.chosen_labels]
    assert supervised == [True] * (len(supervised) - 1) + [False]  # the answer and <|im_end|>, not the "\n"
    assert 1 in a.prompt_types  # the image tokens are in the prompt, once


def test_collated_rows_are_prompt_plus_each_answer(tmp_path, processor, image):
    records = [
        {"messages": [{"role": "user", "content": f"<image>q{i}"}], "images": [image], "chosen": "yes" * (i + 1),
         "rejected": "no"}
        for i in range(2)
    ]  # fmt: skip
    encoded = encodings(write(tmp_path, records), processor)
    batch = PairCollator(processor.tokenizer.pad_token_id)(encoded)
    assert batch["input_ids"].shape[0] == 4
    for row, (e, ids) in enumerate(
        [(e, e.chosen_ids) for e in encoded] + [(e, e.rejected_ids) for e in encoded]
    ):
        n = len(e.prompt_ids) + len(ids)
        assert batch["input_ids"][row, :n].tolist() == e.prompt_ids + ids
        assert batch["attention_mask"][row].sum() == n
        assert (batch["labels"][row, : len(e.prompt_ids)] == -100).all()
    per_pair = encoded[0].media["pixel_values"].shape[0]
    assert batch["pixel_values"].shape[0] == 4 * per_pair  # each row's image (stored once per pair)
    assert torch.equal(batch["pixel_values"][:per_pair], batch["pixel_values"][2 * per_pair : 3 * per_pair])


def test_pair_check_reports_each_bad_pair_by_file_and_line(tmp_path, processor, image):
    user = {"role": "user", "content": "<image>Where?"}
    good = {"messages": [user], "images": [image], "chosen": "here", "rejected": "there"}
    records = [
        good,
        {"messages": [user], "images": [image], "chosen": "here"},  # 2: no rejected
        {"messages": [user], "images": [image], "chosen": "here", "rejected": "here"},  # 3: identical
        {"messages": [user, {"role": "assistant", "content": "hm"}], "images": [image], "chosen": "a",
         "rejected": "b"},  # 4: the prompt ends with an assistant turn
        {"messages": [user], "images": ["missing.png"], "chosen": "a", "rejected": "b"},  # 5: unreadable image
        {"images": [image], "chosen": [user, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "<image>Other?"}, {"role": "assistant", "content": "b"}]},  # 6
        {"messages": [user], "images": [image], "chosen": {"content": "<bbox>", "objects": {"bbox": [[0, 0, 500, 9]]}},
         "rejected": "b"},  # 7: box off the 96x96 image
        {"messages": [user], "images": [image], "chosen": "a" * 400, "rejected": "b"},  # 8: over max_length
    ]  # fmt: skip
    path = write(tmp_path, records)
    _, report = check_pair_specs([DatasetSpec(path=path)], processor, max_length=128)
    errors = {p.where: p.message for p in report.errors}
    want = {
        2: "needs both 'chosen' and 'rejected'",
        3: "the same answer",
        4: "must end with a user turn",
        5: "missing.png",
        6: "do not share the same prompt",
        7: "lies outside",
    }
    assert sorted(errors) == [f"{path}:{line}" for line in sorted(want)]
    for line, text in want.items():
        assert text in errors[f"{path}:{line}"], errors[f"{path}:{line}"]
    assert [p.where for p in report.dropped] == [f"{path}:8"]
    assert "longer answer" in report.dropped[0].message
    assert [(p.source, p.index) for p in report.plan] == [(0, 0)]
    (enc,) = encodings(write(tmp_path, [good]), processor)
    longer = max(len(enc.chosen_ids), len(enc.rejected_ids))
    assert report.plan[0].length == len(enc.prompt_ids) + longer  # the budget: prompt + longer answer
