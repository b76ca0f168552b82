"""Qwen2-VL: dynamic-resolution ViT (patch 14, 2x2 merge), mRoPE, ChatML with vision tokens.

Boxes: `<|object_ref_start|>text<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`,
integers in [0, 1000) of the image.
"""

from __future__ import annotations

from .base import (
    BlockShapes,
    BoxStyle,
    ChatFormat,
    ModelFamily,
    ModulePaths,
    Shapes,
    VideoBudget,
    VisionBudget,
)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Official Qwen2-VL / Qwen2.5-VL template: a default system prompt when the conversation has none.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PATHS = ModulePaths(
    vision="model.visual",
    merger=("model.visual.merger",),
    language=("model.language_model",),
    embeddings="model.language_model.embed_tokens",
    lm_head="lm_head",
    after_vision="model.language_model",
)

CHAT = ChatFormat(
    default_system="You are a helpful assistant.",
    image_open="<|vision_start|>",
    image_pad="<|image_pad|>",
    image_close="<|vision_end|>",
    video_pad="<|video_pad|>",
)

# Every linear layer of the decoder; the vision blocks also have gate/up/down_proj, hence the path.
LORA_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"

SPECIAL_TOKEN_BOXES = dict(
    ref="<|object_ref_start|>{}<|object_ref_end|>",
    box="<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>",
    box_pattern=r"<\|box_start\|>\s*\((\d+),\s*(\d+)\)\s*,\s*\((\d+),\s*(\d+)\)\s*<\|box_end\|>",
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def text_shapes(t, qk_norm: bool = False) -> BlockShapes:
    """The decoder of every transformers-native generation (text_config field names)."""
    return BlockShapes(
        depth=t.num_hidden_layers,
        width=t.hidden_size,
        intermediate=t.intermediate_size,
        heads=t.num_attention_heads,
        kv_heads=t.num_key_value_heads,
        head_dim=getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads,
        qk_norm=qk_norm,
    )


class Qwen2VLFamily(ModelFamily):
    name = "qwen2_vl"
    title = "Qwen2-VL"
    model_types = ("qwen2_vl",)
    liger_patch = "apply_liger_kernel_to_qwen2_vl"
    processor_class = "Qwen2VLProcessor"
    special_tokens = SPECIAL_TOKENS
    paths = PATHS
    chat = CHAT
    boxes = BoxStyle(coords="norm1000", **SPECIAL_TOKEN_BOXES)
    vision = VisionBudget(
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=56 * 56,
        max_pixels=28 * 28 * 16384,  # 12845056, the published preprocessor_config
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    video = VideoBudget.qwen_vl_utils(28, timestamps="none")
    lora_target_regex = LORA_TARGETS
    chat_template = CHAT_TEMPLATE
    # config.json of the Qwen/ repositories on the Hugging Face Hub (meta-device totals 2,208,985,600
    # and 8,291,375,616 parameters, the published 2.21B and 8.29B).
    published_sizes = {
        "Qwen2-VL-2B-Instruct": "qwen2_vl-2b",
        "Qwen2-VL-2B": "qwen2_vl-2b",
        "Qwen2-VL-7B-Instruct": "qwen2_vl-7b",
        "Qwen2-VL-7B": "qwen2_vl-7b",
    }

    def model_class(self):
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration

    def rope_model_class(self):
        """The transformers class whose `get_rope_index` holds this generation's mRoPE rules."""
        from transformers import Qwen2VLModel

        return Qwen2VLModel

    def position_ids(
        self,
        config,
        input_ids,
        mm_token_type_ids,
        image_grid_thw=None,
        video_grid_thw=None,
        second_per_grid_ts=None,
    ):
        # transformers' own rope-index rules, called on a stand-in that holds only the config: the
        # method reads nothing else, and this runs in loader workers where no model exists.
        owner = self.rope_model_class()
        rope = type(
            "RopeIndex",
            (),
            {
                "get_rope_index": owner.get_rope_index,
                "get_vision_position_ids": owner.get_vision_position_ids,
                "config": config,
            },
        )()
        positions, _ = rope.get_rope_index(
            input_ids[None],
            mm_token_type_ids=mm_token_type_ids[None],
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            second_per_grid_ts=second_per_grid_ts,  # Qwen2.5-VL's seconds per temporal patch; others ignore it
        )
        return positions[:, 0]

    def video_spans(self, grid, timestamps):
        t, h, w = grid
        c = self.chat
        return [(c.image_open, 1), (c.video_pad, t * h * w // self.vision.merge_size**2), (c.image_close, 1)]

    def shapes(self, config) -> Shapes:
        v = config.vision_config  # LayerNorm, fc1 -> QuickGELU -> fc2, fused qkv
        return Shapes(
            text=text_shapes(config.text_config),
            vocab=config.text_config.vocab_size,
            vision=BlockShapes(
                depth=v.depth,
                width=v.embed_dim,
                intermediate=int(v.embed_dim * v.mlp_ratio),
                heads=v.num_heads,
                kv_heads=v.num_heads,
                head_dim=v.embed_dim // v.num_heads,
                gated_mlp=False,
                rms_norm=False,
                fused_qkv=True,
            ),
            merger_width=v.embed_dim,
        )
