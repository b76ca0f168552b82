"""Qwen2.5-VL: Qwen2-VL's tokens and template; window-attention ViT with SwiGLU; absolute-time mRoPE.

Boxes: the same special tokens as Qwen2-VL, but in absolute pixels of the *resized* image
(what the model sees), so the text depends on min/max pixels.
"""

from __future__ import annotations

from .base import BoxStyle, ModelFamily, VisionBudget
from .qwen2_vl import (
    CHAT,
    CHAT_TEMPLATE,
    CLIP_MEAN,
    CLIP_STD,
    LORA_TARGETS,
    PATHS,
    SPECIAL_TOKEN_BOXES,
    SPECIAL_TOKENS,
    TINY_MROPE,
    TINY_TEXT,
    tiny_token_ids,
    tiny_vocab_size,
)

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


class Qwen2_5_VLFamily(ModelFamily):
    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)
    processor_class = "Qwen2_5_VLProcessor"
    special_tokens = SPECIAL_TOKENS_2_5
    paths = PATHS
    chat = CHAT
    boxes = BoxStyle(coords="resized_pixels", **SPECIAL_TOKEN_BOXES)
    vision = VisionBudget(
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=56 * 56,
        max_pixels=28 * 28 * 16384,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    lora_target_regex = LORA_TARGETS
    chat_template = CHAT_TEMPLATE

    def model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def tiny_config(self, tokenizer):
        from transformers import Qwen2_5_VLConfig

        ids = tokenizer.convert_tokens_to_ids
        return Qwen2_5_VLConfig(
            text_config=dict(
                TINY_TEXT,
                vocab_size=tiny_vocab_size(tokenizer),
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 1000000.0,
                    "mrope_section": TINY_MROPE,
                },
                bos_token_id=ids("<|endoftext|>"),
                eos_token_id=ids("<|im_end|>"),
                pad_token_id=ids("<|endoftext|>"),
            ),
            vision_config=dict(
                depth=2,
                hidden_size=64,
                intermediate_size=128,
                num_heads=4,
                out_hidden_size=64,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                window_size=112,
                fullatt_block_indexes=[1],
                tokens_per_second=2,
            ),
            tie_word_embeddings=False,
            **tiny_token_ids(tokenizer),
        )
