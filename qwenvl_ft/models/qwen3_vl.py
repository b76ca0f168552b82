"""Qwen3-VL: ViT with patch 16 and DeepStack mergers, interleaved mRoPE, no default system prompt.

Boxes: plain text `[x1, y1, x2, y2]` in [0, 1000) of the image, the format Qwen3-VL answers in;
the referring expression is written as plain text.
"""

from __future__ import annotations

from .base import BlockShapes, BoxStyle, ChatFormat, ModulePaths, Shapes, VideoBudget, VisionBudget
from .qwen2_5_vl import SPECIAL_TOKENS_2_5
from .qwen2_vl import Qwen2VLFamily, text_shapes

SPECIAL_TOKENS_3 = SPECIAL_TOKENS_2_5 + ("<tool_response>", "</tool_response>", "<think>", "</think>")

# The official Qwen3-VL template's rendering of system, user and assistant turns with images and
# videos (its tool-calling branches are left out). Unlike Qwen2-VL it adds no default system prompt.
CHAT_TEMPLATE_3 = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{%- if not (loop.first and message.role == 'system') %}"
    "{{- '<|im_start|>' + message.role + '\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Picture ' ~ image_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Video ' ~ video_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

PATHS_3 = ModulePaths(
    vision="model.visual",
    merger=("model.visual.merger", "model.visual.deepstack_merger_list"),
    language=("model.language_model",),
    embeddings="model.language_model.embed_tokens",
    lm_head="lm_head",
    after_vision="model.language_model",
)

CHAT_3 = ChatFormat(
    default_system=None,
    image_open="<|vision_start|>",
    image_pad="<|image_pad|>",
    image_close="<|vision_end|>",
    video_pad="<|video_pad|>",
)

BOXES_3 = BoxStyle(
    ref="{}",
    box="[{x1}, {y1}, {x2}, {y2}]",
    coords="norm1000",
    box_pattern=r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]",
)

VISION_3 = VisionBudget(
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    min_pixels=65536,  # published preprocessor_config: shortest_edge 65536, longest_edge 16777216
    max_pixels=16777216,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
)

# qwen-vl-utils for Qwen3-VL: the same token counts as before, on 32-pixel merged patches.
VIDEO_3 = VideoBudget.qwen_vl_utils(32, timestamps="text")


def vision_shapes_3(v) -> BlockShapes:
    """The Qwen3-VL vision tower (and Qwen3.5's): LayerNorm, fc1 -> GELU(tanh) -> fc2, fused qkv."""
    return BlockShapes(
        depth=v.depth,
        width=v.hidden_size,
        intermediate=v.intermediate_size,
        heads=v.num_heads,
        kv_heads=v.num_heads,
        head_dim=v.hidden_size // v.num_heads,
        gated_mlp=False,
        rms_norm=False,
        fused_qkv=True,
    )


class Qwen3VLFamily(Qwen2VLFamily):
    name = "qwen3_vl"
    title = "Qwen3-VL"
    model_types = ("qwen3_vl",)
    liger_patch = "apply_liger_kernel_to_qwen3_vl"
    processor_class = "Qwen3VLProcessor"
    special_tokens = SPECIAL_TOKENS_3
    paths = PATHS_3
    chat = CHAT_3
    boxes = BOXES_3
    vision = VISION_3
    video = VIDEO_3
    chat_template = CHAT_TEMPLATE_3
    retrieval = True  # Qwen3-VL-Embedding / -Reranker 2B and 8B are Qwen3-VL checkpoints
    # config.json of the Qwen/ repositories (meta-device totals 4,437,815,808 and 8,767,123,696).
    published_sizes = {
        "Qwen3-VL-4B-Instruct": "qwen3_vl-4b",
        "Qwen3-VL-8B-Instruct": "qwen3_vl-8b",
        # Trained from Qwen3-VL-8B-Instruct (the technical report): its architecture. Their own
        # config.json files were not found here; the 2B ones' base has no config shipped here.
        "Qwen3-VL-Embedding-8B": "qwen3_vl-8b",
        "Qwen3-VL-Reranker-8B": "qwen3_vl-8b",
    }

    def rope_model_class(self):
        from transformers import Qwen3VLModel

        return Qwen3VLModel

    def model_class(self):
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration

    def shapes(self, config) -> Shapes:
        v = config.vision_config  # q/k-norm in the decoder
        return Shapes(
            text=text_shapes(config.text_config, qk_norm=True),
            vocab=config.text_config.vocab_size,
            vision=vision_shapes_3(v),
            merger_width=v.hidden_size,
            mergers=1 + len(v.deepstack_visual_indexes),
        )

    def video_spans(self, grid, timestamps):
        # As transformers' Qwen3VLProcessor expands the template's <|vision_start|><|video_pad|><|vision_end|>:
        # each temporal patch gets its time as text and its own vision span, inside the outer pair.
        t, h, w = grid
        c, per_frame = self.chat, h * w // self.vision.merge_size**2
        spans: list[str | tuple[str, int]] = [(c.image_open, 1)]
        for seconds in timestamps:
            spans += [
                f"<{seconds:.1f} seconds>",
                (c.image_open, 1),
                (c.video_pad, per_frame),
                (c.image_close, 1),
            ]
        return [*spans, (c.image_close, 1)]
