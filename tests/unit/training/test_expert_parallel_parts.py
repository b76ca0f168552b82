"""`train.expert_parallel`: what is refused at start, by name, and the parts that run without ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qwenvl_ft.config import ConfigError, load_recipe
from qwenvl_ft.models import get_family
from qwenvl_ft.training import expert_parallel
from qwenvl_ft.training.methods import check_honoured, get_method

REPO = Path(__file__).resolve().parents[3]


def recipe(model: Path, *overrides: str):
    return load_recipe(
        str(REPO / "recipes/tiny/qwen3_5_moe_lora.yaml"),
        [f"model.path={model}", "train.expert_parallel=2", *overrides],
    )


@pytest.fixture(scope="module")
def moe(tiny_model) -> Path:
    return tiny_model("qwen3_5_moe")  # 4 routed experts


@pytest.mark.parametrize(
    "overrides, world, words",
    [
        (("train.deepspeed=configs/deepspeed/zero3.json",), 2, "remove train.deepspeed"),
        (("train.fsdp=true",), 2, "remove train.fsdp"),
        (("train.sequence_parallel=2",), 2, "with train.sequence_parallel is not built"),
        (("train.mode=qlora", "model.dtype=bf16"), 2, "4-bit weights cannot be sharded"),
        (("lora.experts=true",), 2, "does not compose with expert parallelism"),
        (
            ("eval.best_metric=eval_loss", f"data.eval=[{{path: {REPO / 'data/demo/demo.jsonl'}}}]"),
            2,
            "best_metric",
        ),
        ((), 3, "needs a process count that it divides; this launch has 3"),
        (("train.expert_parallel=3",), 3, "must divide the model's 4 routed experts"),
    ],
)
def test_refused_by_name(moe, monkeypatch, overrides, world, words):
    monkeypatch.chdir(REPO)
    cfg = recipe(moe, *overrides)
    with pytest.raises(ConfigError, match=words):
        expert_parallel.check(cfg, get_family("qwen3_5_moe"), world)


def test_dense_generations_are_refused(tiny_model):
    cfg = load_recipe(
        str(REPO / "recipes/tiny/qwen3_vl_lora.yaml"),
        [f"model.path={tiny_model('qwen3_vl')}", "train.expert_parallel=2"],
    )
    with pytest.raises(ConfigError, match="has no routed experts"):
        expert_parallel.check(cfg, get_family("qwen3_vl"), 2)


def test_only_the_moe_families_declare_it():
    from qwenvl_ft.models import FAMILIES

    assert sorted(n for n, f in FAMILIES.items() if f.expert_parallel) == ["qwen3_5_moe", "qwen3_vl_moe"]


@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_preference_methods_refuse_it(moe, method):
    cfg = recipe(moe, f"train.method={method}")
    with pytest.raises(ConfigError, match=f"'train.method: {method}' does not use .*'train.expert_parallel'"):
        check_honoured(get_method(method), cfg)


def test_the_fsdp_plan_names_one_unit_per_decoder_layer_and_vision_block(moe):
    from transformers import AutoConfig

    family = get_family("qwen3_5_moe")
    with torch.device("meta"):
        model = family.model_class()(AutoConfig.from_pretrained(moe))
    names = {n for n, _ in model.named_modules()}
    for rule in expert_parallel.fsdp_plan(family):
        prefix = rule.removesuffix(".*")
        units = [n for n in names if n.startswith(prefix + ".") and n.count(".") == prefix.count(".") + 1]
        assert len(units) >= 2, rule  # the tiny model's 4 decoder layers, 2 vision blocks


def test_balance_without_ranks_is_transformers_own():
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as m

    logits = (torch.randn(6, 4), torch.randn(6, 4))
    wrapped = expert_parallel.balance_over_ranks(m.load_balancing_loss_func)
    assert torch.equal(wrapped(logits, 4, 2), m.load_balancing_loss_func(logits, 4, 2))  # no process group


def test_the_shared_sums_give_transformers_own_value():
    from qwenvl_ft.models import router

    original = __import__("transformers.models.qwen3_5_moe.modeling_qwen3_5_moe", fromlist=["x"])
    logits = (torch.randn(6, 4), torch.randn(6, 4))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    for weight, attention in ((torch.ones(6), None), (mask.reshape(-1), mask)):
        tokens, probs, counted = router.sums(logits, weight, 4, 2)
        expected = original.load_balancing_loss_func(logits, 4, 2, attention)
        assert torch.allclose(router.value(tokens, probs, counted, 4), expected)
