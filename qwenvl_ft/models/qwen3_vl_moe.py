"""Qwen3-VL MoE (30B-A3B, 235B-A22B): Qwen3-VL with sparse-expert decoder MLPs.

Everything but the decoder MLP is Qwen3-VL. The experts are stored as fused 3-D weights in
transformers 5, not as Linear layers, so the default LoRA targets are the attention projections;
the router (`mlp.gate`) is never a LoRA target.
"""

from __future__ import annotations

from dataclasses import replace

from .base import Shapes
from .qwen3_vl import Qwen3VLFamily


class Qwen3VLMoeFamily(Qwen3VLFamily):
    name = "qwen3_vl_moe"
    title = "Qwen3-VL-MoE"
    retrieval = False  # the embedding and reranker models are dense
    model_types = ("qwen3_vl_moe",)
    liger_patch = "apply_liger_kernel_to_qwen3_vl_moe"
    lora_target_regex = r"model\.language_model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"
    # 30B-A3B: a verbatim copy of the Hub's config.json quoted in public text (its subset at Hub commit
    # 1fc78ad agrees). 235B-A22B: no verbatim copy found; rebuilt from the 30B file with the sizes
    # public architecture notes and training scripts give (hidden 4096, 94 layers, 64 heads, 4 kv
    # heads, MLP 12288, experts 128 x 1536, top 8, vision out 4096), the rest as in the 30B file.
    published_sizes = {
        "Qwen3-VL-30B-A3B-Instruct": "qwen3_vl_moe-30b-a3b",
        "Qwen3-VL-235B-A22B-Instruct": "qwen3_vl_moe-235b-a22b",
    }
    expert_parallel = True

    def rope_model_class(self):
        from transformers import Qwen3VLMoeModel

        return Qwen3VLMoeModel

    def model_class(self):
        from transformers import Qwen3VLMoeForConditionalGeneration

        return Qwen3VLMoeForConditionalGeneration

    def shapes(self, config) -> Shapes:
        # Each token runs through its top-k experts: activations as one MLP k experts wide.
        shapes = super().shapes(config)
        t = config.text_config
        return replace(
            shapes, text=replace(shapes.text, intermediate=t.moe_intermediate_size * t.num_experts_per_tok)
        )
