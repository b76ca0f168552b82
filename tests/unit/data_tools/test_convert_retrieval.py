"""convert_retrieval: BEIR folders and FlagEmbedding lines -> our retrieval JSONL, read back by the
training reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "data_tools"))

import convert_retrieval  # noqa: E402

from qwenvl_ft.config import DatasetSpec  # noqa: E402
from qwenvl_ft.data.retrieval import RetrievalSource  # noqa: E402


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [
        {"_id": "d1", "title": "Router", "text": "Hold reset for ten seconds."},
        {"_id": "d2", "text": "Unrelated."},
        {"_id": "d3", "image": "pages/3.png"},
        {"_id": "d4", "text": "Also unrelated."},
    ])  # fmt: skip
    write_jsonl(
        folder / "queries.jsonl", [{"_id": "q1", "text": "reset the router"}, {"_id": "q2", "text": "page 3"}]
    )
    (folder / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td3\t2\n")
    return folder


def test_beir_becomes_one_sample_per_relevant_pair_with_random_negatives(tmp_path):
    folder = beir(tmp_path / "beir")
    out = tmp_path / "eval.jsonl"
    assert convert_retrieval.main(["beir", str(folder), "--out", str(out), "--negatives", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1/d1", "q2/d3"]  # d2's score 0 is not relevant
    assert (
        rows[0]["query"] == "reset the router"
        and rows[0]["positive"] == "Router\nHold reset for ten seconds."
    )
    assert rows[1]["positive"] == {"image": str(folder / "pages/3.png")}
    for r in rows:
        assert len(r["negatives"]) == 2 and r["positive"] not in r["negatives"]
        assert len({json.dumps(n) for n in r["negatives"]}) == 2
    source = RetrievalSource(DatasetSpec(path=str(out)))
    assert source.sample(1).positive.images == [str(folder / "pages/3.png")]


def test_flag_lines_split_into_one_sample_per_positive(tmp_path):
    src = tmp_path / "flag.jsonl"
    write_jsonl(src, [{"query": "q", "pos": ["a", "b"], "neg": ["n"], "prompt": "Find it."}])
    out = tmp_path / "train.jsonl"
    assert convert_retrieval.main(["flag", str(src), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"id": "1#0", "query": "q", "positive": "a", "negatives": ["n"], "instruction": "Find it."},
        {"id": "1#1", "query": "q", "positive": "b", "negatives": ["n"], "instruction": "Find it."},
    ]


def test_a_qrel_naming_a_missing_document_is_an_error(tmp_path, capsys):
    folder = beir(tmp_path / "beir")
    (folder / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    assert convert_retrieval.main(["beir", str(folder), "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "document 'd9' is not in corpus.jsonl" in capsys.readouterr().err
