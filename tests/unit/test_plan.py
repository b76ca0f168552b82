"""The memory planner: exact counts vs published totals and hand counts, activation formulas vs a
CPU measurement of what autograd keeps, the Qwen-VL-Chat published table, and the CLI."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch
from family_facts import FACTS, registered
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from qwenvl_ft.cli import main
from qwenvl_ft.config import load_recipe
from qwenvl_ft.models import FAMILIES, get_family
from qwenvl_ft.models.base import BlockShapes
from qwenvl_ft.plan import GIB, load_facts, match_published, plan_recipe
from qwenvl_ft.plan.activations import (
    Precision,
    block_saved,
    decoder_extra,
    loss_bytes,
    merger_bytes,
    stack_bytes,
)
from qwenvl_ft.plan.model import PUBLISHED, ModelFacts

REPO = Path(__file__).resolve().parents[2]

# Totals the model cards publish (safetensors parameter counts, tied embeddings counted once), per
# published config: tests/family_facts.py (published_totals).
PUBLISHED_TOTALS = {
    stem: total
    for name in registered()
    if name in FACTS
    for stem, total in FACTS[name].published_totals.items()
}


@pytest.fixture(autouse=True)
def _at_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # recipes name configs/deepspeed/*.json relative to the repo root


def published_facts(stem: str) -> ModelFacts:
    return load_facts("/nowhere", None, stem)


@pytest.mark.parametrize("stem", sorted(PUBLISHED_TOTALS))
def test_published_config_loads_and_matches_published_total(stem):
    data = json.loads((PUBLISHED / f"{stem}.json").read_text())
    family = next(f for f in FAMILIES.values() if data["model_type"] in f.model_types)
    config = family.model_class().config_class(**data)
    with torch.device("meta"):
        model = family.model_class()(config)
    total = sum(p.numel() for p in model.parameters())
    assert abs(total / PUBLISHED_TOTALS[stem] - 1) < 0.01, (stem, total)
    if family.model_class().__module__.startswith("transformers."):  # its own registry loads the same JSON
        from transformers import AutoConfig

        assert AutoConfig.for_model(**data).to_dict() == config.to_dict()


def test_every_published_file_belongs_to_a_family():
    stems = {stem for f in FAMILIES.values() for stem in f.published_sizes.values()}
    assert stems == {p.stem for p in PUBLISHED.glob("*.json")} == set(PUBLISHED_TOTALS)


def test_language_model_and_lora_counts_by_hand():
    facts = published_facts("qwen2_5_vl-7b")
    h, i, kd, L, V = 3584, 18944, 512, 28, 152064
    # q/k/v carry biases; o and the MLP do not; two RMSNorms per layer, one at the end.
    layer = h * h + h + 2 * (h * kd + kd) + h * h + 3 * h * i + 2 * h
    assert facts.by_part["language"] == L * layer + h
    assert facts.by_part["embeddings"] == facts.by_part["lm_head"] == V * h
    lora, hits = facts.lora_params(get_family("qwen2_5_vl").lora_target_regex, 64)
    assert len(hits) == 7 * L and all(".visual." not in lin.name for lin in hits)
    assert lora == L * 64 * (2 * (h + h) + 2 * (h + kd) + 3 * (h + i))
    qwen_vl = published_facts("qwen_vl")  # c_attn, attn.c_proj, w1, w2 (not the MLP's c_proj)
    lora, hits = qwen_vl.lora_params(get_family("qwen_vl").lora_target_regex, 64)
    assert lora == 32 * 64 * ((4096 + 3 * 4096) + (4096 + 4096) + 2 * (4096 + 11008)) and len(hits) == 4 * 32


@pytest.mark.parametrize("name", registered(lambda f: f.plans_layers))
def test_lora_and_modules_to_save_counts_equal_peft(name):
    from peft import LoraConfig, get_peft_model

    from qwenvl_ft.models.tokenizer import build_tokenizer
    from qwenvl_ft.tiny.builders import builder_for

    family = get_family(name)
    config = builder_for(family).config(build_tokenizer(family.special_tokens, family.chat_template, False))
    facts = ModelFacts(family, config, "tiny", False)
    save = [family.paths.embeddings, family.paths.lm_head]
    lora, _ = facts.lora_params(family.lora_target_regex, 8)
    model = family.model_class()(config)
    peft = get_peft_model(
        model, LoraConfig(r=8, target_modules=family.lora_target_regex, modules_to_save=save)
    )
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert trainable == lora + facts.module_params(save)


def test_published_names_match_by_name_and_size():
    assert match_published("Qwen2.5-VL-7B-Instruct")[1] == "qwen2_5_vl-7b"
    assert match_published("my-qwen2.5-vl-3b-sft")[1] == "qwen2_5_vl-3b"
    assert match_published("Qwen2-VL-7B-Instruct")[1] == "qwen2_vl-7b"
    assert match_published("Qwen-VL-Chat-Int4")[1] == "qwen_vl-int4"
    assert match_published("qwen-vl-chat-sft")[1] == "qwen_vl"
    with pytest.raises(ValueError, match=r"'run7b' names no published config .*Qwen2.5-VL-7B-Instruct"):
        match_published("run7b")
    assert match_published("Qwen3-VL-30B-A3B-Instruct")[1] == "qwen3_vl_moe-30b-a3b"
    assert match_published("Qwen3-VL-235B-A22B-Thinking", "qwen3_vl_moe")[1] == "qwen3_vl_moe-235b-a22b"


def test_zero_stages_divide_states_by_ranks():
    cfg = load_recipe("recipes/qwen2_5_vl/7b_lora.yaml")  # ZeRO-2, bf16
    lora = 161_480_704
    plan = plan_recipe(cfg, nproc=8).plan
    assert plan.term("optimizer states") * GIB == pytest.approx(lora * 12 / 8)  # fp32 master + 2 moments
    assert plan.term("gradients") * GIB == pytest.approx(lora * 2 / 8)
    assert plan.term("weights") * GIB == pytest.approx((8_292_166_656 + lora) * 2)  # not sharded by ZeRO-2
    full = load_recipe("recipes/qwen2_5_vl/7b_full.yaml", ["train.deepspeed=null"])
    plan = plan_recipe(full).plan  # plain Trainer: trainable parameters upcast to fp32
    trainable = 8_292_166_656 - plan.params["vision"]
    assert plan.params["trainable"] == trainable
    assert plan.term("gradients") * GIB == pytest.approx(trainable * 4)
    assert plan.term("optimizer states") * GIB == pytest.approx(trainable * 8)
    zero3 = plan_recipe(load_recipe("recipes/qwen2_5_vl/7b_full.yaml"), nproc=8).plan
    assert zero3.term("weights") * GIB == pytest.approx(8_292_166_656 * 2 / 8)


def test_qlora_weights_are_4bit_language_linears_and_fp32_rest():
    facts = published_facts("qwen2_5_vl-7b")
    plan = plan_recipe(load_recipe("recipes/qwen2_5_vl/7b_qlora.yaml")).plan
    linear = sum(lin.in_features * lin.out_features for lin in facts.linears if lin.part == "language")
    rest = 8_292_166_656 - linear
    nf4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits + 8-bit absmax per 64 + fp32 absmax per 256 blocks
    expected = linear * nf4 + rest * 4 + 161_480_704 * 4  # prepare_model_for_kbit_training: fp32 rest
    assert plan.term("weights") * GIB == pytest.approx(expected, rel=1e-6)


# -- activations: measured on CPU ------------------------------------------------------------


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storages created inside the mode that are still alive; peak over a replay."""

    def __init__(self, existing):
        super().__init__()
        self.events: list[tuple[int, int]] = []
        for t in existing:
            t.untyped_storage()._plan_key = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not hasattr(t.untyped_storage(), "_plan_key"):
                st, key = t.untyped_storage(), len(self.events) + 1
                st._plan_key = key
                self.events.append((key, st.nbytes()))
                weakref.finalize(st, self.events.append, (key, -st.nbytes()))
        return out

    def peak(self, exclude: set[int]) -> int:
        cur = peak = 0
        for key, n in self.events:
            if key not in exclude:
                cur += n
                peak = max(peak, cur)
        return peak


