"""First-generation Qwen-VL / Qwen-VL-Chat / Qwen-VL-Chat-Int4: the family's facts.

Checkpoints carry `model_type: "qwen"` and the original parameter names (`transformer.wte`,
`transformer.h.N.attn.c_attn`, `transformer.visual.*`). Each image is resized to 448x448 and
costs 256 resampler tokens between `<img>` and `</img>` (258 tokens with the two tags), and is
introduced as `Picture N: `. Boxes are `<ref>text</ref><box>(x1,y1),(x2,y2)</box>` in [0, 1000).

The model is native (`modeling.py`, `visual.py`): original checkpoints load without remote code.
"""

from __future__ import annotations

from ..base import BlockShapes, BoxStyle, ChatFormat, ModelFamily, ModulePaths, Shapes, VisionBudget

# tokenization_qwen.py: endoftext, im_start, im_end, 205 extras, then the nine image tokens.
SPECIAL_TOKENS_QWEN_VL = (
    ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    + tuple(f"<|extra_{i}|>" for i in range(205))
    + ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>")
)

# The original code builds prompts in Python (make_context); this is the same ChatML as Jinja.
# An image segment's `image` is its path or URL, written between <img> and </img>.
CHAT_TEMPLATE_QWEN_VL = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "Picture {{ image_count.value }}: <img>{{ content['image'] }}</img>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class QwenVLFamily(ModelFamily):
    name = "qwen_vl"
    title = "Qwen-VL (first generation)"
    model_types = ("qwen",)
    processor_class = "QwenVLProcessor"
    special_tokens = SPECIAL_TOKENS_QWEN_VL
    sequence_parallel = False
    no_sequence_parallel_reason = (
        "has no sequence parallelism: its blocks call their own attention (not transformers' "
        "interface) and its 448 px images take 256 tokens each, so its 2048-token samples fit one GPU"
    )
    paths = ModulePaths(
        vision="transformer.visual",
        # The original full fine-tuning freezes the ViT but trains the resampler (attn_pool).
        merger=("transformer.visual.attn_pool",),
        language=("transformer.wte", "transformer.h", "transformer.ln_f"),
        embeddings="transformer.wte",
        lm_head="lm_head",
        after_vision="transformer.drop",  # the dropout after the images are placed, before the blocks
    )
    chat = ChatFormat(
        default_system="You are a helpful assistant.",
        image_open="<img>",
        image_pad="<imgpad>",
        image_close="</img>",
        video_pad=None,
        image_prefix="Picture {n}: ",
        image_suffix="\n",
    )
    boxes = BoxStyle(
        ref="<ref>{}</ref>",
        box="<box>({x1},{y1}),({x2},{y2})</box>",
        coords="norm1000",
        box_pattern=r"<box>\s*\((\d+),\s*(\d+)\)\s*,\s*\((\d+),\s*(\d+)\)\s*</box>",
    )
    vision = VisionBudget(
        patch_size=14,
        merge_size=1,
        temporal_patch_size=1,
        min_pixels=448 * 448,
        max_pixels=448 * 448,
        image_mean=(0.48145466, 0.4578275, 0.40821073),
        image_std=(0.26862954, 0.26130258, 0.27577711),
        fixed_tokens=256,
        fixed_size=448,
    )
    # The original finetune.py targets: c_attn, attn.c_proj, w1, w2 (not the MLP's c_proj).
    lora_target_regex = r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.w1|mlp\.w2)"
    chat_template = CHAT_TEMPLATE_QWEN_VL
    # config.json of Qwen/Qwen-VL(-Chat) and Qwen/Qwen-VL-Chat-Int4 (GPTQ, 4 bits, groups of 128):
    # 9,655,886,592 parameters on the meta device, the published 9.6B.
    published_sizes = {
        "Qwen-VL": "qwen_vl",
        "Qwen-VL-Chat": "qwen_vl",
        "Qwen-VL-Chat-Int4": "qwen_vl-int4",
    }

    # Qwen-VL-Chat-Int4: AutoGPTQ quantized every linear layer of the decoder blocks, nothing else.
    gptq_blocks = "transformer.h"

    def model_class(self):
        from .modeling import QWenLMHeadModel

        return QWenLMHeadModel

    def load_processor(self, path, min_pixels=None, max_pixels=None):
        from . import modeling  # noqa: F401  registers model_type "qwen" before AutoTokenizer reads config.json

        return super().load_processor(path, min_pixels, max_pixels)

    def image_processor(self, path: str | None):
        from .image_processing import QwenVLImageProcessor

        return QwenVLImageProcessor.from_pretrained(path) if path is not None else QwenVLImageProcessor()

    def vision_keepalive(self, model):
        import torch

        vision = model.get_submodule(self.paths.vision)
        p = next(vision.parameters())
        return (
            0.0
            * vision(
                torch.zeros(1, 3, vision.image_size, vision.image_size, dtype=p.dtype, device=p.device)
            ).sum()
        )

    def shapes(self, config) -> Shapes:
        v = config.visual
        heads = config.num_attention_heads
        return Shapes(
            # One fused c_attn (q, k, v), no GQA; the MLP is c_proj(w1(x) * silu(w2(x))), each half wide.
            text=BlockShapes(
                depth=config.num_hidden_layers,
                width=config.hidden_size,
                intermediate=config.intermediate_size // 2,
                heads=heads,
                kv_heads=heads,
                head_dim=config.kv_channels,
                fused_qkv=True,
            ),
            vocab=config.vocab_size,
            # The ViT: LayerNorm, fused in_proj, matmul + softmax attention, c_fc -> GELU -> c_proj.
            vision=BlockShapes(
                depth=v["layers"],
                width=v["width"],
                intermediate=int(v["width"] * v["mlp_ratio"]),
                heads=v["heads"],
                kv_heads=v["heads"],
                head_dim=v["width"] // v["heads"],
                gated_mlp=False,
                rms_norm=False,
                fused_qkv=True,
                eager_attention=True,
            ),
            merger_width=v["output_dim"],  # the resampler projects patches to output_dim first
        )
