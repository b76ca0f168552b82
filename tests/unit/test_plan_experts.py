"""The planner's expert parallelism (plan/experts.py) against hand-worked figures for the published
Qwen3.5-35B-A3B config: 40 MoE layers of 256 experts (top 8), hidden 2048, expert MLP 512."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwenvl_ft.cli import main
from qwenvl_ft.config import load_recipe
from qwenvl_ft.plan import GIB, plan_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPE = "recipes/qwen3_5_moe/35b_a3b_lora.yaml"  # LoRA, bf16, 1 x 4096 tokens, checkpointing, ZeRO-3
PER_LAYER = 256 * (2 * 512 * 2048 + 2048 * 512)  # gate_up_proj + down_proj of one layer's experts


@pytest.fixture(autouse=True)
def _at_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_expert_memory_is_split_and_tokens_move_instead():
    ep = plan_recipe(load_recipe(RECIPE, ["train.expert_parallel=8", "train.deepspeed=null"]), nproc=8)
    zero3 = plan_recipe(load_recipe(RECIPE), nproc=8)
    s = ep.plan.setup
    assert (s.ep, s.engine.name) == (8, "FSDP2 + expert parallel")
    # Stored 1/8 per rank under both; the adapters in fp32 without DeepSpeed (its master copy aside).
    lora = ep.plan.params["lora"]
    assert ep.plan.term("weights") * GIB == pytest.approx(zero3.plan.term("weights") * GIB + lora * 2 / 8)
    # Gathered at a time: ZeRO-3 two whole blocks (experts included); EP 8 on 8 ranks two dense
    # blocks only (each rank's 32 experts stay whole on it), or the 248,320 x 2048 embedding.
    block = zero3.plan.term("ZeRO-3 gathered weights") * GIB / 2 / 2  # bf16, two blocks
    assert block > PER_LAYER
    gathered = max(2 * (block - PER_LAYER), 248_320 * 2048) * 2
    assert ep.plan.term("FSDP2 gathered weights") * GIB == pytest.approx(gathered)
    # All-to-all: 4096 tokens x top 8 x 2048 wide x 2 bytes, dispatch and combine, 7/8 leave the rank.
    layer = 2 * 4096 * 8 * 2048 * 2 * 7 / 8
    buffers = 2 * 4096 * 8 * 2048 * 2  # received rows and outputs of one recomputed layer
    assert ep.plan.term("expert-parallel buffers") * GIB == pytest.approx(buffers)
    total = zero3.plan.params["total"]  # the meta-device model's count
    assert total == pytest.approx(35.1e9, rel=1e-3)
    zero, expert = ep.experts
    assert (zero.name, expert.name) == ("DeepSpeed ZeRO-3", "expert parallel 8")
    passes = 3  # forward, backward, recomputation
    assert zero.moved_gib * GIB == pytest.approx(passes * total * 2 * 7 / 8)
    dense = total - 40 * PER_LAYER
    assert expert.moved_gib * GIB == pytest.approx(passes * (dense * 2 * 7 / 8 + 40 * layer))
    assert expert.moved_gib < zero.moved_gib / 4


def test_plan_compares_and_says_why(capsys):
    code = main(["plan", RECIPE, "--nproc", "8", "--gpu", "H100-80GB"])
    text = capsys.readouterr().out
    assert code == 0
    assert "mixture of experts on 8 ranks" in text
    assert "- DeepSpeed ZeRO-3:" in text and "- expert parallel 8:" in text
    assert "less traffic: ZeRO-3 gathers every expert on every rank" in text
    assert "train.expert_parallel: 8" in text


def test_expert_copies_are_gathered_when_ranks_exceed_the_split():
    """Qwen3-VL-235B-A22B, EP 4 on 8 ranks: each rank's 32 experts of a layer are sharded over 2
    copies and gathered for compute, on top of two dense blocks (the 151,936 x 4096 embedding is
    smaller); EP 8 on 8 gathers the two dense blocks alone."""
    per_layer = 128 * (2 * 1536 * 4096 + 4096 * 1536)
    big = "recipes/qwen3_vl_moe/235b_a22b_ep_lora.yaml"
    four = plan_recipe(load_recipe(big, ["train.expert_parallel=4"]), nproc=8).plan
    eight = plan_recipe(load_recipe(big), nproc=8).plan
    zero3 = ["train.expert_parallel=1", "train.deepspeed=configs/deepspeed/zero3.json"]
    block = plan_recipe(load_recipe(big, zero3), nproc=8).plan
    two_blocks = block.term("ZeRO-3 gathered weights") * GIB / 2  # bf16
    dense = two_blocks - 2 * per_layer
    assert four.term("FSDP2 gathered weights") * GIB == pytest.approx((dense + per_layer / 4) * 2)
    assert eight.term("FSDP2 gathered weights") * GIB == pytest.approx(max(dense, 151_936 * 4096) * 2)


def test_nproc_is_raised_to_a_multiple_of_the_split():
    report = plan_recipe(load_recipe(RECIPE, ["train.expert_parallel=8", "train.deepspeed=null"]), nproc=6)
    assert report.plan.setup.nproc == 8
    assert any("raised to 8: train.expert_parallel 8" in n for n in report.plan.notes)


def test_dense_models_get_no_comparison():
    assert plan_recipe(load_recipe("recipes/qwen2_5_vl/7b_lora.yaml"), nproc=8).experts == []