def measure(model, fn, inputs) -> tuple[int, int]:
    """(bytes saved for backward, dedup by storage; peak live bytes over forward + backward), both
    without parameters and their gradients."""
    params = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved.setdefault(ptr, t.untyped_storage().nbytes())
        return t

    tracker = LiveBytes([*model.parameters(), *model.buffers(), *inputs])
    with tracker, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    with tracker:
        out.backward()
        del out
    grads = {p.grad.untyped_storage()._plan_key for p in model.parameters() if p.grad is not None}
    return sum(saved.values()), tracker.peak(grads)


def calibration_model(hidden: int = 1024, intermediate: int = 2816, **vision):
    """Qwen2.5-VL with a 2-layer decoder of real layer proportions (head_dim 128, GQA 4:1)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from qwenvl_ft.tiny.builders import Qwen2_5VLTiny

    text = dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=hidden // 128,
        num_key_value_heads=hidden // 512,
        vocab_size=512,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    )
    vision = vision or Qwen2_5VLTiny.vision
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(text_config=text, vision_config=vision)
    ).train()


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_decoder_activations_match_cpu_measurement(mode, capsys):
    from peft import LoraConfig, get_peft_model

    T, e = 128, 4  # fp32: fast on CPU; the formula's bf16 branch matched to 1% when it was derived
    family = get_family("qwen2_5_vl")
    b = BlockShapes(depth=2, width=1024, intermediate=2816, heads=8, kv_heads=2, head_dim=128)
    p = Precision(e=e, a=e, mask=e)  # CPU dropout keeps its mask in the input dtype (CUDA: bool)
    kw = dict(trainable=mode == "full")
    if mode == "lora":
        kw.update(adapters=[1024] * 6 + [2816], r=64, dropout=0.05)  # q k v o gate up, down
    model = calibration_model()
    if mode == "lora":
        lora = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.05, target_modules=family.lora_target_regex)
        model = get_peft_model(model, lora)
    inner = model.get_submodule("base_model.model.model" if mode == "lora" else "model")
    ids = torch.randint(0, 512, (1, T))
    for gc in (False, True):
        if gc:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad(set_to_none=True)
        saved, peak = measure(model, lambda: inner(input_ids=ids).last_hidden_state.sum(), [ids])
        extra = decoder_extra(b, T, p, mode == "full")
        est_saved = b.depth * block_saved(b, T, p, **kw) + extra
        est_peak = stack_bytes(b, T, p, gc, **kw) + extra
        with capsys.disabled():
            print(
                f"\n{mode} gc={gc}: saved {saved / 2**20:.1f} MiB (est {est_saved / 2**20:.1f}), "
                f"peak {peak / 2**20:.1f} MiB (est {est_peak / 2**20:.1f})"
            )
        if not gc:  # checkpointed blocks save through checkpoint's own hooks, invisible here
            assert abs(est_saved / saved - 1) < 0.25
        assert abs(est_peak / peak - 1) < 0.25


def test_frozen_vision_tower_records_a_graph_under_checkpointing(capsys):
    # transformers 5 hooks the vision patch embedding too: the frozen tower keeps checkpoint inputs.
    vision = dict(
        depth=2,
        hidden_size=640,
        intermediate_size=1712,
        num_heads=8,
        out_hidden_size=256,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
    )
    model = calibration_model(512, 1024, **vision).requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    px, thw = torch.randn(256, 1176), torch.tensor([[1, 16, 16]])
    _, peak = measure(model, lambda: model.model.visual(px, grid_thw=thw).pooler_output.sum(), [px, thw])
    facts = ModelFacts(get_family("qwen2_5_vl"), model.config, "calibration", False)
    shapes, p = facts.shapes, Precision(4, 4)
    est = stack_bytes(shapes.vision, 256, p, True, trainable=False)
    est += merger_bytes(shapes.merger_width, 256, p, False, shapes.mergers)
    with capsys.disabled():
        print(f"\nfrozen vision tower, checkpointing: peak {peak / 2**20:.1f} MiB (est {est / 2**20:.1f})")
    assert facts.vision_hooked and abs(est / peak - 1) < 0.25, (est, peak)


@pytest.mark.parametrize("kind", ["standard", "chunked"])
def test_loss_memory_matches_measurement(kind):
    from transformers.loss.loss_utils import ForCausalLMLoss

    from qwenvl_ft.training.loss import causal_lm_loss_from_hidden

    T, V, H = 2048, 8000, 64  # more rows than one 1024-row chunk
    weight = torch.randn(V, H, requires_grad=True)
    hidden = torch.randn(1, T, H, requires_grad=True)
    labels = torch.randint(0, V, (1, T))

    def loss():
        if kind == "standard":
            return ForCausalLMLoss(torch.nn.functional.linear(hidden, weight), labels, V)
        return causal_lm_loss_from_hidden(hidden, weight, labels)

    tracker = LiveBytes([weight, hidden, labels])
    with tracker:
        out = loss()
        out.backward()
        del out
    grads = {t.grad.untyped_storage()._plan_key for t in (weight, hidden)}
    assert abs(loss_bytes(kind, T, V, H, Precision(4, 4), True) / tracker.peak(grads) - 1) < 0.05


# -- a published figure ------------------------------------------------------------------------

# Qwen-VL README, finetuning profile: one A100-80GB, batch 1, 384 tokens (the original pads every
# sample to model_max_length), gradient checkpointing, loss from full logits. The scripts it ran:
# finetune_lora_single_gpu.sh (bf16, no DeepSpeed) and finetune_qlora_single_gpu.sh (Int4 GPTQ
# checkpoint, fp16, DeepSpeed ZeRO-2).
QWEN_VL_RUN = [
    "data.max_length=384",
    "train.per_device_batch_size=1",
    "train.gradient_checkpointing=true",
    "train.loss=standard",
]


@pytest.mark.parametrize(
    ("recipe", "engine", "published_gb"),
    [
        ("chat_lora", "train.deepspeed=null", 23.3),
        ("chat_int4_lora", "train.deepspeed=configs/deepspeed/zero2.json", 17.0),
    ],
)
def test_qwen_vl_chat_published_memory(recipe, engine, published_gb, capsys):
    plan = plan_recipe(load_recipe(f"recipes/qwen_vl/{recipe}.yaml", [*QWEN_VL_RUN, engine])).plan
    gb = plan.total_gib * GIB / 1e9
    with capsys.disabled():
        print(
            f"\nQwen-VL-Chat {recipe}: estimate {gb:.1f} GB ({plan.total_gib:.1f} GiB), published {published_gb} GB"
        )
    assert abs(gb / published_gb - 1) < 0.20


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_7b_lora_fits_an_a100(capsys):
    assert main(["plan", "recipes/qwen2_5_vl/7b_lora.yaml", "--gpu", "A100-80GB"]) == 0
    out = capsys.readouterr().out
    assert "FITS" in out and "DOES NOT FIT" not in out
    assert "published qwen2_5_vl-7b.json (model name Qwen2.5-VL-7B-Instruct)" in out
    assert "divided by 1 rank(s): --nproc 1" in out


def test_cli_7b_full_without_zero_does_not_fit_24gb(capsys):
    argv = ["plan", "recipes/qwen2_5_vl/7b_full.yaml", "train.deepspeed=null", "--gpu", "A10-24GB"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "biggest levers" in out
    assert "zero3_offload.json" in out and "train.mode: lora" in out


def test_cli_unknown_gpu_lists_known_ones(capsys):
    assert main(["plan", "recipes/qwen2_5_vl/7b_lora.yaml", "--gpu", "B300"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU 'B300'; known: H100-80GB, H200-141GB, A100-80GB, A100-40GB" in err


def test_cli_help_names_every_gpu(capsys):
    from qwenvl_ft.plan import GPUS_MIB

    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
    assert all(name in text for name in GPUS_MIB)
