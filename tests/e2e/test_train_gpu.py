"""GPU-only training checks (skipped without CUDA; CI never has a GPU).

- FSDP through the Trainer: on CPU, accelerate silently runs FSDP as plain DDP, so only a GPU proves it.
- ZeRO-3 LoRA on the published Qwen2.5-VL-3B architecture (random weights): real-size partitioning
  with zero.Init at load time and a gathered, non-empty adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data/demo/demo.jsonl"


@pytest.mark.parametrize(
    "extra", [(), ("data.packing=true", "data.pack_length=1024")], ids=["padded", "packed"]
)
def test_fsdp_full_fine_tuning(launch_train, tiny_model, tmp_path, extra):
    import torch

    launch_train(
        torch.cuda.device_count(),
        str(REPO / "recipes/tiny/qwen2_5_vl_lora.yaml"),
        f"model.path={tiny_model('qwen2_5_vl')}",
        f"output.dir={tmp_path}/out",
        f"data.train=[{{path: {DEMO}}}]",
        "train.mode=full",
        "train.fsdp=true",
        "model.dtype=bf16",
        "train.max_steps=4",
        *extra,
    )
    state = json.loads((tmp_path / "out/trainer_state.json").read_text())
    assert all(h["loss"] == h["loss"] for h in state["log_history"] if "loss" in h)
    assert (tmp_path / "out/model.safetensors").is_file() or list(
        (tmp_path / "out").glob("model-*.safetensors")
    )


def test_zero3_lora_on_the_published_3b_architecture(launch_train, tmp_path):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from qwenvl_ft.models import get_family
    from qwenvl_ft.models.processor import VLProcessor
    from qwenvl_ft.models.tokenizer import build_tokenizer

    family = get_family("qwen2_5_vl")
    tok = build_tokenizer(family.special_tokens, family.chat_template, real_vocab=True)
    config = Qwen2_5_VLConfig(  # Qwen2.5-VL-3B-Instruct's published config
        text_config=dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_position_embeddings=128000,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
            tokens_per_second=2,
        ),
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )
    model_dir = tmp_path / "qwen2_5_vl_3b_random"
    Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(model_dir)
    VLProcessor.for_family(family, tok).save_pretrained(model_dir)
    launch_train(
        torch.cuda.device_count(),
        str(REPO / "recipes/qwen2_5_vl/3b_lora.yaml"),
        f"model.path={model_dir}",
        f"output.dir={tmp_path}/out",
        f"data.train=[{{path: {DEMO}}}]",
        "train.max_steps=2",
        "train.deepspeed=configs/deepspeed/zero3.json",
        "train.resume=null",
    )
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "out/adapter_model.safetensors"))
    assert adapter and all(t.numel() > 0 for t in adapter.values())


@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_packed_row_matches_samples_alone_on_gpu(tiny_model, attn):
    """Flash attention reads the per-sample spans from the text position ids (cu_seqlens)."""
    import torch

    from qwenvl_ft.data.collate import PaddingCollator
    from qwenvl_ft.data.encode import encode
    from qwenvl_ft.data.packing import PackingCollator
    from qwenvl_ft.models import get_family

    if attn == "flash_attention_2":
        pytest.importorskip("flash_attn")
    import sys

    sys.path.insert(0, str(REPO / "tests/unit/training"))
    from test_packed_forward import conversations
    from transformers import AutoConfig

    family = get_family("qwen2_5_vl")
    path = tiny_model("qwen2_5_vl")
    processor = family.load_processor(str(path))
    model = family.load_model(str(path), dtype=torch.bfloat16, attn_implementation=attn).cuda().eval()
    config = AutoConfig.from_pretrained(path)
    encs = [encode(c, processor, images) for c, images in conversations()]
    rows = [
        [
            (
                e,
                family.position_ids(
                    config,
                    torch.tensor(e.input_ids),
                    torch.tensor(e.mm_token_type_ids),
                    image_grid_thw=e.image_grid_thw,
                ),
            )
            for e in encs
        ]
    ]
    batch = {
        k: v.cuda() if torch.is_tensor(v) else v for k, v in PackingCollator(0)(rows).items() if k != "labels"
    }
    with torch.no_grad():
        logits = model(**batch).logits[0].float()
        start = 0
        for e in encs:
            one = {k: v.cuda() for k, v in PaddingCollator(0, None)([e]).items() if k != "labels"}
            alone = model(**one, use_cache=False).logits[0].float()
            n = len(e.input_ids)
            assert (logits[start : start + n] - alone).abs().max() < 0.05 * alone.abs().max()
            start += n
