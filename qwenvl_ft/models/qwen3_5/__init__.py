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

from ..base import Shapes, ThinkFormat
from ..qwen3_vl import BOXES_3, CHAT_3, PATHS_3, SPECIAL_TOKENS_3, VIDEO_3, VISION_3, Qwen3VLFamily

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
    thinking = True
    retrieval = False  # the embedding and reranker models are Qwen3-VL
    kept_tensors = ("mtp.",)
    published_sizes = {
        "Qwen3.5-0.8B": "qwen3_5-0.8b",
        "Qwen3.5-2B": "qwen3_5-2b",
        "Qwen3.5-4B": "qwen3_5-4b",
        "Qwen3.5-9B": "qwen3_5-9b",
        "Qwen3.5-27B": "qwen3_5-27b",
        "Qwen3.6-27B": "qwen3_5-27b",
    }

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
    expert_parallel = True
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
