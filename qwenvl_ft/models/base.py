"""What every model generation must tell the rest of the toolkit, as data wherever it can be.

A `ModelFamily` subclass per generation lives in its own module (`qwen2_vl.py`, ...) and is
registered in `qwenvl_ft.models`. Core code (data encoders, trainer, merge) asks the family for
module paths, tokens, box text and token budgets; it never branches on a model type.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from transformers import PretrainedConfig, PreTrainedModel

    from .processor import VLProcessor


@dataclass(frozen=True)
class ModulePaths:
    """Dotted module paths inside the loaded model (`named_modules()` names)."""

    vision: str
    """The vision tower: frozen by default."""
    merger: tuple[str, ...]
    """Projector(s) from vision features into the language model (merger / resampler)."""
    language: tuple[str, ...]
    """The language model (decoder blocks, norms, embeddings)."""
    embeddings: str
    lm_head: str
    after_vision: str
    """The first module called once the visual features are in the embeddings, with those embeddings
    as `inputs_embeds` or its first argument, outside activation checkpointing: dummy vision calls run
    in its forward pre-hook, inside the model's forward like real ones."""


@dataclass(frozen=True)
class ThinkFormat:
    """How a thinking generation's official template writes an assistant turn's reasoning.

    A turn that shows its reasoning starts `<think>\n{reasoning}\n</think>\n\n` (an empty block
    when it has none); which turns show it is `history`.
    """

    open: str = "<think>"
    close: str = "</think>"
    history: Literal["drop_earlier", "keep"] = "drop_earlier"
    """Earlier turns' reasoning in the official template: "drop_earlier" shows it only on the assistant
    turns after the last user turn (Qwen3.5); "keep" shows it on every assistant turn."""

    def block(self, reasoning: str) -> str:
        """The think block of one turn (`reasoning` already stripped; "" gives the empty block)."""
        return f"{self.open}\n{reasoning}\n{self.close}\n\n"

    def split(self, text: str, opened: bool = False) -> tuple[str | None, str]:
        """(reasoning or None, answer) of generated text.

        opened: the prompt ended inside an open think block, so the text starts with reasoning;
        otherwise only text that opens a block itself has reasoning. Reasoning that the token
        budget cut before its closing tag leaves an empty answer.
        """
        if not opened:
            head = text.lstrip()
            if not head.startswith(self.open):
                return None, text
            text = head[len(self.open) :]
        reasoning, closed, rest = text.partition(self.close)
        return reasoning.strip(), rest.lstrip("\n") if closed else ""


@dataclass(frozen=True)
class ChatFormat:
    """How a conversation is rendered (ChatML for every generation, with generation-specific parts)."""

    default_system: str | None
    """System prompt the official template inserts when a conversation has none (None: it inserts none)."""
    image_open: str
    image_pad: str
    image_close: str
    video_pad: str | None
    image_prefix: str = ""
    """Text before each image; `{n}` is the 1-based image number (first generation: 'Picture {n}: ')."""
    image_suffix: str = ""
    """Text after each image span (first generation: a newline after `</img>`)."""
    im_start: str = "<|im_start|>"
    im_end: str = "<|im_end|>"
    stop_tokens: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")
    """Tokens that end an answer: generation stops at the first and `predict` cuts there."""
    trim_content: bool = False
    """The official template strips whitespace around each turn's content (Jinja `|trim`)."""
    think: ThinkFormat = ThinkFormat()
    """Reasoning blocks; used only by families that declare `thinking`."""


@dataclass(frozen=True)
class BoxStyle:
    """How grounding boxes are written in text, and in which coordinate system."""

    ref: str
    """Template around a referring expression, `{}` is the text."""
    box: str
    """Template of one box, with fields x1 y1 x2 y2."""
    coords: Literal["norm1000", "resized_pixels"]
    """norm1000: integers in [0, 1000) of the image; resized_pixels: pixels of the resized image."""
    box_pattern: str
    """Regex that finds one box in model text; groups are x1, y1, x2, y2."""


