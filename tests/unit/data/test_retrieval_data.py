"""Retrieval data: every layout reads into the same sample, bad samples are errors at file:line (id),
and the check's token counts are what training encodes (the encoder itself is pinned against the
official code in tests/unit/test_retrieval_official.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from qwenvl_ft.cli import main
from qwenvl_ft.config import DatasetSpec
from qwenvl_ft.data.checking import check_datasets
from qwenvl_ft.data.readers import DataError
from qwenvl_ft.data.retrieval import (
    Item,
    RetrievalRules,
    RetrievalSource,
    encode_input,
    pick_negatives,
    sequences,
    to_retrieval,
)
from qwenvl_ft.models import get_family
from qwenvl_ft.models.processor import VLProcessor
from qwenvl_ft.models.qwen3_vl_retrieval import MAX_PIXELS, MIN_PIXELS

BASE = Path("/data")


def test_every_layout_reads_into_the_same_sample():
    expected = (
        Item(["a red circle"]),
        Item([], ["/data/img/1.png"]),
        [Item(["a blue square"]), Item(["nothing"], ["/data/img/2.png"])],
    )
    ours = {
        "query": "a red circle",
        "positive": {"image": "img/1.png"},
        "negatives": ["a blue square", {"text": "nothing", "image": ["img/2.png"]}],
    }
    flag = {"query": "a red circle", "pos": [{"image": "img/1.png"}], "neg": ours["negatives"]}
    st = {"anchor": "a red circle", "positive": {"image": "img/1.png"}, "negative_2": ours["negatives"][1],
          "negative_1": "a blue square"}  # fmt: skip
    swift = {
        "messages": [{"role": "user", "content": "a red circle"}],
        "positive_messages": [[{"role": "user", "content": "<image>"}]],
        "positive_images": [["img/1.png"]],
        "negative_messages": [
            [{"role": "user", "content": "a blue square"}],
            [{"role": "user", "content": "<image>nothing"}],
        ],
        "negative_images": [[], ["img/2.png"]],
    }
    for record in (ours, flag, st, swift):
        s = to_retrieval(record, "d.jsonl:1", BASE)
        assert (s.query, s.positive, s.negatives) == expected, record


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([1, 2], "a retrieval sample must be a JSON object, got list"),
        (
            {"id": "x", "query": "q"},
            "d.jsonl:3 (id x): a retrieval sample needs 'query' and 'positive': positive missing",
        ),
        (
            {"query": "q", "positive": "p", "negatives": ["n", "p"]},
            "d.jsonl:3: negative 2 is the positive itself",
        ),
        ({"query": "q", "pos": ["a", "b"]}, "'pos' lists 2 positives; one per line"),
        ({"query": "q", "positive": {"txt": "p"}}, "positive has unknown field(s) txt"),
        ({"query": 3, "positive": "p"}, "query must be a string or an object"),
        (
            {
                "messages": [{"role": "user", "content": "<image>q"}],
                "images": [],
                "positive_messages": [[{"role": "user", "content": "p"}]],
            },
            "query: 1 <image> tag(s) but 0 image(s)",
        ),
    ],
)
def test_bad_samples_are_errors_at_their_line(record, message):
    with pytest.raises(DataError) as e:
        to_retrieval(record, "d.jsonl:3", BASE)
    assert message in str(e.value)


@pytest.fixture
def data(tmp_path):
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    Image.new("RGB", (96, 32), (30, 30, 200)).save(tmp_path / "blue.png")
    lines = [
        {"id": "ok", "instruction": "Find it", "query": "a red square", "positive": {"image": "red.png"},
         "negatives": [{"image": "blue.png"}, "a blue bar"]},
        {"id": "missing", "query": "q", "positive": {"image": "nowhere.png"}, "negatives": ["n"]},
        {"id": "long", "query": "word " * 300, "positive": "p", "negatives": ["n"]},
        {"id": "lonely", "query": "q", "positive": "p"},
    ]  # fmt: skip
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


@pytest.fixture
def processor(tiny_model):
    proc = get_family("qwen3_vl").load_processor(str(tiny_model("qwen3_vl")))
    proc.set_pixel_range(MIN_PIXELS, MAX_PIXELS)
    return proc


@pytest.mark.parametrize("kind", ["embedding", "reranker"])
def test_the_check_counts_what_training_encodes_and_names_each_problem(data, processor: VLProcessor, kind):
    rules = RetrievalRules(256, kind)
    _, report = check_datasets(rules, [DatasetSpec(path=str(data))], processor, progress=False)
    errors = {p.where: p.message for p in report.errors}
    assert "nowhere.png" in errors[f"{data}:2 (id missing)"] and errors[f"{data}:2 (id missing)"].startswith(
        "positive: "
    )
    [dropped] = report.dropped
    assert dropped.where == f"{data}:3 (id long)"
    assert dropped.message.startswith("query " if kind == "embedding" else "query + positive ")
    if kind == "reranker":  # the embedder learns from in-batch negatives alone; the reranker cannot
        assert errors[f"{data}:4 (id lonely)"] == "no negatives: the reranker learns 'no' from them"
    rows = list(report.plan)
    assert [r.index for r in rows] == ([0, 3] if kind == "embedding" else [0])
    row = rows[0]
    sample = RetrievalSource(DatasetSpec(path=str(data))).sample(0)
    lengths = [len(encode_input(c, processor).input_ids) for c in sequences(sample, kind)]
    assert (row.length, row.items, row.images) == (max(lengths), 4 if kind == "embedding" else 3, 2)


def test_negatives_are_drawn_once_per_sample():
    s = to_retrieval({"query": "q", "positive": "p", "negatives": [str(k) for k in range(10)]}, "x", BASE)
    assert pick_negatives(s, None, 0, 5) == s.negatives and pick_negatives(s, 20, 0, 5) == s.negatives
    first = pick_negatives(s, 3, 0, 5)
    assert (
        len(first) == 3
        and first == pick_negatives(s, 3, 0, 5)
        and set(map(str, first)) <= set(map(str, s.negatives))
    )


def test_data_check_cli_checks_retrieval_data(data, tiny_model, capsys):
    assert main(["data", "check", str(data), "--model", str(tiny_model("qwen3_vl")), "--retrieval", "reranker",
                 "--max-length", "256", "--no-cache"]) == 1  # fmt: skip
    out = capsys.readouterr().out
    assert "no negatives: the reranker learns 'no' from them" in out and "FAILED: 2 error(s)" in out
    with pytest.raises(SystemExit, match="Qwen2.5-VL has no embedding or reranker models"):
        main(["data", "check", str(data), "--family", "qwen2_5_vl", "--retrieval", "embedding"])
