"""First-generation Qwen-VL end to end on a tiny checkpoint with the original names: full fine-tuning
(ViT frozen, resampler trained, as the original), LoRA on a base model (wte and lm_head through
modules_to_save), Q-LoRA; each LoRA merged and verified."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from qwenvl_ft.config import load_recipe
from qwenvl_ft.merge import logits, merge, verification_inputs
from qwenvl_ft.models import get_family
from qwenvl_ft.train import train
from qwenvl_ft.training.modules import part_of

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data/demo/demo.jsonl"


def recipe(model_dir, out, *extra):
    """The tiny Qwen-VL LoRA recipe on the demo data, 6 steps: enough for the mean loss of the last
    three to fall 0.5 (LoRA, Q-LoRA) to 6 (LoRA on a base model) below the first three's."""
    return load_recipe(
        REPO / "recipes/tiny/qwen_vl_lora.yaml",
        [
            f"model.path={model_dir}",
            f"output.dir={out}",
            f"data.train=[{{path: {DEMO}}}]",
            "data.num_workers=0",
            "train.max_steps=6",
            "train.save_steps=1000",
            "train.warmup_ratio=0",
            *extra,
        ],
    )


def run(model_dir, out, *extra):
    return train(recipe(model_dir, out, *extra))


def drop_checkpoints(run_dir: Path) -> Path:
    """`run_dir` without its resumable checkpoint-N copies (weights or adapter again, and Adam states:
    ~0.9 GB with the 256-wide model's embeddings trained); merge reads only the run's top level."""
    for checkpoint in run_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    return run_dir


def falls(result) -> bool:
    ls = [h["loss"] for h in result.log_history if "loss" in h]
    return sum(ls[-3:]) / 3 < sum(ls[:3]) / 3 - 0.05


def test_full_fine_tuning_trains_the_resampler_not_the_vit(tiny_model, tmp_path):
    fam = get_family("qwen_vl")
    model_dir = tiny_model("qwen_vl")
    result = run(model_dir, tmp_path / "out", "train.mode=full", "train.learning_rate=2e-3")
    assert falls(result)
    orig = dict(fam.load_model(str(model_dir), dtype=torch.float32).named_parameters())
    moved = {n: not torch.equal(p.detach(), orig[n].detach()) for n, p in result.model.named_parameters()}
    for name, changed in moved.items():
        part = part_of(name, fam.paths)
        if part == "vision":
            assert not changed, name
    assert any(c for n, c in moved.items() if ".attn_pool." in n)
    assert any(c for n, c in moved.items() if n.startswith("transformer.h."))
    fixed = result.model.transformer.visual.attn_pool.pos_embed  # a buffer: the sin-cos table never trains
    assert torch.equal(fixed, fam.load_model(str(model_dir)).transformer.visual.attn_pool.pos_embed)


def test_lora_on_a_base_model_then_merge(tiny_model, tmp_path):
    fam = get_family("qwen_vl")
    model_dir = tiny_model("qwen_vl")
    result = run(model_dir, tmp_path / "run", "model.is_base=true")
    assert falls(result)
    lora_modules = {
        re.sub(r"\.lora_[AB]\.default\.weight$", "", n.removeprefix("base_model.model."))
        for n, _ in result.model.named_parameters()
        if "lora_" in n
    }
    expected = {
        f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2")
    }
    assert lora_modules == expected
    trained = {n for n, p in result.model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trained == {
        "base_model.model.transformer.wte.modules_to_save.default.weight",
        "base_model.model.lm_head.modules_to_save.default.weight",
    }
    merged = merge(drop_checkpoints(tmp_path / "run"), tmp_path / "merged", dtype="fp32", progress=False)
    assert merged.max_logit_diff <= merged.tolerance
    reloaded = fam.load_model(str(tmp_path / "merged"), dtype=torch.float32).eval()
    inputs = verification_inputs(fam.load_processor(str(tmp_path / "run")))
    result.model.eval()
    for x in inputs:
        assert (
            logits(reloaded, x, torch.float32) - logits(result.model, x, torch.float32)
        ).abs().max() < 1e-4


def test_qlora_then_merge_into_full_precision(tiny_model, tmp_path):
    pytest.importorskip("bitsandbytes", reason="Q-LoRA needs bitsandbytes: pip install 'qwenvl-ft[qlora]'")
    result = run(tiny_model("qwen_vl"), tmp_path / "run", "train.mode=qlora", "model.dtype=bf16")
    assert falls(result)
    quantized = [n for n, m in result.model.named_modules() if type(m).__name__ == "Linear4bit"]
    assert quantized and all(".transformer.h." in n for n in quantized)
    merged = merge(drop_checkpoints(tmp_path / "run"), tmp_path / "merged", dtype="fp32", progress=False)
    assert merged.kind == "lora" and merged.max_logit_diff <= merged.tolerance