@dataclass(frozen=True)
class VisionBudget:
    """Resize rules that decide how many visual tokens an image costs."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    fixed_tokens: int | None = None
    """Generations with a fixed-size input (first generation: 448 px, 256 tokens) set this."""
    fixed_size: int | None = None

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class VideoBudget:
    """How a generation samples and sizes video frames (qwen-vl-utils, the Qwen team's preprocessing).

    Frames are sampled at `fps` (clamped to [min_frames, max_frames], a multiple of the temporal
    patch size); every frame is resized like an image with the per-frame area capped at
    min(max_pixels, total_pixels / frames * temporal_patch_size), and never below min_pixels.
    """

    fps: float
    min_frames: int
    max_frames: int
    min_pixels: int
    max_pixels: int
    total_pixels: int
    timestamps: Literal["rope", "text", "none"]
    """Where time goes: Qwen2.5-VL scales its temporal rotary positions by seconds ('rope'), Qwen3-VL
    writes `<t seconds>` before each frame group ('text'), Qwen2-VL only counts frame groups ('none')."""

    @classmethod
    def qwen_vl_utils(cls, factor: int, timestamps: Literal["rope", "text", "none"]) -> VideoBudget:
        """qwen-vl-utils' VIDEO_* constants for merged patches of `factor` pixels (28, or 32 for Qwen3-VL)."""
        area = factor * factor
        return cls(
            fps=2.0,
            min_frames=4,
            max_frames=768,
            min_pixels=128 * area,
            max_pixels=768 * area,
            total_pixels=int(128000 * area * 0.9),
            timestamps=timestamps,
        )


@dataclass(frozen=True)
class BlockShapes:
    """One stack of repeated transformer blocks (decoder or vision tower), as `qwenvl_ft.plan` reads it."""

    depth: int
    width: int
    intermediate: int
    """MLP hidden width (of each branch when the MLP is gated)."""
    heads: int
    kv_heads: int
    head_dim: int
    gated_mlp: bool = True
    """SwiGLU (gate, up, down) rather than fc1 -> activation -> fc2."""
    rms_norm: bool = True
    """RMSNorm computed in fp32 (keeps an fp32 copy of its input), rather than LayerNorm."""
    fused_qkv: bool = False
    """One qkv projection whose whole output the attention keeps alive (v is a view of it)."""
    qk_norm: bool = False
    """Per-head RMSNorm on q and k (Qwen3)."""
    eager_attention: bool = False
    """Attention written as matmul + softmax, which keeps the (heads x n x n) probabilities."""


@dataclass(frozen=True)
class LinearAttentionShapes:
    """The linear-attention (Gated DeltaNet) layers of a hybrid decoder, as `qwenvl_ft.plan` reads them.

    Such a layer replaces self-attention with in_proj_qkv / in_proj_z / in_proj_b / in_proj_a, a
    depthwise causal conv1d over q, k and v, a recurrent delta rule and a gated RMSNorm before out_proj.
    """

    layers: int
    """How many of the decoder's `depth` blocks are linear attention (the rest are full attention)."""
    key_heads: int
    value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int
    first_full: int | None = None
    """Index of the first full-attention block (its LoRA layers stand for every full block)."""
    first_linear: int | None = None
    """Index of the first linear-attention block (likewise)."""


@dataclass(frozen=True)
class Shapes:
    """The sizes a memory estimate needs, read from a config by the family that knows its field names."""

    text: BlockShapes
    vocab: int
    vision: BlockShapes
    merger_width: int
    """Features per vision patch entering the merger / resampler."""
    mergers: int = 1
    """Projectors fed by the vision tower (Qwen3-VL adds its DeepStack mergers)."""
    linear: LinearAttentionShapes | None = None
    """Hybrid decoders: the blocks whose token mixer is linear attention (None: all full attention)."""


class ModelFamily:
    """One Qwen vision-language generation. Subclasses fill the class attributes and hooks."""

    name: ClassVar[str]
    title: ClassVar[str]
    processor_class: ClassVar[str]
    """transformers processor class named in preprocessor_config.json."""
    model_types: ClassVar[tuple[str, ...]]
    """`model_type` values in a checkpoint's config.json that belong to this family."""
    special_tokens: ClassVar[tuple[str, ...]]
    """Special tokens in id order, starting at `first_special_id` (151643 for the real vocabulary)."""
    first_special_id: ClassVar[int] = 151643
    paths: ClassVar[ModulePaths]
    chat: ClassVar[ChatFormat]
    boxes: ClassVar[BoxStyle]
    vision: ClassVar[VisionBudget]
    video: ClassVar[VideoBudget | None] = None
    """None: the generation takes no video."""
    lora_target_regex: ClassVar[str]
    """Regex (PEFT full-match) selecting every linear layer of the language model, none of the vision tower."""
    lora_expert_parameters: ClassVar[tuple[str, ...]] = ()
    """Sparse-expert decoders whose routed experts are fused 3-D parameters, not Linear layers: their
    names (PEFT `target_parameters`), adapted only when a recipe sets `lora.experts` (empty: no such)."""
    chat_template: ClassVar[str]
    """The Jinja template of the official checkpoints, saved with tiny models."""
    liger_patch: ClassVar[str | None] = None
    """Liger-Kernel's `apply_liger_kernel_to_*` function for this generation (None: Liger has none)."""
    supported: ClassVar[bool] = True
    unsupported_reason: ClassVar[str] = ""
    published_sizes: ClassVar[dict[str, str]] = {}
    """Published checkpoints whose config.json ships in `models/published/`: model name -> JSON stem."""
    # -- declared capabilities: shared code relies on these; `check_capabilities` refuses, at start,
    # -- a run that needs one the family does not declare.
    packing_isolation: ClassVar[Literal["positions", "positions+linear_state"]] = "positions"
    """How a packed row keeps its samples apart. "positions": rotary positions restart per sample and
    transformers turns the restarts into a block-causal mask / cu_seqlens. "positions+linear_state":
    also the linear-attention layers' short convolution and recurrent state must restart at every
    sample boundary, which `isolate_packed_samples` installs on the model."""
    thinking: ClassVar[bool] = False
    """The official template writes `<think>` reasoning blocks (thinking on/off and reasoning in data)."""
    retrieval: ClassVar[bool] = False
    """Qwen3-VL-Embedding / -Reranker checkpoints are of this generation: `train.method: embedding` and
    `reranker`, `eval --task retrieval` and the demo's search tab take it (models/qwen3_vl_retrieval.py)."""
    reasoning_efforts: ClassVar[tuple[str, ...]] = ()
    """Values of the official template's `reasoning_effort` (the first is its default), which writes
    `effort_instruction` at the head of the system turn while thinking is on (Qwen3.8); empty: the
    generation has none, and `data.reasoning_effort` / `--reasoning-effort` are refused by name."""
    kept_tensors: ClassVar[tuple[str, ...]] = ()
    """Name prefixes of checkpoint tensors that transformers drops on load (its model class's
    `_keys_to_ignore_on_load_unexpected`) but a server may still use, e.g. multi-token-prediction
    heads for speculative decoding: `merge` copies them from the base into its output unchanged."""
    router_aux_loss: ClassVar[bool] = False
    """Sparse-expert decoders whose router load-balancing loss is switched on for training
    (`output_router_logits`): the model returns `aux_loss`, which the trainer adds and logs."""
    expert_parallel: ClassVar[bool] = False
    """`train.expert_parallel` can split the routed experts over ranks: transformers' config class
    carries a `base_model_ep_plan` for the decoder's `layers.*.mlp.experts`, and the language model's
    decoder layers and the vision tower's blocks sit at `paths.language[0].layers` and
    `paths.vision.blocks` (training/expert_parallel.py shards them one unit each)."""
    sequence_parallel: ClassVar[bool] = True
    """`train.sequence_parallel` can spread one sample over several ranks (models/ulysses.py): the
    language model is called with merged `inputs_embeds` (`paths.after_vision`), its attention goes
    through transformers' attention interface and the vision tower takes `grid_thw`."""
    no_sequence_parallel_reason: ClassVar[str] = ""
    plans_layers: ClassVar[bool] = True
    """The memory planner can describe this generation's layers (`shapes`)."""
    gptq_blocks: ClassVar[str | None] = None
    """The decoder blocks whose linear layers the generation's published GPTQ checkpoint quantizes
    (its config: `published/<name>-int4.json`); None where no GPTQ checkpoint is modelled."""

    # -- loading ---------------------------------------------------------------------------
    def model_class(self) -> type[PreTrainedModel]:
        raise NotImplementedError

    def load_model(self, path: str, dtype: torch.dtype | None = None, **kwargs: Any) -> PreTrainedModel:
        self.require_supported()
        return self.model_class().from_pretrained(path, dtype=dtype, **kwargs)

    def load_processor(
        self, path: str, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> VLProcessor:
        from .processor import VLProcessor

        self.require_supported()
        return VLProcessor.from_pretrained(self, path, min_pixels=min_pixels, max_pixels=max_pixels)

    def image_processor(self, path: str | None):
        """The image processor: the checkpoint's (path) or a fresh one with the published settings (None)."""
        from transformers import Qwen2VLImageProcessorPil

        if path is not None:
            return Qwen2VLImageProcessorPil.from_pretrained(path)
        v = self.vision
        return Qwen2VLImageProcessorPil(
            size={"shortest_edge": v.min_pixels, "longest_edge": v.max_pixels},
            patch_size=v.patch_size,
            temporal_patch_size=v.temporal_patch_size,
            merge_size=v.merge_size,
            image_mean=list(v.image_mean),
            image_std=list(v.image_std),
        )

    def apply_liger(self, model: torch.nn.Module) -> bool:
        """Swap in Liger's RMSNorm, SwiGLU and rotary kernels on this model; False when Liger has none.

        The loss is not patched here: the trainer computes it inside lm_head with Liger's fused
        linear cross-entropy, the same way for every generation.
        """
        if self.liger_patch is None:
            return False
        import liger_kernel.transformers as liger

        patch = getattr(liger, self.liger_patch)
        # Liger's defaults decide which of rope / RMSNorm / SwiGLU it supports per generation.
        patch(cross_entropy=False, fused_linear_cross_entropy=False, model=model)
        return True

    def require_supported(self) -> None:
        if not self.supported:
            raise NotImplementedError(f"{self.title}: {self.unsupported_reason}")

    def vision_keepalive(self, model: torch.nn.Module) -> torch.Tensor:
        """A zero that depends on every vision-tower and merger parameter, from a 2x2-patch dummy image.

        Stands in for a media kind a batch lacks (training.keepalive), so every rank runs the vision
        tower as often every step: under ZeRO-3 / FSDP a rank that skipped it would wait forever for
        the others' all-gathers.
        """
        import torch

        vision = model.get_submodule(self.paths.vision)
        c = vision.config
        param = next(vision.parameters())
        pixels = torch.zeros(
            4, c.in_channels * c.temporal_patch_size * c.patch_size**2, dtype=param.dtype, device=param.device
        )
        out = vision(pixels, grid_thw=torch.tensor([[1, 2, 2]], device=param.device))
        return 0.0 * sum(t.float().sum() for t in _tensors(out))

    # -- chat ------------------------------------------------------------------------------------
    def control_tokens(self) -> tuple[str, ...]:
        """Special tokens that a sample's text must never turn into (data/special_text.py): the
        image / video span and pad tokens (the chat format's and every `<|vision_*|>`, `<|image_*|>`,
        `<|video_*|>` special token) and the turn and stop tokens."""
        c = self.chat
        vision = [t for t in self.special_tokens if re.fullmatch(r"<\|(?:vision|image|video)_\w+\|>", t)]
        tokens = [c.image_open, c.image_pad, c.image_close, c.video_pad, *vision, c.im_start, c.im_end]
        return tuple(dict.fromkeys(t for t in [*tokens, *c.stop_tokens] if t))

    def generation_prompt(self, thinking: bool | None = None) -> str:
        """Text after `<|im_start|>` that opens the assistant's answer, as the official template's
        `add_generation_prompt` writes it; `thinking` (None: the checkpoint's default) only matters to
        generations that declare `thinking`."""
        if thinking is not None and not self.thinking:
            raise ValueError(f"{self.title} has no thinking mode; leave thinking unset")
        return "assistant\n"

    def effort_instruction(self, effort: str | None) -> str:
        """The system text the template writes for `effort` (None: its default) while thinking is on."""
        raise ValueError(f"{self.title} ({self.name}) has no reasoning effort")

    def recognizes(self, model_dir: Path) -> bool:
        """Whether a checkpoint of one of `model_types` is this generation rather than another
        registered under the same model_type (detection; default: the first registered claims it)."""
        return True

    # -- positions (packing) ------------------------------------------------------------------
    def isolate_packed_samples(self, model: torch.nn.Module) -> None:
        """Make packed rows exact on `model` beyond positions (families with linear-attention state).

        "positions" families need nothing: the per-sample positions are in the batch."""
        if self.packing_isolation != "positions":
            raise NotImplementedError(
                f"{self.title} declares packing_isolation={self.packing_isolation!r} but does not install it"
            )

    def position_ids(
        self,
        config: PretrainedConfig,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rotary positions of one sample on its own: (3, L) for mRoPE generations, (1, L) for 1-D rotary.

        A packed row concatenates these per sample, so every sample sees exactly the positions it
        would see alone.
        """
        import torch

        return torch.arange(len(input_ids))[None]

    def shapes(self, config: PretrainedConfig) -> Shapes:
        """Layer sizes of a loaded config, for the memory planner (`qwenvl-ft plan`)."""
        raise NotImplementedError(f"{self.title}: no layer shapes for the memory planner")

    def speed_notes(self, device: str) -> list[str]:
        """Lines `plan` and the start of training print about speed on `device` ("cuda" / "cpu"), e.g.
        a slow fallback that runs because an optional kernel package is missing, with its install command."""
        return []

    # -- visual token budgets --------------------------------------------------------------
    def resized_size(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[int, int]:
        """(height, width) the image processor resizes an image to: `image_resize`, the very function
        the processor calls, so the data check's token count is the processor's feature count."""
        v = self.vision
        if v.fixed_size is not None:
            return v.fixed_size, v.fixed_size
        return image_resize(height, width, v.factor, min_pixels or v.min_pixels, max_pixels or v.max_pixels)

    def image_tokens(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> int:
        """Number of image pad tokens (visual features) one image of this size costs."""
        if self.vision.fixed_tokens is not None:
            return self.vision.fixed_tokens
        h, w = self.resized_size(height, width, min_pixels, max_pixels)
        return (h // self.vision.factor) * (w // self.vision.factor)

    def video_spans(self, grid: tuple[int, int, int], timestamps: list[float]) -> list[str | tuple[str, int]]:
        """One video in the prompt: plain text, or (special token, repeat); `grid` is (t, h, w) patches."""
        raise NotImplementedError(f"{self.title} takes no video input")

    # -- boxes -----------------------------------------------------------------------------
    def format_ref(self, text: str) -> str:
        return self.boxes.ref.format(text)

    def format_box(
        self, box: tuple[float, float, float, float], image_size: tuple[int, int], resized: tuple[int, int]
    ) -> str:
        """Write a box given in pixels of the original image.

        image_size and resized are (width, height) of the original and of the resized image.
        """
        x1, y1, x2, y2 = to_family_coords(box, image_size, resized, self.boxes.coords)
        return self.boxes.box.format(x1=x1, y1=y1, x2=x2, y2=y2)

    def parse_boxes(
        self, text: str, image_size: tuple[int, int], resized: tuple[int, int]
    ) -> list[tuple[float, float, float, float]]:
        """Every box written in `text`, back in pixels of the original image."""
        out = []
        for m in re.finditer(self.boxes.box_pattern, text):
            coords = tuple(int(g) for g in m.groups())
            out.append(from_family_coords(coords, image_size, resized, self.boxes.coords))
        return out

    def labelled_boxes(
        self, text: str, image_size: tuple[int, int], resized: tuple[int, int]
    ) -> list[tuple[str | None, tuple[float, float, float, float]]]:
        """Every box in `text` with the referring text it answers (None: none found), in pixels.

        The label is a JSON object's "label" around the box (Qwen3-VL's grounding answers), else the
        last referring expression before it (a delimited ref style: `<ref>..</ref>`), else the plain
        text since the previous box or line break (`red square [x1, y1, x2, y2]`)."""
        prefix, _, suffix = self.boxes.ref.partition("{}")
        refs = []
        if prefix and suffix:
            refs = [
                (m.end(), m.group(1).strip())
                for m in re.finditer(re.escape(prefix) + r"(.*?)" + re.escape(suffix), text, re.S)
            ]
        out, previous = [], 0
        for box, m in zip(
            self.parse_boxes(text, image_size, resized),
            re.finditer(self.boxes.box_pattern, text),
            strict=True,
        ):
            label = _json_label(text, m.start(), m.end(), previous)
            if label is None and refs:
                label = next((t for end, t in reversed(refs) if end <= m.start()), None)
            elif label is None:
                before = re.split(r"[\n]", text[previous : m.start()])[-1]
                label = re.sub(r"[\s{}\[\]\",:]+", " ", before).strip(" .;-") or None
            out.append((label or None, box))
            previous = m.end()
        return out

    def __repr__(self) -> str:
        return f"<family {self.name}>"


def _json_label(text: str, start: int, end: int, previous: int) -> str | None:
    """The "label" of the JSON object that holds the box at text[start:end], if it is one."""
    open_ = text.rfind("{", previous, start)
    close = text.find("}", end)
    if open_ < 0 or close < 0:
        return None
    m = re.search(r'"label"\s*:\s*"([^"]*)"', text[open_ : close + 1])
    return m.group(1).strip() if m else None


def image_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) an image is resized to: transformers' `smart_resize`, the function the image
    processor (`Qwen2VLImageProcessorPil.resize`, for every dynamic-resolution generation) calls.

    Called rather than re-written: for a side under half a `factor` it rounds to 0 and scales up
    from there (200x1 becomes 812x28, 29 tokens at factor 28), which a re-written rule easily gets
    wrong, and a count that differs from the processor's is "image features and image tokens do
    not match" mid-run."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as processor_resize

    _check_shape(height, width)
    return processor_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def _check_shape(height: int, width: int) -> None:
    if min(height, width) <= 0:
        raise ValueError(f"image has an empty side: {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of a {width}x{height} image exceeds 200, which Qwen VL models refuse")


def frame_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils' rule for video frames (`fetch_video`): round each side to a multiple of `factor`
    (at least one), then scale so the area falls in [min_pixels, max_pixels]. Images follow
    `image_resize`, which differs for sides under half a factor."""
    _check_shape(height, width)
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def to_family_coords(
    box: tuple[float, float, float, float], image_size: tuple[int, int], resized: tuple[int, int], coords: str
) -> tuple[int, int, int, int]:
    """Pixels of the original (width, height) image -> the integers a generation writes."""
    w, h = image_size
    x1, y1, x2, y2 = box
    if coords == "norm1000":
        # [0, 1000): round to the nearest unit, the far edge (x == w) lands on 999.
        return tuple(min(999, max(0, round(v / s * 1000))) for v, s in ((x1, w), (y1, h), (x2, w), (y2, h)))
    rw, rh = resized
    return tuple(
        min(lim, max(0, round(v * r / s)))
        for v, r, s, lim in ((x1, rw, w, rw), (y1, rh, h, rh), (x2, rw, w, rw), (y2, rh, h, rh))
    )


def from_family_coords(
    coords_xyxy: tuple[int, ...], image_size: tuple[int, int], resized: tuple[int, int], coords: str
) -> tuple[float, float, float, float]:
    """The integers a generation writes -> pixels of the original (width, height) image."""
    w, h = image_size
    x1, y1, x2, y2 = coords_xyxy
    if coords == "norm1000":
        return (x1 * w / 1000, y1 * h / 1000, x2 * w / 1000, y2 * h / 1000)
    rw, rh = resized
    return (x1 * w / rw, y1 * h / rh, x2 * w / rw, y2 * h / rh)


def _tensors(out):
    """Every floating-point tensor in a model output (dataclass, tuple or list, nested)."""
    import torch

    if torch.is_tensor(out):
        return [out] if out.is_floating_point() else []
    items = out.values() if hasattr(out, "values") else out if isinstance(out, (list, tuple)) else []
    return [t for item in items for t in _tensors(item)]
