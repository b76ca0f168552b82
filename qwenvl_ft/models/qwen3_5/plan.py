"""Layer sizes of a Qwen3.5 config for the memory planner (`qwenvl-ft plan`).

The decoder is hybrid: `layer_types` names each block "linear_attention" (Gated DeltaNet) or
"full_attention"; both kinds share the MLP and the two norms. The planner counts parameters on the
meta-device model (exact for either kind) and reads the linear-attention widths here for the
activations those layers keep (`plan/activations.py: linear_block_saved`).
"""

from __future__ import annotations

from types import SimpleNamespace

from ..base import LinearAttentionShapes, Shapes
from ..qwen2_vl import text_shapes
from ..qwen3_vl import vision_shapes_3


def qwen3_5_shapes(config) -> Shapes:
    t, v = config.text_config, config.vision_config
    if getattr(t, "num_experts", None):
        # Each token runs through its top-k experts and the shared expert: as one MLP that wide
        # (the MoE text config has no dense intermediate_size).
        wide = t.moe_intermediate_size * t.num_experts_per_tok + t.shared_expert_intermediate_size
        t = SimpleNamespace(**{**t.to_dict(), "intermediate_size": wide})
    text = text_shapes(t, qk_norm=True)
    kinds = list(t.layer_types)
    linear = LinearAttentionShapes(
        layers=kinds.count("linear_attention"),
        key_heads=t.linear_num_key_heads,
        value_heads=t.linear_num_value_heads,
        key_head_dim=t.linear_key_head_dim,
        value_head_dim=t.linear_value_head_dim,
        conv_kernel=t.linear_conv_kernel_dim,
        first_full=kinds.index("full_attention") if "full_attention" in kinds else None,
        first_linear=kinds.index("linear_attention") if "linear_attention" in kinds else None,
    )
    return Shapes(
        text=text,
        vocab=t.vocab_size,
        vision=vision_shapes_3(v),  # Qwen3-VL's tower; no DeepStack mergers
        merger_width=v.hidden_size,
        mergers=1,
        linear=linear,
    )
