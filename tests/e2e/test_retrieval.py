"""Embedding and reranker training end to end on tiny Qwen3-VL checkpoints (`make-tiny --retrieval`):

- a short LoRA run of each, merged: the merged checkpoint in plain transformers, through the official
  computation written out by hand (tests/unit/test_retrieval_official.py), gives the run's vectors
  and scores;
- under DeepSpeed ZeRO-3 with two processes (gloo), a batch with images on one rank and text only on
  the other (the vision keepalive), and the documents gathered across ranks;
- (slow) learning: the synthetic text -> image task, held out by combination, from chance to
  recall@1 >= 0.9 (embedder) and MRR >= 0.9 (reranker reordering the whole held-out corpus).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qwenvl_ft.cli import main
from qwenvl_ft.data.retrieval import Item
from qwenvl_ft.data.synthetic_retrieval import write_retrieval_set
from qwenvl_ft.retrieval import Embedder, Reranker
from tests.unit.test_retrieval_official import ITEMS, official_embeddings, official_scores

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(embedding checkpoint, reranker checkpoint, training set, held-out set)."""
    root = tmp_path_factory.mktemp("retrieval")
    for kind in ("embedding", "reranker"):
        argv = [
            "make-tiny",
            "qwen3_vl",
            str(root / kind),
            "--retrieval",
            kind,
            "--standin-vision",
            "--no-check",
        ]
        # The reranker compares query and image in one tower: 4 layers learn it (2 learned too slowly).
        deeper = ["--override", "text_config.num_hidden_layers=4"] if kind == "reranker" else []
        assert main([*argv, *deeper]) == 0
    train = write_retrieval_set(root / "train", 2000, seed=1)
    held = write_retrieval_set(root / "eval", 64, seed=2, heldout=True)
    return root / "embedding", root / "reranker", train, held


def train_run(kind: str, model: Path, data: Path, out: Path, *extra: str) -> Path:
    argv = [
        "train",
        str(REPO / f"recipes/tiny/qwen3_vl_{kind}.yaml"),
        f"model.path={model}",
        f"output.dir={out}",
    ]
    assert main([*argv, f"data.train=[{{path: {data}}}]", "data.num_workers=0", *extra]) == 0
    return out


def retrieval_report(model: Path, held: Path, out: Path, *extra: str) -> dict:
    report = out / "report.json"
    argv = ["eval", str(model), "--task", "retrieval", "--data", str(held), "--dtype", "fp32"]
    assert main([*argv, *extra, "--output", str(report)]) == 0
    return json.loads(report.read_text())


@pytest.mark.parametrize("kind", ["embedding", "reranker"])
def test_a_merged_run_scores_in_plain_transformers_as_the_official_code_does(tiny, tmp_path, kind):
    model = tiny[0] if kind == "embedding" else tiny[1]
    run = train_run(kind, model, tiny[2], tmp_path / "run", "train.max_steps=3", "model.is_base=false")
    meta = json.loads((run / "qwenvl_ft.json").read_text())
    assert meta["method"] == kind
    merged = tmp_path / "merged"
    assert main(["merge", str(run), "--output", str(merged), "--dtype", "fp32"]) == 0
    if kind == "embedding":
        ours = Embedder.load(run).embed([Item(**i) for i in ITEMS], "Find it.")
        by_hand = official_embeddings(merged, ITEMS, "Find it.")
        torch.testing.assert_close(ours, by_hand, atol=5e-5, rtol=1e-4)
        base = official_embeddings(model, ITEMS, "Find it.")
        assert not torch.allclose(base, by_hand, atol=1e-3)  # the run changed the model
    else:
        query, docs = {"texts": ["a red rectangle"]}, ITEMS[1:]
        ours = Reranker.load(run).score(Item(**query), [Item(**d) for d in docs])
        default = "Given a search query, retrieve relevant candidates that answer the query."
        torch.testing.assert_close(ours, official_scores(merged, query, docs, default), atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("kind", "mode"), [("embedding", "lora"), pytest.param("reranker", "full", marks=pytest.mark.slow)]
)
def test_training_under_zero3_with_two_processes(launch_train, tiny, tmp_path, kind, mode):
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install 'qwenvl-ft[deepspeed]'")
    # Image samples and text-only ones: steps where one rank has images and the other none (the keepalive).
    lines = [json.loads(line) for line in tiny[2].read_text().splitlines()[:8]]
    text_only = [{"id": f"t{k}", "query": f"shape {k}", "positive": f"a picture of shape {k}",
                  "negatives": [f"shape {k + 1}"]} for k in range(8)]  # fmt: skip
    for line in lines:
        line["positive"]["image"] = str(tiny[2].parent / line["positive"]["image"])
        line["negatives"] = [{"image": str(tiny[2].parent / n["image"])} for n in line["negatives"][:1]]
    data = tmp_path / "mixed.jsonl"
    data.write_text(
        "".join(json.dumps(r) + "\n" for pair in zip(lines, text_only, strict=True) for r in pair)
    )
    model = tiny[0] if kind == "embedding" else tiny[1]
    out = tmp_path / "out"
    launch_train(
        2, str(REPO / f"recipes/tiny/qwen3_vl_{kind}.yaml"), f"model.path={model}", f"output.dir={out}",
        f"data.train=[{{path: {data}}}]", "data.num_workers=0", "data.group_by_length=false",
        "train.per_device_batch_size=1", "train.max_steps=3", "train.logging_steps=1", f"train.mode={mode}",
        "train.deepspeed=configs/deepspeed/zero3.json",
    )  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert all("accuracy" in h for h in history if "loss" in h)
    # The weights saved in full (gathered, not empty shards), and they score.
    from safetensors.torch import load_file

    weights = out / ("adapter_model.safetensors" if mode == "lora" else "model.safetensors")
    assert all(t.numel() > 0 for t in load_file(str(weights)).values())
    if kind == "reranker":
        scores = Reranker.load(out).score(Item(texts=["shape 1"]), [Item(texts=["a picture of shape 1"])])
        assert scores.shape == (1,) and 0 < float(scores[0]) < 1


@pytest.mark.slow
def test_the_tiny_embedder_and_reranker_learn_held_out_retrieval(tiny, tmp_path):
    embedding, reranker, train, held = tiny
    before = retrieval_report(embedding, held, tmp_path, "--reranker", str(reranker), "--rerank-top", "27")
    emb_run = train_run("embedding", embedding, train, tmp_path / "emb")
    rr_run = train_run("reranker", reranker, train, tmp_path / "rr")
    after = retrieval_report(emb_run, held, tmp_path, "--reranker", str(rr_run), "--rerank-top", "27")
    print(
        f"embedding recall@1 {before['embedding']['recall@1']:.3f} -> {after['embedding']['recall@1']:.3f}, "
        f"MRR {before['embedding']['mrr']:.3f} -> {after['embedding']['mrr']:.3f}; reranker (whole corpus) "
        f"MRR {before['reranked']['mrr']:.3f} -> {after['reranked']['mrr']:.3f}, "
        f"recall@1 {before['reranked']['recall@1']:.3f} -> {after['reranked']['recall@1']:.3f}"
    )
    n = before["embedding"]["corpus"]
    assert n == 27 and before["embedding"]["recall@1"] < 0.2 and before["reranked"]["mrr"] < 0.3
    assert after["embedding"]["recall@1"] >= 0.9
    assert after["reranked"]["mrr"] >= 0.9
