"""The synthetic grounding task (`qwenvl-ft data synth`): each box is the shape drawn, seeds stay apart."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from qwenvl_ft.cli import main
from qwenvl_ft.data.readers import read_file
from qwenvl_ft.data.synthetic import BACKGROUND, COLOURS, SHAPES, write_grounding_set

QUESTION = re.compile(r"<image>Where is the (\w+) (\w+)\?")


def samples(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_box_is_the_shape_drawn(tmp_path):
    path = write_grounding_set(tmp_path, 90, seed=3)
    seen = Counter()
    for s in samples(path):
        pixels = np.asarray(Image.open(tmp_path / s["images"][0]).convert("RGB"))
        assert pixels.shape == (96, 96, 3)
        colour, shape = QUESTION.fullmatch(s["messages"][0]["content"]).groups()
        drawn = (pixels != BACKGROUND).any(-1)
        ys, xs = np.nonzero(drawn)
        # The box (x2, y2 exclusive) is exactly what is not background, all in the named colour.
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == s["objects"]["bbox"][0]
        assert (pixels[drawn] == COLOURS[colour]).all()
        x1, y1, x2, y2 = s["objects"]["bbox"][0]
        assert x1 // 32 == (x2 - 1) // 32 and y1 // 32 == (y2 - 1) // 32  # inside one cell of the grid
        assert shape in SHAPES
        seen.update([colour, shape, (x1 // 32, y1 // 32)])
    assert all(seen[c] for c in COLOURS) and all(seen[s] for s in SHAPES)
    assert len([k for k in seen if isinstance(k, tuple)]) == 9  # every cell is used


def test_held_out_sets_share_no_image_with_training_sets(tmp_path):
    def images(name, seed, heldout, count=150):
        path = write_grounding_set(tmp_path / name, count, seed=seed, heldout=heldout)
        kinds = Counter((s["messages"][0]["content"], tuple(s["objects"]["bbox"][0])) for s in samples(path))
        return {(tmp_path / name / s["images"][0]).read_bytes() for s in samples(path)}, kinds

    train, train_kinds = images("train", 1, False, count=800)  # enough draws to meet all 108
    again, _ = images("again", 1, False, count=800)
    other, _ = images("other", 2, False)
    test, test_kinds = images("test", 2, True)
    assert train == again and train != other  # deterministic for a seed
    assert not train & test and not other & test
    # 135 images exist (15 kinds of shape in 9 cells): 108 for training, 27 held out.
    assert len(train_kinds) == 108 and len(test_kinds) == 27
    # Each colour, shape and cell of the held-out set is trained on, in other combinations.
    for question, box in test_kinds:
        colour, shape = QUESTION.fullmatch(question).groups()
        assert any(colour in q and shape in q for q, _ in train_kinds)
        assert any(b == box for _, b in train_kinds)


def test_the_set_reads_as_a_grounding_conversation(tmp_path):
    path = write_grounding_set(tmp_path, 3, seed=0)
    for conv, raw in zip(read_file(path), samples(path), strict=True):
        user, assistant = conv.turns
        assert [s.kind for s in user.segments] == ["image", "text"]
        (box,) = [s.value for s in assistant.segments if s.kind == "box"]
        assert list(box.pixels((96, 96))) == raw["objects"]["bbox"][0]


def test_data_synth_command(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "set"), "--count", "5", "--seed", "7"]) == 0
    assert len(samples(tmp_path / "set" / "data.jsonl")) == 5
    assert len(list((tmp_path / "set" / "img").glob("*.png"))) == 5
    assert "5 training samples, seed 7" in capsys.readouterr().out
    with pytest.raises(ValueError, match="count must be in"):
        write_grounding_set(tmp_path / "none", 0, seed=0)
