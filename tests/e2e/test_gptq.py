"""Qwen-VL-Chat-Int4's path on CPU: a tiny GPTQ checkpoint in the published layout loads through
transformers' GPTQ integration and gptqmodel (no remote code), computes what its dequantized weights
compute, passes LoRA gradients through its kernels, trains, and merges into the unquantized model.

The reference is independent of our writer: the test quantizes the same random weights with GPTQ's
symmetric round-to-nearest rule itself and runs a plain fp32 model on the results; gptqmodel
unpacks what our writer packed. gptqmodel's CPU kernel computes in bf16, hence the tolerances.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from test_qwen_vl import REPO, recipe  # the same tiny LoRA recipe (tests/e2e is on sys.path)

from qwenvl_ft.cli import main
from qwenvl_ft.config import ConfigError
from qwenvl_ft.merge import MergeError, logits, merge, verification_inputs
from qwenvl_ft.models import get_family
from qwenvl_ft.tiny import make_tiny
from qwenvl_ft.train import train
from qwenvl_ft.training.setup import load_model

FAM = get_family("qwen_vl")
QUANTIZED = ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")
GPTQ_EXTRA = "pip install 'qwenvl-ft[gptq]'"


@pytest.fixture
def gptq_libs():
    """Loading a GPTQ checkpoint goes through transformers' integration: optimum and gptqmodel."""
    pytest.importorskip("optimum", reason=f"loading GPTQ checkpoints needs optimum: {GPTQ_EXTRA}")
    pytest.importorskip("gptqmodel", reason=f"GPTQ kernels come from gptqmodel: {GPTQ_EXTRA}")


