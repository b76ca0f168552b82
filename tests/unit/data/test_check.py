"""The data check: each bad sample gets its specific message with its location; clean data passes;
the plan (drop / truncate) and the cache behave; the dataset reproduces the checked lengths."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from qwenvl_ft.config import DataConfig, DatasetSpec
from qwenvl_ft.data.check import check_sources
from qwenvl_ft.data.collate import PaddingCollator, padding_efficiency
from qwenvl_ft.data.dataset import build_dataset
from qwenvl_ft.data.encode import IGNORE
from qwenvl_ft.data.readers import DataError
from qwenvl_ft.data.sources import Source, mix
from qwenvl_ft.models import get_family
from qwenvl_ft.models.processor import VLProcessor

REPO = Path(__file__).resolve().parents[3]
BAD = REPO / "tests/data/bad_samples/samples.jsonl"
DEMO = REPO / "data/demo/demo.jsonl"

# line -> the messages the check must give for it (see tests/data/bad_samples/README.md)
EXPECTED_ERRORS = {
    2: ["not valid JSON: Expecting ',' delimiter (column 1)"],
    3: [
        "turn 1: expected a user turn, got assistant",
        "turn 2: expected an assistant turn, got user",
        "the last turn is a user turn: a sample must end with an assistant answer",
    ],
    4: [f"{BAD.parent}/images/missing.png: image file not found"],
    5: [f"{BAD.parent}/images/not_an_image.png: not a readable image"],
    6: [f"{BAD.parent}/images/corrupt.png: corrupt image (image file is truncated)"],
    7: ["2 <image> placeholder(s) but 1 entries in 'images'"],
    8: ["box (10, 10, 500, 20) lies outside the 64x48 image"],
    9: ["box (40, 10, 20, 30) has x1 >= x2 or y1 >= y2 (expected x1, y1, x2, y2 with x1 < x2, y1 < y2)"],
    10: ["turn 2: empty assistant turn"],
    12: ["the last turn is a user turn: a sample must end with an assistant answer"],
}


@pytest.fixture(scope="module")
def proc(real_tokenizer):
    return VLProcessor.for_family(get_family("qwen2_vl"), real_tokenizer("qwen2_vl"))


def test_bad_corpus_gets_one_specific_message_per_problem(proc):
    report = check_sources([Source(DatasetSpec(path=str(BAD)))], proc, max_length=200, progress=False)
    got: dict[int, list[str]] = {}
    for p in report.errors:
        line = int(p.where.split(":")[1].split(" ")[0])
        assert p.where.startswith(f"{BAD}:{line}")
        got.setdefault(line, []).append(p.message)
    assert got == EXPECTED_ERRORS
    assert [(p.where, p.message) for p in report.dropped] == [
        (f"{BAD}:11", "330 tokens > max_length 200: dropped")
    ]
    assert [(p.source, p.index) for p in report.plan] == [(0, 0)]  # only the clean line is usable
    assert report.samples == 12 and not report.ok


def test_clean_demo_data_passes(proc):
    report = check_sources([Source(DatasetSpec(path=str(DEMO)))], proc, max_length=2048, progress=False)
    assert report.ok and len(report.plan) == 8 and not report.dropped


def test_truncate_keeps_whole_turns_ending_with_an_answer(tmp_path, proc):
    turns = []
    for k in range(4):
        turns += [
            {"role": "user", "content": ("<image>" if k == 0 else "") + f"Question {k}?"},
            {"role": "assistant", "content": "answer " * 40},
        ]
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"messages": turns, "images": [str(BAD.parent / "images/good.png")]}) + "\n")
    full = check_sources([Source(DatasetSpec(path=str(path)))], proc, 10_000, progress=False).plan[0]
    report = check_sources(
        [Source(DatasetSpec(path=str(path)))], proc, full.length - 50, "truncate", progress=False
    )
    (item,) = report.plan
    assert item.turns == 6 and item.length < full.length - 50 and item.images == 1
    assert report.truncated[0].message.startswith(f"{full.length} tokens: kept the first 6 turns")
    # Too short for even the first exchange: dropped, not cut inside it.
    tiny = check_sources([Source(DatasetSpec(path=str(path)))], proc, 40, "truncate", progress=False)
    assert not tiny.plan and len(tiny.dropped) == 1


def test_check_is_cached_by_file_fingerprint(tmp_path, proc):
    path = tmp_path / "d.jsonl"
    path.write_text(DEMO.read_text().replace('"images/', f'"{DEMO.parent}/images/'))
    cache = tmp_path / "cache"
    first = check_sources([Source(DatasetSpec(path=str(path)))], proc, 2048, cache_dir=cache, progress=False)
    again = check_sources([Source(DatasetSpec(path=str(path)))], proc, 2048, cache_dir=cache, progress=False)
    assert not first.cached and again.cached and again.plan == first.plan
    os.utime(path, ns=(1, 1))  # a changed file is checked again
    assert not check_sources(
        [Source(DatasetSpec(path=str(path)))], proc, 2048, cache_dir=cache, progress=False
    ).cached
    # ...and so is the same file under other settings
    assert not check_sources(
        [Source(DatasetSpec(path=str(path)))], proc, 1024, cache_dir=cache, progress=False
    ).cached


def test_training_refuses_data_with_errors(proc):
    data = DataConfig(train=[DatasetSpec(path=str(BAD))], max_length=200)
    with pytest.raises(
        DataError, match=r"the data check of data.train found 12 error\(s\); fix them before training"
    ):
        build_dataset(data, proc, seed=0, cache_dir=None, progress=False)


def test_dataset_and_collator(proc):
    data = DataConfig(train=[DatasetSpec(path=str(DEMO))], max_length=2048)
    ds, report = build_dataset(data, proc, seed=0, cache_dir=None, progress=False)
    assert len(ds) == 8 and sorted(ds.lengths()) == sorted(p.length for p in report.plan)
    samples = [ds[i] for i in range(3)]
    batch = PaddingCollator(pad_token_id=151643, pad_to_multiple_of=8)(samples)
    longest = max(len(s.input_ids) for s in samples)
    assert batch["input_ids"].shape == (3, -(-longest // 8) * 8)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        assert batch["input_ids"][row, :n].tolist() == s.input_ids
        assert (batch["input_ids"][row, n:] == 151643).all() and (batch["labels"][row, n:] == IGNORE).all()
        assert batch["attention_mask"][row].sum() == n
    assert batch["image_grid_thw"].shape == (3, 3)
    patches = int(batch["image_grid_thw"].prod(dim=1).sum())
    assert batch["pixel_values"].shape[0] == patches
    assert padding_efficiency(batch) == pytest.approx(
        sum(len(s.input_ids) for s in samples) / batch["input_ids"].numel()
    )
    # The image tokens in the ids equal the visual features the model will produce.
    n_pad = int((batch["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_pad == patches // 4 == int(batch["mm_token_type_ids"].sum())
    assert torch.equal(
        batch["labels"] != IGNORE, (batch["labels"] != IGNORE) & (batch["attention_mask"] == 1)
    )


def test_mix_weights(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    line = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    a.write_text((line + "\n") * 10)
    b.write_text((line + "\n") * 4)
    sources = [Source(DatasetSpec(path=str(a), weight=0.5)), Source(DatasetSpec(path=str(b), weight=2.0))]
    order = [tuple(map(int, r)) for r in mix(sources, seed=3)]
    assert sum(s == 0 for s, _ in order) == 5 and sum(s == 1 for s, _ in order) == 8
    assert sorted(i for s, i in order if s == 1) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert np.array_equal(mix(sources, seed=3), mix(sources, seed=3))
    assert not np.array_equal(mix(sources, seed=3), mix(sources, seed=4))
    # The order of earlier versions, which mixed (source, index) tuples: runs keep their data order.
    rng = random.Random(3)
    tuples = [(1, i) for _ in range(2) for i in range(4)]
    tuples = [(0, i) for i in sorted(rng.sample(range(10), 5))] + tuples
    rng.shuffle(tuples)
    assert order == tuples
