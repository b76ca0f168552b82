"""The data check at scale: workers give the report of one process, byte for byte; the plan and line
index cost at most 33 bytes a sample (tracemalloc); sharded datasets name their shard in errors."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from qwenvl_ft.config import DataConfig, DatasetSpec
from qwenvl_ft.data import checking
from qwenvl_ft.data.check import check_specs
from qwenvl_ft.data.checking import format_report
from qwenvl_ft.data.dataset import build_dataset
from qwenvl_ft.data.index import JsonlIndex
from qwenvl_ft.data.plan import SAMPLE_ROW, Plan, select
from qwenvl_ft.data.sources import Source, mix

REPO = Path(__file__).resolve().parents[3]
BAD = REPO / "tests/data/bad_samples/samples.jsonl"
DEMO = REPO / "data/demo/demo.jsonl"


def mixed_data(tmp_path: Path) -> list[DatasetSpec]:
    """Bad samples, the demo, two-turn chats (truncated at max_length 70), an empty file, a missing one."""
    (tmp_path / "empty.jsonl").write_text("\n")
    turns = [{"role": r, "content": f"{r} says " + "words " * 12} for r in ("user", "assistant") * 3]
    (tmp_path / "chats.jsonl").write_text(
        json.dumps({"messages": turns}) + "\n" + json.dumps({"messages": turns[:2]}) + "\n"
    )
    return [
        DatasetSpec(path=str(BAD)),
        DatasetSpec(path=str(DEMO)),
        DatasetSpec(path=str(tmp_path / "chats.jsonl")),
        DatasetSpec(path=str(tmp_path / "empty.jsonl")),
        DatasetSpec(path=str(tmp_path / "missing.jsonl")),
        DatasetSpec(path=str(DEMO), weight=0.5),
    ]


def test_workers_give_the_report_of_one_process_byte_for_byte(bpe_processor, tmp_path, monkeypatch):
    monkeypatch.setattr(checking, "CHUNK", 3)  # many chunks, so that workers really share the samples
    specs = mixed_data(tmp_path)
    kwargs = {"max_length": 70, "overlength": "truncate", "progress": False}
    _, one = check_specs(specs, bpe_processor, workers=1, **kwargs)
    _, three = check_specs(specs, bpe_processor, workers=3, **kwargs)
    assert one.errors and one.truncated and one.dropped and len(one.plan)  # every kind of finding
    assert format_report(three, 70, limit=1000) == format_report(one, 70, limit=1000)
    assert three.plan.rows.tobytes() == one.plan.rows.tobytes()


def test_the_report_puts_each_finding_where_a_serial_check_finds_it(bpe_processor, tmp_path):
    _, report = check_specs(
        mixed_data(tmp_path), bpe_processor, max_length=70, overlength="truncate", progress=False
    )
    wheres = [p.where for p in report.errors]
    # Unreadable files first, then each source's own findings in order, the empty file's at its place.
    assert wheres[0] == str(tmp_path / "missing.jsonl")
    assert wheres.index(str(tmp_path / "empty.jsonl")) == len(wheres) - 1
    assert all(w.startswith(str(BAD)) for w in wheres[1:-1])


def test_a_plan_and_its_line_index_cost_at_most_33_bytes_a_sample(tmp_path):
    """What a process holds per sample of a JSONL dataset: the plan row (20 bytes), its position in
    the epoch's mixed order (4) and the line offset (8): 32 bytes, plus the objects' fixed overhead;
    measured by tracemalloc."""
    n = 100_000
    path = tmp_path / "big.jsonl"
    path.write_text('{"messages": []}\n' * n)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    index = JsonlIndex(path)
    rows = np.zeros(n, dtype=SAMPLE_ROW)
    rows["index"] = np.arange(n)
    plan = Plan(rows)
    order = select(plan, mix([Source(DatasetSpec(path=str(path)))], seed=0), [n])
    held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert len(index) == n and len(order) == n and plan.rows.itemsize == 20
    assert held / n <= 33, f"{held / n:.1f} bytes a sample"


def test_a_glob_or_a_folder_of_shards_is_one_dataset(bpe_processor, tmp_path):
    lines = DEMO.read_text().splitlines()
    shards = tmp_path / "shards"
    shards.mkdir()
    shutil.copytree(DEMO.parent / "images", shards / "images")  # relative paths resolve per shard
    for k in range(3):
        chunk = lines[3 * k : 3 * k + 3]
        if k == 1:
            chunk.insert(1, '{"messages": "not a list"}')  # an error in the second shard, at its line 2
        (shards / f"part-{k}.jsonl").write_text("\n".join(chunk) + "\n")
    for path in (f"{shards}/part-*.jsonl", str(shards)):
        sources, report = check_specs(
            [DatasetSpec(path=path)], bpe_processor, max_length=2048, progress=False
        )
        assert len(sources) == 1 and len(sources[0]) == 9 and len(report.plan) == 8
        assert [p.where for p in report.errors] == [f"{shards}/part-1.jsonl:2"]
        assert sources[0].where(8) == f"{shards}/part-2.jsonl:2"


def test_a_folder_of_parquet_shards_trains_as_one_dataset(bpe_processor, tmp_path):
    datasets = pytest.importorskip("datasets")
    images = sorted((DEMO.parent / "images").glob("*.png"))
    records = [
        {"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": f"Shape {k}."}],
         "images": [str(images[k % len(images)])]}
        for k in range(8)
    ]  # fmt: skip
    shards = tmp_path / "parquet"
    shards.mkdir()
    for k in range(2):
        datasets.Dataset.from_list(records[4 * k : 4 * k + 4]).to_parquet(str(shards / f"{k:05d}.parquet"))
    data = DataConfig(train=[DatasetSpec(path=str(shards))], max_length=2048)
    ds, report = build_dataset(data, bpe_processor, seed=0, cache_dir=None, progress=False)
    assert report.ok and len(ds) == 8 and len(ds[0].input_ids) == ds.lengths()[0]
    assert Source(DatasetSpec(path=str(shards))).where(5) == f"{shards}/00001.parquet[1]"
