"""The native first-generation Qwen-VL: original names and config fields, components against
independent references, KV-cache decoding equal to a full forward, the original tokenizer file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from qwenvl_ft.models import get_family
from qwenvl_ft.models.qwen_vl.modeling import CACHE_FIELD, RMSNorm, rotary
from qwenvl_ft.models.qwen_vl.visual import VisualAttention, sincos_2d

# Keys of the published Qwen-VL-Chat config.json (model fields; auto_map / torch_dtype aside).
ORIGINAL_CONFIG_FIELDS = {
    "architectures",
    "attn_dropout_prob",
    "emb_dropout_prob",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "kv_channels",
    "layer_norm_epsilon",
    "max_position_embeddings",
    "model_type",
    "no_bias",
    "num_attention_heads",
    "num_hidden_layers",
    "rotary_emb_base",
    "rotary_pct",
    "scale_attn_weights",
    "seq_length",
    "tie_word_embeddings",
    "use_cache",
    "visual",
    "vocab_size",
}
ORIGINAL_NAMES = [
    "transformer.wte.weight",
    "transformer.h.0.ln_1.weight",
    "transformer.h.0.attn.c_attn.weight",
    "transformer.h.0.attn.c_attn.bias",
    "transformer.h.0.attn.c_proj.weight",
    "transformer.h.0.ln_2.weight",
    "transformer.h.0.mlp.w1.weight",
    "transformer.h.0.mlp.w2.weight",
    "transformer.h.0.mlp.c_proj.weight",
    "transformer.ln_f.weight",
    "transformer.visual.conv1.weight",
    "transformer.visual.positional_embedding",
    "transformer.visual.ln_pre.weight",
    "transformer.visual.transformer.resblocks.0.attn.in_proj.weight",
    "transformer.visual.transformer.resblocks.0.mlp.c_fc.weight",
    "transformer.visual.attn_pool.query",
    "transformer.visual.attn_pool.pos_embed",
    "transformer.visual.attn_pool.kv_proj.weight",
    "transformer.visual.attn_pool.attn.in_proj_weight",
    "transformer.visual.attn_pool.attn.out_proj.weight",
    "transformer.visual.attn_pool.ln_q.weight",
    "transformer.visual.attn_pool.ln_kv.weight",
    "transformer.visual.ln_post.weight",
    "transformer.visual.proj",
    "lm_head.weight",
]


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("qwen_vl")


def test_checkpoint_has_the_original_names_and_config_fields(model_dir):
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert set(ORIGINAL_NAMES) <= keys
    # Only c_attn has a bias in the language model.
    assert {k for k in keys if k.startswith("transformer.h.0.") and k.endswith(".bias")} == {
        "transformer.h.0.attn.c_attn.bias"
    }
    config = json.loads((model_dir / "config.json").read_text())
    assert ORIGINAL_CONFIG_FIELDS <= set(config) and config["model_type"] == "qwen"
    assert set(config["visual"]) >= {
        "heads",
        "image_size",
        "image_start_id",
        "layers",
        "mlp_ratio",
        "output_dim",
        "patch_size",
        "width",
    }
    assert config["visual"]["image_start_id"] == 151857


def test_visual_attention_equals_multihead_attention_with_repacked_weights():
    """The per-head [q|k|v] packing, checked against PyTorch's MultiheadAttention ([Q; K; V] packing)."""
    torch.manual_seed(0)
    width, heads = 32, 4
    ours = VisualAttention(width, heads)
    ref = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    hd = width // heads
    w = ours.in_proj.weight.detach().view(heads, 3, hd, width)
    bias = ours.in_proj.bias.detach().view(heads, 3, hd)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([w[:, i].reshape(width, width) for i in range(3)]))
        ref.in_proj_bias.copy_(torch.cat([bias[:, i].reshape(width) for i in range(3)]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, 10, width)
    assert torch.allclose(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-6)


def test_sincos_table_matches_the_mae_formula():
    """Independent numpy transcription of MAE's get_2d_sincos_pos_embed (float32 throughout)."""
    dim, grid = 16, 4
    gh = np.arange(grid, dtype=np.float32)
    gw = np.arange(grid, dtype=np.float32)
    mesh = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid, grid)

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float32) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    expected = np.concatenate([one_d(dim // 2, mesh[0]), one_d(dim // 2, mesh[1])], axis=1)
    assert np.allclose(sincos_2d(dim, grid).numpy(), expected, atol=1e-6)


def test_rmsnorm_and_rotary_against_references():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 64)
    ours = RMSNorm(64, 1e-6)
    ref = torch.nn.RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        ours.weight.uniform_()
        ref.weight.copy_(ours.weight)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)
    # Rotary over the full head dimension with rotate_half, written out for position p, pair i:
    q = torch.randn(1, 1, 3, 8)
    out = rotary(q, torch.tensor([[0, 1, 7]]), 10000.0)
    for p_idx, p in enumerate((0, 1, 7)):
        for i in range(4):
            theta = p / 10000 ** (2 * i / 8)
            a, b = q[0, 0, p_idx, i], q[0, 0, p_idx, i + 4]
            assert torch.isclose(out[0, 0, p_idx, i], a * np.cos(theta) - b * np.sin(theta), atol=1e-5)
            assert torch.isclose(out[0, 0, p_idx, i + 4], b * np.cos(theta) + a * np.sin(theta), atol=1e-5)


def image_prompt(tok, n_images: int = 1) -> torch.Tensor:
    text = (
        "<|im_start|>user\n"
        + "".join(f"Picture {i + 1}: <img>" + "<imgpad>" * 256 + "</img>\n" for i in range(n_images))
        + "What is it?<|im_end|>\n<|im_start|>assistant\nIt is"
    )
    return torch.tensor([tok(text)["input_ids"]])


def test_eager_and_sdpa_agree_and_images_change_the_output(model_dir):
    fam = get_family("qwen_vl")
    tok = fam.load_processor(str(model_dir)).tokenizer
    ids = image_prompt(tok, 2)
    pixels = torch.randn(2, 3, 448, 448)
    outs = {}
    for impl in ("eager", "sdpa"):
        model = fam.load_model(str(model_dir), dtype=torch.float32, attn_implementation=impl).eval()
        with torch.no_grad():
            outs[impl] = model(input_ids=ids, pixel_values=pixels).logits
    assert torch.allclose(outs["eager"], outs["sdpa"], atol=1e-4)
    with torch.no_grad():
        other = model(input_ids=ids, pixel_values=torch.randn(2, 3, 448, 448)).logits
    assert not torch.allclose(outs["sdpa"][:, -1], other[:, -1], atol=1e-4)


def test_kv_cache_decoding_equals_a_full_forward(model_dir):
    fam = get_family("qwen_vl")
    model = fam.load_model(str(model_dir), dtype=torch.float32).eval()
    ids = image_prompt(fam.load_processor(str(model_dir)).tokenizer)
    pixels = torch.randn(1, 3, 448, 448)
    extra = torch.tensor([[1234, 5678, 42, 7]])
    full_ids = torch.cat([ids, extra], dim=1)
    with torch.no_grad():
        full = model(input_ids=full_ids, pixel_values=pixels, use_cache=False).logits
        out = model(input_ids=ids, pixel_values=pixels, use_cache=True)
        steps = [out.logits[:, -1]]
        cache = getattr(out, CACHE_FIELD)  # `cache` from transformers 5.24, `past_key_values` before
        for t in range(extra.size(1)):
            out = model(input_ids=extra[:, t : t + 1], **{CACHE_FIELD: cache}, use_cache=True)
            steps.append(out.logits[:, -1])
    for k, logits in enumerate(steps):
        assert torch.allclose(logits, full[:, ids.size(1) - 1 + k], atol=1e-4)
    with torch.no_grad():  # greedy generation with and without the cache
        a = model.generate(ids, pixel_values=pixels, max_new_tokens=6, do_sample=False, use_cache=True)
        b = model.generate(ids, pixel_values=pixels, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(a, b)


def test_bad_image_span_is_named(model_dir):
    fam = get_family("qwen_vl")
    model = fam.load_model(str(model_dir), dtype=torch.float32).eval()
    tok = fam.load_processor(str(model_dir)).tokenizer
    ids = torch.tensor([tok("Picture 1: <img>" + "<imgpad>" * 10 + "</img>\nHi")["input_ids"]])
    with pytest.raises(
        ValueError, match=r"image 1: the span between <img> and </img> holds 10 tokens, not 256"
    ):
        model(input_ids=ids, pixel_values=torch.zeros(1, 3, 448, 448))


def test_original_layout_with_qwen_tiktoken_loads(model_dir, tmp_path):
    """An original checkpoint ships qwen.tiktoken (no tokenizer.json) and no preprocessor config."""
    from qwenvl_ft.models.tokenizer import qwen_vocab_file

    original = tmp_path / "Qwen-VL-Chat"
    shutil.copytree(model_dir, original)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "chat_template.jinja",
    ):
        (original / name).unlink()
    shutil.copy(qwen_vocab_file(), original / "qwen.tiktoken")
    config = json.loads((original / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_qwen.QWenConfig",
        "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
    }
    config.update(
        use_flash_attn="auto", use_dynamic_ntk=True, use_logn_attn=True, bf16=False, fp16=False, fp32=False
    )
    (original / "config.json").write_text(json.dumps(config))
    fam = get_family("qwen_vl")
    proc = fam.load_processor(str(original))
    ids = {
        t: proc.tokenizer.convert_tokens_to_ids(t)
        for t in ("<|im_start|>", "<img>", "</img>", "<imgpad>", "<ref>")
    }
    assert ids == {
        "<|im_start|>": 151644,
        "<img>": 151857,
        "</img>": 151858,
        "<imgpad>": 151859,
        "<ref>": 151851,
    }
    assert proc.images([__import__("PIL").Image.new("RGB", (640, 480))])["pixel_values"].shape == (
        1,
        3,
        448,
        448,
    )
    model = fam.load_model(str(original), dtype=torch.float32)  # no remote code, original config fields kept
    assert model.config.use_logn_attn is True


def test_make_tiny_overrides_reach_the_config_and_the_processor(tmp_path):
    """A tower built for 112-px images gets a processor that resizes to 112 px, not the published 448."""
    from PIL import Image

    from qwenvl_ft.tiny import make_tiny

    fam = get_family("qwen_vl")
    out = tmp_path / "m"
    make_tiny(fam, out, real_vocab=False, overrides={"visual.image_size": 112, "num_hidden_layers": 1})
    config = json.loads((out / "config.json").read_text())
    assert config["visual"]["image_size"] == 112 and config["num_hidden_layers"] == 1
    pixels = fam.load_processor(str(out)).images([Image.new("RGB", (300, 200))])["pixel_values"]
    assert pixels.shape == (1, 3, 112, 112)
    model = fam.load_model(str(out), dtype=torch.float32)
    assert model.transformer.visual(pixels).shape[1] == 256  # the resampler still gives 256 tokens
    for bad in ("visual.nope", "nope.image_size"):
        with pytest.raises(KeyError, match=bad.split(".")[-1] if bad.startswith("visual") else "nope"):
            make_tiny(fam, tmp_path / "bad", real_vocab=False, overrides={bad: 1})
