"""Qwen3.5 / Qwen3.5-MoE: facts against the published files, the tiny checkpoints with plain
transformers, LoRA targets, full fine-tuning of the linear-attention parameters, the router loss,
and the planner's counts of the hybrid decoder worked out by hand."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from qwenvl_ft.models import detect_family, get_family
from qwenvl_ft.tiny import make_tiny
from qwenvl_ft.tiny.builders import Qwen3_5Tiny

REPO = Path(__file__).resolve().parents[3]

# tokenizer.json of Qwen/Qwen3.5-* (several public copies agree): the BPE ends at 248043.
PUBLISHED_IDS = {
    "<|endoftext|>": 248044,
    "<|im_start|>": 248045,
    "<|im_end|>": 248046,
    "<|object_ref_start|>": 248047,
    "<|box_start|>": 248049,
    "<|vision_start|>": 248053,
    "<|vision_end|>": 248054,
    "<|vision_pad|>": 248055,
    "<|image_pad|>": 248056,
    "<|video_pad|>": 248057,
    "<tool_call>": 248058,
    "<|fim_prefix|>": 248060,
    "<tool_response>": 248066,
    "<think>": 248068,
    "</think>": 248069,
    "<|audio_start|>": 248070,
    "<|audio_pad|>": 248076,
}
# The 15 mtp.* tensors of a dense checkpoint (one decoder layer, fc, three norms).
MTP_DENSE = {
    "mtp.fc.weight",
    "mtp.norm.weight",
    "mtp.pre_fc_norm_embedding.weight",
    "mtp.pre_fc_norm_hidden.weight",
    *(
        f"mtp.layers.0.{n}.weight"
        for n in (
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "self_attn.q_norm",
            "self_attn.k_norm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    built = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = tmp_path_factory.mktemp(f"tiny-{name}")
            make_tiny(get_family(name), built[name])
        return built[name]

    return get


# -- facts ------------------------------------------------------------------------------------------
def test_special_tokens_sit_at_the_published_ids():
    for name in ("qwen3_5", "qwen3_5_moe"):
        f = get_family(name)
        assert len(f.special_tokens) == 33  # 248044 .. 248076
        for token, token_id in PUBLISHED_IDS.items():
            assert f.first_special_id + f.special_tokens.index(token) == token_id, token


def test_config_token_ids_and_model_types_match_transformers():
    from transformers import Qwen3_5Config, Qwen3_5MoeConfig

    for cls in (Qwen3_5Config, Qwen3_5MoeConfig):
        c = cls()
        assert (c.image_token_id, c.video_token_id) == (248056, 248057)
        assert (c.vision_start_token_id, c.vision_end_token_id) == (248053, 248054)
    assert get_family("qwen3_5").model_types == (Qwen3_5Config.model_type,)
    assert get_family("qwen3_5_moe").model_types == (Qwen3_5MoeConfig.model_type,)


def test_vision_budget_boxes_and_positions_by_hand():
    f = get_family("qwen3_5")
    v = f.vision  # preprocessor_config.json of Qwen/Qwen3.5-2B-Base
    assert (v.patch_size, v.merge_size, v.temporal_patch_size) == (16, 2, 2)
    assert (v.min_pixels, v.max_pixels) == (65536, 16777216)
    assert v.image_mean == v.image_std == (0.5, 0.5, 0.5)
    # 1000x800: round(800/32)=25 -> 800, round(1000/32)=31 -> 992; 25*31 = 775 tokens.
    assert f.resized_size(800, 1000) == (800, 992)
    assert f.image_tokens(800, 1000) == 775
    # Box (48, 50, 107, 109) on 160x120: 300, 416.7 -> 417, 668.75 -> 669, 908.3 -> 908.
    assert f.format_box((48, 50, 107, 109), (160, 120), (320, 224)) == "[300, 417, 669, 908]"
    assert f.generation_prompt(False) == "assistant\n<think>\n\n</think>\n\n"


def test_position_ids_by_hand():
    """Text 0..3, a 1x4x4 grid merged to 2x2 at t=4 (h, w offsets 0/1), text again from 4 + 2 = 6."""
    from transformers import Qwen3_5Config

    f = get_family("qwen3_5")
    ids = torch.tensor([248045, 1, 2, 248053, *[248056] * 4, 248054, 3])
    mm = (ids == 248056).long()
    pos = f.position_ids(Qwen3_5Config(), ids, mm, image_grid_thw=torch.tensor([[1, 4, 4]]))
    assert pos.tolist() == [
        [0, 1, 2, 3, 4, 4, 4, 4, 6, 7],
        [0, 1, 2, 3, 4, 4, 5, 5, 6, 7],
        [0, 1, 2, 3, 4, 5, 4, 5, 6, 7],
    ]


# -- tiny checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5_moe"])
def test_tiny_checkpoint_loads_with_plain_transformers(tiny, name):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    path = tiny(name)
    assert detect_family(path).name == name
    model = AutoModelForImageTextToText.from_pretrained(path)
    t = model.config.text_config
    assert type(model).__name__ == get_family(name).model_class().__name__
    assert t.layer_types.count("linear_attention") >= 2 and "full_attention" in t.layer_types
    assert t.vocab_size == 248320
    tok = AutoTokenizer.from_pretrained(path)
    for token, token_id in PUBLISHED_IDS.items():
        assert tok.convert_tokens_to_ids(token) == token_id
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, enable_thinking=False)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    # <|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n...
    start = ids.index(248053)
    assert ids[0] == 248045 and ids[start : start + 3] == [248053, 248056, 248054]
    assert ids.count(248046) == 1 and ids.count(248045) == 2
    tail = tok.encode("<|im_start|>" + get_family(name).generation_prompt(False))
    assert ids[-len(tail) :] == tail and 248068 in tail and 248069 in tail
    on = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert on.endswith("<|im_start|>" + get_family(name).generation_prompt(None))


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5_moe"])
def test_tiny_checkpoint_carries_mtp_tensors_that_transformers_drops(tiny, name):
    from safetensors import safe_open

    path = tiny(name)
    with safe_open(path / "model.safetensors", "pt") as f:
        mtp = {k: f.get_slice(k).get_shape() for k in f.keys() if k.startswith("mtp.")}
    if name == "qwen3_5":
        assert set(mtp) == MTP_DENSE
    else:  # the routed experts fused, as in the published shards; router and shared expert
        moe = {n for n in MTP_DENSE if ".mlp." not in n} | {
            f"mtp.layers.0.mlp.{n}"
            for n in (
                "gate.weight",
                "experts.gate_up_proj",
                "experts.down_proj",
                "shared_expert.gate_proj.weight",
                "shared_expert.up_proj.weight",
                "shared_expert.down_proj.weight",
                "shared_expert_gate.weight",
            )
        }
        assert set(mtp) == moe
        assert mtp["mtp.layers.0.mlp.experts.gate_up_proj"] == [4, 128, 64]  # (E, 2I, H)
    assert mtp["mtp.fc.weight"] == [64, 128]  # [embedding; hidden] -> hidden
    assert mtp["mtp.layers.0.self_attn.q_proj.weight"] == [2 * 4 * 32, 64]  # query + output gate
    model = get_family(name).load_model(str(path))
    assert not [k for k in model.state_dict() if "mtp" in k]
    assert get_family(name).kept_tensors == ("mtp.",)


# -- training ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5_moe"])
def test_lora_targets_every_language_linear_and_no_vision(tiny, name):
    from peft import LoraConfig, get_peft_model

    f = get_family(name)
    model = f.load_model(str(tiny(name)))
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=f.lora_target_regex))
    hit = {n.removeprefix("base_model.model.") for n, m in peft.named_modules() if hasattr(m, "lora_A")}
    layers = "model.language_model.layers"
    for i in (0, 1, 2):  # linear attention
        for p in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"):
            assert f"{layers}.{i}.linear_attn.{p}" in hit
    for p in "qkvo":  # full attention
        assert f"{layers}.3.self_attn.{p}_proj" in hit
    mlp = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    if name == "qwen3_5_moe":
        mlp = tuple(p.replace("mlp.", "mlp.shared_expert.") for p in mlp)
        assert not [n for n in hit if "experts" in n or n.endswith("mlp.gate") or "shared_expert_gate" in n]
    for i in range(4):
        assert {f"{layers}.{i}.{p}" for p in mlp} <= hit
    assert not [n for n in hit if "visual" in n]
    # Every language Linear but the MoE gates is a target; nothing else is.
    expected = {n for n in linears if n.startswith(layers) and not n.endswith("shared_expert_gate")}
    assert hit == expected


def test_full_fine_tuning_trains_conv1d_a_log_and_dt_bias(tiny):
    from qwenvl_ft.config import load_recipe
    from qwenvl_ft.training.setup import adapt, load_model, upcast_trainable

    f = get_family("qwen3_5")
    cfg = load_recipe(
        REPO / "recipes/tiny/qwen3_5_lora.yaml",
        [f"model.path={tiny('qwen3_5')}", "model.dtype=bf16", "train.mode=full"],
    )
    model = adapt(load_model(cfg, f), cfg, f, is_base=False)
    upcast_trainable(model)
    params = dict(model.named_parameters())
    names = [
        "model.language_model.layers.0.linear_attn.conv1d.weight",
        "model.language_model.layers.0.linear_attn.A_log",
        "model.language_model.layers.0.linear_attn.dt_bias",
    ]
    for n in names:
        assert params[n].requires_grad and params[n].dtype == torch.float32
    assert not params["model.visual.patch_embed.proj.weight"].requires_grad  # frozen by default
    before = {n: params[n].detach().clone() for n in names}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.randint(0, 1000, (1, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    for n in names:
        assert not torch.equal(before[n], params[n].detach()), n


def test_moe_router_loss_is_on_in_the_loss_and_logged(tiny, capsys):
    from qwenvl_ft.config import load_recipe
    from qwenvl_ft.training.data_wait import DataWait
    from qwenvl_ft.training.setup import load_model
    from qwenvl_ft.training.trainer import VLTrainer

    f = get_family("qwen3_5_moe")
    cfg = load_recipe(REPO / "recipes/tiny/qwen3_5_moe_lora.yaml", [f"model.path={tiny('qwen3_5_moe')}"])
    model = load_model(cfg, f)
    t = model.config.text_config
    assert t.output_router_logits and t.router_aux_loss_coef == 0.001
    ids = torch.randint(0, 1000, (1, 24))
    out = model(input_ids=ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    # The model's loss is cross-entropy + coef * aux: recompute the cross-entropy alone.
    ce = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    torch.testing.assert_close(out.loss, ce + 0.001 * out.aux_loss)
    # Logged: the trainer's log line carries the mean aux loss of the steps since the last one.
    trainer = VLTrainer.__new__(VLTrainer)
    trainer._tokens, trainer._last_log = 0, time.perf_counter()
    trainer._metrics = {"train": {"aux_loss": [out.aux_loss.detach()]}, "eval": {}}
    trainer.args = type("A", (), {"world_size": 1})()
    trainer.data_wait = DataWait()  # what __init__ sets up (nothing timed yet)
    seen = {}
    import transformers

    orig = transformers.Trainer.log
    transformers.Trainer.log = lambda self, logs, start_time=None: seen.update(logs)
    try:
        trainer.log({"loss": 1.0})
    finally:
        transformers.Trainer.log = orig
    assert seen["aux_loss"] == pytest.approx(out.aux_loss.item(), rel=1e-5)


# -- planner ----------------------------------------------------------------------------------------
def _hand_language(h, layers, heads, kv, hd, k_heads, v_heads, dk, dv, mlp, conv=4) -> int:
    """Decoder parameters by hand: linear-attention and full-attention mixers, MLP, norms."""
    kd, vd = k_heads * dk, v_heads * dv
    linear = h * (2 * kd + vd) + h * vd + 2 * h * v_heads + (2 * kd + vd) * conv + 2 * v_heads + dv + vd * h
    full = h * 2 * heads * hd + 2 * h * kv * hd + heads * hd * h + 2 * hd  # q is query + gate
    n_full = layers // 4
    return (layers - n_full) * linear + n_full * full + layers * (mlp + 2 * h) + h


def test_published_language_counts_by_hand():
    from qwenvl_ft.plan import load_facts

    # Qwen3.5-27B: 64 layers (48 linear, 16 full), hidden 5120, MLP 17408, 24 / 4 heads of 256,
    # linear 16 key / 48 value heads of 128.
    f27 = load_facts("x", None, "qwen3_5-27b")
    assert f27.by_part["language"] == _hand_language(5120, 64, 24, 4, 256, 16, 48, 128, 128, 3 * 5120 * 17408)
    assert f27.by_part["language"] == 24_353_201_664
    # Qwen3.5-0.8B: 24 layers, hidden 1024, MLP 3584, 8 / 2 heads, linear 16 / 16 heads; tied head.
    f08 = load_facts("x", None, "qwen3_5-0.8b")
    assert f08.by_part["language"] == _hand_language(1024, 24, 8, 2, 256, 16, 16, 128, 128, 3 * 1024 * 3584)
    assert "lm_head" not in f08.by_part
    # Qwen3.5-2B: 24 layers, hidden 2048, MLP 6144, 8 / 2 heads, linear 16 / 16 heads; tied head.
    f2 = load_facts("x", None, "qwen3_5-2b")
    assert f2.by_part["language"] == _hand_language(2048, 24, 8, 2, 256, 16, 16, 128, 128, 3 * 2048 * 6144)
    assert "lm_head" not in f2.by_part
    # Qwen3.5-4B: 32 layers, hidden 2560, MLP 9216, 16 / 4 heads, linear 16 / 32 heads; tied head.
    f4 = load_facts("x", None, "qwen3_5-4b")
    assert f4.by_part["language"] == _hand_language(2560, 32, 16, 4, 256, 16, 32, 128, 128, 3 * 2560 * 9216)
    assert "lm_head" not in f4.by_part
    # Qwen3.5-9B: 32 layers, hidden 4096, MLP 12288, 16 / 4 heads, linear 16 / 32 heads.
    f9 = load_facts("x", None, "qwen3_5-9b")
    assert f9.by_part["language"] == _hand_language(4096, 32, 16, 4, 256, 16, 32, 128, 128, 3 * 4096 * 12288)
    # 35B-A3B: 256 experts of 512 (gate_up fused), a 512 shared expert and its scalar gate, a router.
    moe = 256 * 3 * 2048 * 512 + 3 * 2048 * 512 + 2048 + 256 * 2048
    f35 = load_facts("x", None, "qwen3_5_moe-35b-a3b")
    assert f35.by_part["language"] == _hand_language(2048, 40, 16, 2, 256, 16, 32, 128, 128, moe)
    # 122B-A10B: 48 layers, hidden 3072, 256 experts of 1024 (top 8), a 1024 shared expert, 32 / 2
    # heads, linear 16 / 64.
    moe_122 = 256 * 3 * 3072 * 1024 + 3 * 3072 * 1024 + 3072 + 256 * 3072
    f122 = load_facts("x", None, "qwen3_5_moe-122b-a10b")
    assert f122.by_part["language"] == _hand_language(3072, 48, 32, 2, 256, 16, 64, 128, 128, moe_122)
    # 397B-A17B: 60 layers, hidden 4096, 512 experts of 1024 (top 10), 32 / 2 heads, linear 16 / 64;
    # the meta-device total, 396.8 B, is the name's 397B.
    moe = 512 * 3 * 4096 * 1024 + 3 * 4096 * 1024 + 4096 + 512 * 4096
    f397 = load_facts("x", None, "qwen3_5_moe-397b-a17b")
    assert f397.by_part["language"] == _hand_language(4096, 60, 32, 2, 256, 16, 64, 128, 128, moe)
    assert round(sum(f397.by_part.values()) / 1e9) == 397
    # Totals without the mtp.* head (transformers drops it): the cards' 0.9B / 27.8B / 36B include it.
    assert sum(f08.by_part.values()) == 852_985_920
    assert sum(f27.by_part.values()) == 27_356_728_560
    assert sum(f35.by_part.values()) == 35_107_181_936
    assert sum(f2.by_part.values()) == 2_213_241_664
    assert sum(f4.by_part.values()) == 4_539_265_536
    assert sum(f122.by_part.values()) == 122_562_817_776

    # Adding the mtp.* head by hand (fc 2h -> h, three norms, one full-attention layer with its MLP or
    # MoE) gives the parameter totals read from the released checkpoints' safetensors headers.
    def mtp(h, heads, kv, mlp, hd=256):
        attention = h * 2 * heads * hd + 2 * h * kv * hd + heads * hd * h + 2 * hd
        return 2 * h * h + 3 * h + attention + mlp + 2 * h

    assert sum(f08.by_part.values()) + mtp(1024, 8, 2, 3 * 1024 * 3584) == 873_438_784
    assert sum(f2.by_part.values()) + mtp(2048, 8, 2, 3 * 2048 * 6144) == 2_274_069_824
    assert sum(f4.by_part.values()) + mtp(2560, 16, 4, 3 * 2560 * 9216) == 4_659_865_088
    assert sum(f122.by_part.values()) + mtp(3072, 32, 2, moe_122) == 125_086_497_008


def test_plan_describes_the_hybrid_decoder_and_says_when_kernels_are_missing():
    import importlib.util

    from qwenvl_ft.config import load_recipe
    from qwenvl_ft.plan import format_plan, plan_recipe

    cfg = load_recipe(REPO / "recipes/qwen3_vl/8b_lora.yaml", ["model.path=Qwen/Qwen3.5-27B"])
    report = plan_recipe(cfg)
    sh = report.facts.shapes
    assert (sh.linear.layers, sh.text.depth, sh.linear.first_full) == (48, 64, 3)
    text = format_plan(report)
    assert "Qwen3.5" in text and "published qwen3_5-27b.json" in text
    kernels = importlib.util.find_spec("fla") and importlib.util.find_spec("causal_conv1d")
    assert ("pip install 'qwenvl-ft[qwen3_5]'" in text) == (not kernels)
    assert report.facts.family.speed_notes("cpu") == []  # the torch path is the only one there
    # A linear-attention block keeps more than a full one here (the conv and delta-rule inputs).
    from qwenvl_ft.plan.activations import Precision, block_saved, linear_block_saved

    p = Precision(2, 2)
    assert linear_block_saved(sh.text, sh.linear, 1, p, False) > block_saved(sh.text, 1, p, False)
    # The MoE decoder: an MLP as wide as the top-8 experts plus the shared one (8 * 512 + 512).
    moe = load_recipe(REPO / "recipes/qwen3_vl/8b_lora.yaml", ["model.path=Qwen/Qwen3.5-35B-A3B"])
    moe_report = plan_recipe(moe)
    assert moe_report.facts.shapes.text.intermediate == 4608
    assert moe_report.plan.total_gib > 0


def test_lora_on_fused_experts_is_a_recipe_choice_that_trains_and_merges(tiny):
    from qwenvl_ft.config import ConfigError, load_recipe
    from qwenvl_ft.training.setup import adapt, load_model

    f = get_family("qwen3_5_moe")
    cfg = load_recipe(
        REPO / "recipes/tiny/qwen3_5_moe_lora.yaml",
        [f"model.path={tiny('qwen3_5_moe')}", "lora.experts=true"],
    )
    model = adapt(load_model(cfg, f), cfg, f, is_base=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    for layer in range(4):  # both fused weights of every layer carry an adapter
        assert sum(f"layers.{layer}.mlp.experts." in n and "lora_B" in n for n in trainable) == 2
    ids = torch.randint(0, 1000, (1, 16))
    before = model(input_ids=ids).logits.detach()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "experts" in n and "lora_B" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)  # the router sends tokens to them
    with torch.no_grad():  # an adapter step: the output moves, and merging keeps it exactly
        for n, p in model.named_parameters():
            if "experts" in n and "lora_B" in n:
                p.add_(0.05)
    adapted = model(input_ids=ids).logits.detach()
    assert (adapted - before).abs().max() > 1e-3
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)
    dense = load_recipe(
        REPO / "recipes/tiny/qwen3_5_lora.yaml", [f"model.path={tiny('qwen3_5')}", "lora.experts=true"]
    )
    with pytest.raises(ConfigError, match=r"lora.experts: Qwen3.5 has no fused expert weights"):
        adapt(load_model(dense, get_family("qwen3_5")), dense, get_family("qwen3_5"), is_base=False)


def test_linear_attention_activations_match_cpu_measurement(capsys):
    """What autograd keeps for two Gated DeltaNet blocks on transformers' torch path (CPU, fp32),
    counted by storage, against `linear_block_saved` (value heads 3x the key heads, 3 chunks)."""
    from transformers import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5TextModel

    from qwenvl_ft.models.base import BlockShapes, LinearAttentionShapes
    from qwenvl_ft.plan.activations import Precision, decoder_extra, linear_block_saved

    T, h = 192, 768
    config = Qwen3_5TextConfig(
        hidden_size=h,
        intermediate_size=2048,
        num_hidden_layers=2,
        layer_types=["linear_attention"] * 2,
        linear_num_key_heads=4,
        linear_num_value_heads=12,
        vocab_size=512,
        rope_parameters=dict(Qwen3_5Tiny.rope, mrope_section=[11, 11, 10]),
    )
    torch.manual_seed(0)
    model = Qwen3_5TextModel(config).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    ids = torch.randint(0, 512, (1, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, use_cache=False).last_hidden_state.sum().backward()
    b = BlockShapes(depth=2, width=h, intermediate=2048, heads=16, kv_heads=4, head_dim=256, qk_norm=True)
    lin = LinearAttentionShapes(2, 4, 12, 128, 128, 4)
    p = Precision(4, 4, 4)
    est = 2 * linear_block_saved(b, lin, T, p, True) + decoder_extra(b, T, p, True)
    measured = sum(saved.values())
    with capsys.disabled():
        print(f"\nGated DeltaNet x2, {T} tokens: saved {measured / 2**20:.1f} MiB (est {est / 2**20:.1f})")
    assert abs(est / measured - 1) < 0.15
