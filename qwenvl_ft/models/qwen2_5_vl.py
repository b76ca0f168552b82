"""Qwen2.5-VL: Qwen2-VL's tokens and template; window-attention ViT with SwiGLU; absolute-time mRoPE.

Boxes: the same special tokens as Qwen2-VL, but in absolute pixels of the *resized* image
(what the model sees), so the text depends on min/max pixels.
"""

from __future__ import annotations

from dataclasses import replace

from .base import BlockShapes, BoxStyle, Shapes
from .qwen2_vl import SPECIAL_TOKEN_BOXES, SPECIAL_TOKENS, Qwen2VLFamily, text_shapes

SPECIAL_TOKENS_2_5 = SPECIAL_TOKENS + (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)


class Qwen2_5_VLFamily(Qwen2VLFamily):
    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)
    liger_patch = "apply_liger_kernel_to_qwen2_5_vl"
    processor_class = "Qwen2_5_VLProcessor"
    special_tokens = SPECIAL_TOKENS_2_5
    # Same sampling as Qwen2-VL; time enters the temporal rotary positions (`second_per_grid_ts`).
    video = replace(Qwen2VLFamily.video, timestamps="rope")
    boxes = BoxStyle(coords="resized_pixels", **SPECIAL_TOKEN_BOXES)
    # config.json of the Qwen/ repositories (meta-device totals 3,754,622,976 and 8,292,166,656).
    published_sizes = {
        "Qwen2.5-VL-3B-Instruct": "qwen2_5_vl-3b",
        "Qwen2.5-VL-7B-Instruct": "qwen2_5_vl-7b",
    }

    def rope_model_class(self):
        from transformers import Qwen2_5_VLModel

        return Qwen2_5_VLModel

    def model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def shapes(self, config) -> Shapes:
        v = config.vision_config  # RMSNorm, SwiGLU, fused qkv (window attention keeps no n x n scores)
        return Shapes(
            text=text_shapes(config.text_config),
            vocab=config.text_config.vocab_size,
            vision=BlockShapes(
                depth=v.depth,
                width=v.hidden_size,
                intermediate=v.intermediate_size,
                heads=v.num_heads,
                kv_heads=v.num_heads,
                head_dim=v.hidden_size // v.num_heads,
                fused_qkv=True,
            ),
            merger_width=v.hidden_size,
        )