def gptq_round(w: torch.Tensor, group: int = 128) -> torch.Tensor:
    """GPTQ's 4-bit symmetric grid, round to nearest, per group of 128 input columns, fp16 scales."""
    out_f, in_f = w.shape
    g = w.float().reshape(out_f, in_f // group, group)
    amax = g.abs().amax(dim=2, keepdim=True)
    scale = (2 * amax / 15).half().float()
    q = torch.clamp(torch.round(g / scale) + 8, 0, 15)
    return (scale * (q - 8)).reshape(out_f, in_f)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """(int4 dir, dequantized fp32 dir): the same seed-0 tiny model, quantized by us and by the rule above."""
    root = tmp_path_factory.mktemp("gptq")
    make_tiny(FAM, root / "int4", seed=0, int4=True)
    make_tiny(FAM, root / "deq", seed=0)
    model = FAM.load_model(str(root / "deq"), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            block_linear = name.startswith("transformer.h.") and name.endswith(".weight") and p.dim() == 2
            # The int4 checkpoint stores everything else in fp16.
            p.copy_(gptq_round(p) if block_linear else p.half().float())
    model.save_pretrained(root / "deq")
    yield root / "int4", root / "deq"
    shutil.rmtree(root)


def test_tiny_int4_has_the_published_layout(ckpts):
    pytest.importorskip("optimum", reason=f"the block-name check is optimum's own: {GPTQ_EXTRA}")
    from optimum.gptq.utils import get_block_name_with_pattern

    int4, _ = ckpts
    published = json.loads((REPO / "qwenvl_ft/models/published/qwen_vl-int4.json").read_text())
    config = json.loads((int4 / "config.json").read_text())
    assert config["quantization_config"] == published["quantization_config"]
    assert config["model_type"] == "qwen" and "auto_map" not in config
    quantize_config = json.loads((int4 / "quantize_config.json").read_text())
    assert quantize_config["bits"] == 4 and quantize_config["group_size"] == 128 and quantize_config["sym"]
    with safe_open(int4 / "model.safetensors", "pt") as f:
        shapes = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    hidden, inner = config["hidden_size"], config["intermediate_size"] // 2
    sizes = {"attn.c_attn": (hidden, 3 * hidden), "attn.c_proj": (hidden, hidden)}
    sizes |= {"mlp.w1": (hidden, inner), "mlp.w2": (hidden, inner), "mlp.c_proj": (inner, hidden)}
    for i in range(config["num_hidden_layers"]):
        for m, (fan_in, fan_out) in sizes.items():
            p = f"transformer.h.{i}.{m}"
            assert f"{p}.weight" not in shapes
            assert shapes[f"{p}.qweight"] == ((fan_in // 8, fan_out), "I32")
            assert shapes[f"{p}.qzeros"] == ((fan_in // 128, fan_out // 8), "I32")
            assert shapes[f"{p}.scales"] == ((fan_in // 128, fan_out), "F16")
            assert shapes[f"{p}.g_idx"] == ((fan_in,), "I32")
    assert shapes["lm_head.weight"][1] == "F16" and shapes["transformer.wte.weight"][1] == "F16"
    assert any(k.startswith("transformer.visual.") and k.endswith(".weight") for k in shapes)
    assert not any(k.startswith("transformer.visual.") and k.endswith(".qweight") for k in shapes)
    # optimum finds the blocks to quantize by pattern, as for the real checkpoint (no block_name_to_quantize).
    assert get_block_name_with_pattern(FAM.load_model(str(ckpts[1]))) == FAM.gptq_blocks


def test_int4_computes_what_its_dequantized_weights_compute(gptq_libs, ckpts):
    int4, deq = ckpts
    model = load_model(recipe(int4, "unused"), FAM).eval()
    names = {n for n, m in model.named_modules() if type(m).__module__.startswith("gptqmodel.")}
    assert names == {f"transformer.h.{i}.{m}" for i in range(2) for m in QUANTIZED}
    reference = FAM.load_model(str(deq), dtype=torch.float32).eval()
    with torch.no_grad():
        for x in verification_inputs(FAM.load_processor(str(int4))):
            got, want = logits(model, x, torch.float32), logits(reference, x, torch.float32)
            assert (got - want).abs().max() < 0.02 * want.abs().max()


def lora_grads(model) -> dict[str, torch.Tensor]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=FAM.lora_target_regex))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # nonzero B, so lora_A gets a gradient too
    x = verification_inputs(FAM.load_processor(str(model.name_or_path)))[0]
    labels = x["input_ids"].clone()
    out = peft_model(**x, labels=labels)
    out.loss.backward()
    return {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}


def test_lora_gradients_through_int4_kernels_match_the_dequantized_model(gptq_libs, ckpts):
    int4, deq = ckpts
    got = lora_grads(load_model(recipe(int4, "unused"), FAM))
    want = lora_grads(FAM.load_model(str(deq), dtype=torch.float32))
    assert got.keys() == want.keys() and len(got) == 16
    for n in got:
        # Layer 0's gradients have come back through every quantized layer above it.
        assert got[n] is not None and want[n].norm() > 0, n
        assert (got[n] - want[n]).norm() < 0.05 * want[n].norm(), n


def test_lora_on_int4_trains_and_merges_into_the_unquantized_model(gptq_libs, ckpts, tmp_path):
    int4, deq = ckpts
    result = train(recipe(int4, tmp_path / "run"))
    ls = [h["loss"] for h in result.log_history if "loss" in h]
    assert sum(ls[-3:]) / 3 < sum(ls[:3]) / 3 - 0.05
    lora = {
        re.sub(r"\.lora_[AB]\.default\.weight$", "", n.removeprefix("base_model.model."))
        for n, _ in result.model.named_parameters()
        if "lora_" in n
    }
    assert lora == {f"transformer.h.{i}.{m}" for i in range(2) for m in QUANTIZED[:4]}
    # Generation on the int4 base + adapter, in bf16 (the resampler's fp32 table once broke this).
    preds = tmp_path / "preds.jsonl"
    argv = ["predict", str(tmp_path / "run"), str(REPO / "data/demo/demo.jsonl"), "--output", str(preds)]
    assert main([*argv, "--limit", "2", "--max-new-tokens", "3", "--dtype", "bf16"]) == 0
    assert len(preds.read_text().splitlines()) == 2
    with pytest.raises(MergeError, match="quantized .*--base"):
        merge(tmp_path / "run", tmp_path / "bad", dtype="fp32", progress=False)
    merged = merge(tmp_path / "run", tmp_path / "merged", dtype="fp32", base=deq, progress=False)
    assert merged.max_logit_diff <= merged.tolerance
    # The merged fp32 model computes what the adapter on the int4 kernels computed.
    reloaded = FAM.load_model(str(tmp_path / "merged"), dtype=torch.float32).eval()
    result.model.eval()
    with torch.no_grad():
        for x in verification_inputs(FAM.load_processor(str(tmp_path / "run"))):
            want = logits(result.model, x, torch.float32)
            assert (logits(reloaded, x, torch.float32) - want).abs().max() < 0.02 * want.abs().max()


def test_refuses_what_cannot_train_on_int4(gptq_libs, ckpts, tmp_path):
    int4, _ = ckpts
    with pytest.raises(ConfigError, match="no backward pass"):
        load_model(recipe(int4, tmp_path, "quant.gptq_backend=gptq_torch_int8"), FAM)
    for mode in ("full", "qlora"):
        with pytest.raises(ConfigError, match="quantized"):
            train(recipe(int4, tmp_path / mode, f"train.mode={mode}", "model.dtype=bf16"))


def test_a_missing_gptq_library_is_named(ckpts, tmp_path, monkeypatch):
    """Runs without gptqmodel (the test hides it anyway); optimum is checked first, so it must be there."""
    import importlib.util

    pytest.importorskip("optimum", reason=f"optimum is checked before gptqmodel: {GPTQ_EXTRA}")

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gptqmodel" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"int4: .*needs gptqmodel: pip install 'qwenvl-ft\[gptq\]'"):
        load_model(recipe(ckpts[0], tmp_path), FAM)


def test_lora_on_int4_under_deepspeed_zero2(gptq_libs, ckpts, launch_train, tmp_path):
    """The original finetune_qlora_ds.sh case: two processes (CPU, gloo), ZeRO-2."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install 'qwenvl-ft[deepspeed]'")
    from safetensors.torch import load_file

    int4, _ = ckpts
    launch_train(
        2,
        str(REPO / "recipes/tiny/qwen_vl_lora.yaml"),
        f"model.path={int4}",
        f"output.dir={tmp_path / 'out'}",
        f"data.train=[{{path: {REPO / 'data/demo/demo.jsonl'}}}]",
        "data.num_workers=0",
        "train.max_steps=3",
        "train.save_steps=1000",
        "train.deepspeed=configs/deepspeed/zero2.json",
    )
    adapter = load_file(str(tmp_path / "out/adapter_model.safetensors"))
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert len(lora_b) == 8 and all(t.abs().sum() > 0 for t in lora_b)
