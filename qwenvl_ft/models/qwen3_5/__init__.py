"""Qwen3.5 (and Qwen3.6 / Qwen3.8, same architecture): a hybrid decoder of Gated DeltaNet
(linear attention) and gated full-attention layers, 3 : 1, behind Qwen3-VL's vision tower without
DeepStack; dense (`qwen3_5`) and sparse-expert (`qwen3_5_moe`) decoders.

Facts, and where they were checked (transformers 5.24's `models/qwen3_5*`, the published files):
- vocabulary of 248,320 (padded); the BPE ends at 248,043 and 33 special tokens follow from
  248,044: Qwen3-VL's 26 in the same order (`<|endoftext|>` 248044, `<|im_start|>` 248045,
  `<|im_end|>` 248046, `<|vision_start|>` 248053, `<|vision_end|>` 248054, `<|image_pad|>`
  248056, `<|video_pad|>` 248057, `<think>` 248068, `</think>` 248069), then 7 audio / speech
  tokens (248070..248076) no Qwen3.5 model reads. The config's token ids (transformers' defaults
  and the published config.json) and generation_config (eos [248046, 248044], pad 248044) agree;
- the chat template is the official one (`chat_template.jinja`): ChatML with `<think>` blocks;
  `add_generation_prompt` opens `<think>\\n` (thinking, the template's default) or writes an empty
  block `<think>\\n\\n</think>\\n\\n` with enable_thinking=false. The Qwen3.5-0.8B card says that
  model runs without thinking by default: its own template's default is not checked here;
- vision: patch 16, 2x2 merge, temporal patch 2, mean = std = 0.5, shortest_edge 65,536 and
  longest_edge 16,777,216 pixels (the published preprocessor_config.json), as Qwen3-VL; one merger,
  no DeepStack; video frames carry `<t seconds>` text like Qwen3-VL (get_rope_index splits each
  video into one grid per temporal patch);
- positions: four rows, the text position then three interleaved mRoPE rows
  (Qwen3_5TextModel reads row 0 as the text position when position_ids has 4 rows); only a
  quarter of each 256-wide head is rotated (partial_rotary_factor 0.25, mrope_section 11/11/10);
- RMSNorm weights are zero-centred (the norm multiplies by 1 + w, initialised to 0): a tiny model
  built by transformers' own init starts with unit norms; zeroing a norm weight is not "off". The
  vision tower's norms are plain LayerNorms, so Qwen3-VL's stand-in tower applies as it is;
- boxes: Qwen3.5 grounds like Qwen3-VL, plain `[x1, y1, x2, y2]` integers in [0, 1000);
- real checkpoints carry `mtp.*` multi-token-prediction weights (one extra decoder layer, `fc` over
  [embedding; hidden], three norms) that `_keys_to_ignore_on_load_unexpected` drops on load:
  `kept_tensors` makes merge copy them, and tiny checkpoints carry scaled-down ones.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ..base import Shapes, ThinkFormat
from ..qwen3_vl import BOXES_3, CHAT_3, PATHS_3, SPECIAL_TOKENS_3, VIDEO_3, VISION_3, Qwen3VLFamily
from ..tokenizer import StandinSpec

# Qwen3-VL's 26 special tokens, then the audio / speech tokens of the Omni line, in id order.
SPECIAL_TOKENS_3_5 = SPECIAL_TOKENS_3 + (
    "<|audio_start|>",
    "<|audio_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
    "<|audio_pad|>",
)
FIRST_SPECIAL_ID = 248044
VOCAB_SIZE = 248320
# tokenization_qwen3_5.py: Qwen's pattern with combining marks (\p{M}) kept inside words.
PATTERN_3_5 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Every Linear of the decoder: gated full attention (q_proj is twice as wide: query and gate),
# the Gated DeltaNet projections, the MLP. The vision tower's MLP is linear_fc1 / linear_fc2 and its
# attention qkv / proj, so no vision module matches; conv1d, A_log and dt_bias are not Linear.
_ATTENTION = r"self_attn\.(q|k|v|o)_proj|linear_attn\.(in_proj_qkv|in_proj_z|in_proj_b|in_proj_a|out_proj)"
LORA_TARGETS_3_5 = rf"model\.language_model\.layers\.\d+\.({_ATTENTION}|mlp\.(gate|up|down)_proj)"
# MoE: the routed experts are fused 3-D parameters (not Linear: see Qwen3_5MoeFamily), the router
# (mlp.gate) and the shared expert's scalar gate (mlp.shared_expert_gate) are never adapted.
LORA_TARGETS_3_5_MOE = (
    rf"model\.language_model\.layers\.\d+\.({_ATTENTION}|mlp\.shared_expert\.(gate|up|down)_proj)"
)

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
# head_dim 32 x partial_rotary_factor 0.25 = 8 rotated dims: sections sum to 4, as 11/11/10 to 32.
TINY_ROPE_3_5 = {
    "rope_type": "default",
    "rope_theta": 10000000.0,
    "mrope_section": [2, 1, 1],
    "mrope_interleaved": True,
    "partial_rotary_factor": 0.25,
}
# Qwen3-VL's tiny tower without DeepStack.
TINY_VISION_3_5 = {k: v for k, v in Qwen3VLFamily.tiny_vision.items() if k != "deepstack_visual_indexes"}

# Kernel packages (import name: PyPI name) whose absence makes transformers run its torch fallback.
KERNELS = {"fla": "flash-linear-attention", "causal_conv1d": "causal-conv1d"}
SPEED_NOTE = (
    "{title}: {missing} not installed, so its linear-attention layers run transformers' torch "
    "fallback (a Python loop over 64-token chunks: exact, much slower on GPU); install the kernels "
    "with: pip install 'qwenvl-ft[qwen3_5]'"
)


class Qwen3_5Family(Qwen3VLFamily):
    name = "qwen3_5"
    title = "Qwen3.5"
    model_types = ("qwen3_5",)
    # Liger-Kernel 0.8.5 (read): zero-centred RMSNorm as offset 1.0 ("gemma" casting), SwiGLU MLP; no
    # rope kernel for the partial mRoPE, DeltaNet untouched. Not run here (Triton needs a GPU).
    liger_patch = "apply_liger_kernel_to_qwen3_5"
    processor_class = "Qwen3VLProcessor"  # the published preprocessor_config.json names it
    special_tokens = SPECIAL_TOKENS_3_5
    first_special_id = FIRST_SPECIAL_ID
    paths = replace(PATHS_3, merger=("model.visual.merger",))  # one merger, no DeepStack list
    # The official template strips each turn's content and shows reasoning only on the assistant
    # turns after the last user turn (earlier turns' reasoning is dropped).
    chat = replace(CHAT_3, trim_content=True, think=ThinkFormat(history="drop_earlier"))
    boxes = BOXES_3
    vision = VISION_3
    video = VIDEO_3
    lora_target_regex = LORA_TARGETS_3_5
    packing_isolation = "positions+linear_state"
    tiny_tokenizer = "standin"
    thinking = True
    kept_tensors = ("mtp.",)
    published_sizes = {
        "Qwen3.5-0.8B": "qwen3_5-0.8b",
        "Qwen3.5-2B": "qwen3_5-2b",
        "Qwen3.5-4B": "qwen3_5-4b",
        "Qwen3.5-9B": "qwen3_5-9b",
        "Qwen3.5-27B": "qwen3_5-27b",
        "Qwen3.6-27B": "qwen3_5-27b",
    }
    tiny_vision = TINY_VISION_3_5
    tiny_rope = TINY_ROPE_3_5

    @cached_property
    def chat_template(self) -> str:  # type: ignore[override]
        path = Path(__file__).with_name("chat_template.jinja")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the official Qwen3.5 chat template is missing from the package")
        return path.read_text(encoding="utf-8")

    def model_class(self):
        from transformers import Qwen3_5ForConditionalGeneration

        return Qwen3_5ForConditionalGeneration

    def rope_model_class(self):
        from transformers import Qwen3_5Model

        return Qwen3_5Model

    # -- chat ------------------------------------------------------------------------------------
    def generation_prompt(self, thinking: bool | None = None) -> str:
        # The official template: thinking unless enable_thinking is false (then an empty block). None
        # gives this template's default; a checkpoint whose own template defaults otherwise (the
        # 0.8B's card says it does not think by default) needs its template rendered instead.
        if thinking is False:
            return "assistant\n<think>\n\n</think>\n\n"
        return "assistant\n<think>\n"

    # -- packing ---------------------------------------------------------------------------------
    def isolate_packed_samples(self, model) -> None:
        from .packing import isolate_linear_attention

        isolate_linear_attention(model)

    # -- speed -----------------------------------------------------------------------------------
    def speed_notes(self, device: str) -> list[str]:
        import importlib.util

        missing = [name for module, name in KERNELS.items() if importlib.util.find_spec(module) is None]
        if device != "cuda" or not missing:  # on CPU the torch path is the only one (and exact)
            return []
        return [
            SPEED_NOTE.format(
                title=self.title, missing=" and ".join(missing) + (" are" if len(missing) > 1 else " is")
            )
        ]

    # -- planner ---------------------------------------------------------------------------------
    def shapes(self, config) -> Shapes:
        from .plan import qwen3_5_shapes

        return qwen3_5_shapes(config)

    # -- tiny models -----------------------------------------------------------------------------
    def tiny_tokenizer_spec(self) -> StandinSpec:
        return StandinSpec(SPECIAL_TOKENS_3_5, FIRST_SPECIAL_ID, VOCAB_SIZE, PATTERN_3_5)

    def tiny_text_extra(self, tokenizer) -> dict[str, Any]:
        return {}

    def tiny_config(self, tokenizer):
        ids = tokenizer.convert_tokens_to_ids
        return self.model_class().config_class(
            text_config=dict(
                TINY_TEXT_3_5,
                vocab_size=VOCAB_SIZE,  # the published padding: every real id fits
                rope_parameters=dict(self.tiny_rope),
                bos_token_id=ids("<|endoftext|>"),
                eos_token_id=ids("<|endoftext|>"),  # as the published text_config
                pad_token_id=None,
                # Untied as the published 9B, 27B and the MoE sizes (the 0.8B ties): lm_head is its own
                # part, trained and merged apart from the embeddings.
                tie_word_embeddings=False,
                **self.tiny_text_extra(tokenizer),
            ),
            vision_config=self.tiny_vision,
            tie_word_embeddings=False,
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )

    def tiny_extra_tensors(self, config) -> dict[str, Any]:
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


class Qwen3_5MoeFamily(Qwen3_5Family):
    """Qwen3.5 with sparse-expert MLPs in every layer (35B-A3B, 122B-A10B, 397B-A17B).

    Experts: transformers stores them fused (`mlp.experts.gate_up_proj` (E, 2I, H) and
    `mlp.experts.down_proj` (E, H, I)) as plain parameters, not Linear layers, so the default LoRA
    targets are attention, linear attention and the shared expert; `lora.experts: true` adds the
    experts through PEFT's `target_parameters`. The router's load-balancing loss is switched on for
    training (`router_aux_loss`).
    """

    name = "qwen3_5_moe"
    title = "Qwen3.5-MoE"
    model_types = ("qwen3_5_moe",)
    liger_patch = "apply_liger_kernel_to_qwen3_5_moe"
    lora_target_regex = LORA_TARGETS_3_5_MOE
    # lora.experts: PEFT 0.21's target_parameters wraps the fused 3-D weights (checked: trains, merges).
    lora_expert_parameters = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
    router_aux_loss = True
    published_sizes = {
        "Qwen3.5-35B-A3B": "qwen3_5_moe-35b-a3b",
        "Qwen3.6-35B-A3B": "qwen3_5_moe-35b-a3b",
        "Qwen3.5-122B-A10B": "qwen3_5_moe-122b-a10b",
        "Qwen3.5-397B-A17B": "qwen3_5_moe-397b-a17b",
    }

    def model_class(self):
        from transformers import Qwen3_5MoeForConditionalGeneration

        return Qwen3_5MoeForConditionalGeneration

    def rope_model_class(self):
        from transformers import Qwen3_5MoeModel

        return Qwen3_5MoeModel

    def tiny_text_extra(self, tokenizer) -> dict[str, Any]:
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
