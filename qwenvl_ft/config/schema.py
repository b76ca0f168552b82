"""The recipe schema: one small typed dataclass per section of a YAML recipe.

A recipe is `RecipeConfig`; each section (`model`, `data`, `lora`, `quant`, `train`, `output`)
is a dataclass whose fields are the only keys allowed in that section. Types are checked by
`qwenvl_ft.config.loader`; rules that involve several fields of one section live in that
section's `validate()`, and rules across sections in `RecipeConfig.validate()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Literal

Dtype = Literal["bf16", "fp16", "fp32"]
DataFormat = Literal["auto", "qwen_vl", "llava", "messages", "openai"]
Thinking = Literal["template", "drop_earlier", "keep", "drop", "inline"]
ReasoningEffort = Literal["xhigh", "medium", "low"]


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the key and the source."""


def require_positive(section: str, config: object, *names: str) -> None:
    """ConfigError naming `section.name` for each of `names` set (not None) to zero or less."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ConfigError(f"'{section}.{name}' must be positive, got {value}")


def zero_stage(path: str) -> int:
    """The ZeRO stage a DeepSpeed JSON asks for (0 when it has no zero_optimization section)."""
    try:
        with open(path, encoding="utf-8") as f:
            ds = json.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"'train.deepspeed': no such file {path!r} (paths are relative to where you launch)"
        ) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"'train.deepspeed': {path} is not valid JSON: {e}") from None
    return int(ds.get("zero_optimization", {}).get("stage", 0))


@dataclass
class ModelConfig:
    path: str = ""
    """Checkpoint directory (a Hugging Face layout: config.json, weights, tokenizer, processor)."""
    family: str | None = None
    """Model generation; None detects it from the checkpoint's config.json (never from the path)."""
    is_base: bool | None = None
    """Base (non-chat) model: LoRA then also trains embeddings and lm_head. None: from checkpoint metadata."""
    dtype: Dtype = "bf16"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    min_pixels: int | None = None
    """Smallest image area after resizing; None keeps the checkpoint's processor setting."""
    max_pixels: int | None = None
    """Largest image area after resizing (caps visual tokens per image); None keeps the checkpoint's."""

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("'model.path' is required: the checkpoint directory to fine-tune")
        require_positive("model", self, "min_pixels", "max_pixels")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ConfigError(
                f"'model.min_pixels' ({self.min_pixels}) is larger than 'model.max_pixels' ({self.max_pixels})"
            )


@dataclass
class DatasetSpec:
    path: str = ""
    """A JSON / JSONL file, a parquet/arrow file, or a `datasets.save_to_disk` directory."""
    format: DataFormat = "auto"
    weight: float = 1.0
    """Relative sampling weight when several datasets are mixed."""
    image_root: str | None = None
    """Folder that relative image paths resolve against; None: the data file's folder."""

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("every dataset needs a 'path'")
        if self.weight <= 0:
            raise ConfigError(f"dataset weight must be positive, got {self.weight} for {self.path}")


@dataclass
class VideoConfig:
    """Frame sampling and pixel budgets of video samples; None takes the generation's published rule."""

    fps: float | None = None
    """Frames sampled per second of video (the Qwen rule: 2)."""
    num_frames: int | None = None
    """A fixed number of frames per video instead of `fps`."""
    min_frames: int | None = None
    max_frames: int | None = None
    """At most this many frames per video (the published video LoRA recipe uses 24)."""
    min_pixels: int | None = None
    """Smallest area of one frame after resizing."""
    max_pixels: int | None = None
    """Largest area of one frame after resizing (caps visual tokens per frame)."""
    total_pixels: int | None = None
    """Pixel budget of a whole video: frames are shrunk so frames x area stays under it."""
    folder_fps: float = 2.0
    """Frame rate of a video given as a folder of frames (they are usually sampled already)."""
    decode_timeout: float = 60.0
    """Seconds one video may take to decode before it is reported as broken rather than waited on."""

    def validate(self) -> None:
        if self.fps is not None and self.num_frames is not None:
            raise ConfigError("'data.video.fps' and 'data.video.num_frames' exclude each other: set one")
        require_positive(
            "data.video",
            self,
            "fps",
            "num_frames",
            "min_frames",
            "max_frames",
            "min_pixels",
            "max_pixels",
            "total_pixels",
            "folder_fps",
            "decode_timeout",
        )
        if self.min_frames and self.max_frames and self.min_frames > self.max_frames:
            raise ConfigError(
                f"'data.video.min_frames' ({self.min_frames}) exceeds 'data.video.max_frames' ({self.max_frames})"
            )


@dataclass
class DataConfig:
    train: list[DatasetSpec] = field(default_factory=list)
    eval: list[DatasetSpec] = field(default_factory=list)
    max_length: int = 2048
    """Longest sample in tokens, visual tokens included."""
    overlength: Literal["drop", "truncate"] = "drop"
    """What to do with longer samples: drop them (reported), or cut text never inside an image span."""
    supervise: Literal["all_assistant", "last_assistant", "original_qwen_vl"] = "all_assistant"
    """Which tokens train: every answer; the last answer; or the original Qwen-VL finetune.py mask, which
    also supervises every <|im_start|> and each turn's closing <|im_end|> and newline."""
    allow_urls: bool = False
    """Fetch http(s) images named in the data; off so a run never depends on the network by surprise."""
    on_load_error: Literal["stop", "skip"] = "stop"
    """A checked sample that fails to load during training (its image deleted or changed since the check):
    stop the run with its file:line; or skip it: log it once and train on a sample of the same token length
    (else the nearest shorter) in its place, so packed rows and length groups stay as planned."""
    num_workers: int = 2
    """Loader processes per rank: images are decoded, resized and encoded there, off the training step."""
    check_workers: int | None = None
    """Processes of the data check before training (one rank per node checks, README 'Large datasets');
    None: one per free core, one for a set under 2,000 samples."""
    prefetch_factor: int = 4
    """Batches each loader process prepares ahead."""
    image_decode: Literal["draft", "exact"] = "draft"
    """draft: a JPEG at least twice the size the model resizes it to (both sides) is decoded at 1/2, 1/4
    or 1/8 scale, never below that size, then resized as usual; exact: every image decoded in full.
    Measured on camera-like JPEGs, Qwen2.5-VL at max_pixels 802816 (bench/results/encode_photos_cpu.json):
    samples/s 3.9x the transformers processor path for 12 MP photos, 1.7x for 3 MP; mean |pixel_values|
    difference from it 0.006 (12 MP) and 0.010 (3 MP), about 0.4 and 0.7 of 255 levels, less than JPEG
    quality 90 itself moves them (0.009, 0.018); max 0.34 and 0.55, at sharp fine texture. Images
    within the budget, PNGs, and inference are untouched (byte-identical to exact)."""
    special_text: Literal["error", "escape"] = "error"
    """Text in a sample that spells one of the generation's vision or chat-control special tokens
    (`<|im_end|>`, `<|image_pad|>`, ...; README 'Data'): error: the data check reports it at the
    sample's file:line; escape: it is tokenized as plain text and means nothing."""
    packing: bool = False
    """Concatenate samples into rows of `pack_length` tokens with no padding; each sample keeps its own
    attention span, positions (mRoPE included) and loss. `train.per_device_batch_size` then counts rows."""
    pack_length: int | None = None
    """Tokens per packed row; None: `max_length`. Must be at least `max_length`."""
    group_by_length: bool = True
    """Unpacked runs: batch samples of similar length together (less padding), order still random."""
    video: VideoConfig = field(default_factory=VideoConfig)
    """Frame sampling and pixel budgets of video samples."""
    thinking: Thinking | None = None
    """Assistant reasoning (`reasoning_content` or a leading `<think>...</think>` in the data), for the
    generations with a thinking mode. template: as the checkpoint's official template renders the
    conversation (the generation's `ChatFormat.think.history`); drop_earlier: reasoning only on the
    answers after the last user turn, earlier turns' dropped; keep: every answer's reasoning; drop: no
    reasoning anywhere, every turn rendered as the template renders one without. Rendered reasoning is
    supervised with its <think> tags; the empty block the template writes on a turn without reasoning
    is prompt, as at inference with thinking off. inline (generations without a thinking mode): the
    reasoning is plain text opening the answer, exactly as the data wrote it (R1-style answers).
    None: template on thinking generations, inline on the others."""
    reasoning_effort: ReasoningEffort | None = None
    """The template's `reasoning_effort` on generations that have one (Qwen3.8: xhigh, medium, low),
    whose instruction opens the system turn of every sample that shows reasoning; recorded in the run,
    and inference defaults to it. None: the template's default (xhigh). Refused on other generations."""

    def validate(self) -> None:
        if not self.train:
            raise ConfigError("'data.train' needs at least one dataset")
        for spec in [*self.train, *self.eval]:
            spec.validate()
        if self.max_length < 16:
            raise ConfigError(f"'data.max_length' must be at least 16, got {self.max_length}")
        if self.pack_length is not None and self.pack_length < self.max_length:
            raise ConfigError(
                f"'data.pack_length' ({self.pack_length}) is shorter than 'data.max_length' "
                f"({self.max_length}): the longest sample would not fit in a row"
            )
        self.video.validate()
        if self.check_workers is not None and self.check_workers < 1:
            raise ConfigError(
                f"'data.check_workers' must be at least 1 (or null: the free cores), got {self.check_workers}"
            )
        if self.num_workers < 0 or self.prefetch_factor < 1:
            raise ConfigError("'data.num_workers' must be >= 0 and 'data.prefetch_factor' >= 1")


@dataclass
class LoraConfig:
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] | None = None
    """Module-name regexes; None: every linear layer of the language model (the family's default)."""
    modules_to_save: list[str] | None = None
    """Modules trained in full next to LoRA; None: embeddings and lm_head for base models, else none."""
    experts: bool = False
    """Sparse-expert families: LoRA on the routed experts' fused 3-D weights too (PEFT target_parameters)."""

    def validate(self) -> None:
        if self.r <= 0 or self.alpha <= 0:
            raise ConfigError(
                f"'lora.r' and 'lora.alpha' must be positive, got r={self.r}, alpha={self.alpha}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"'lora.dropout' must be in [0, 1), got {self.dropout}")


@dataclass
class QuantConfig:
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    gptq_backend: str = "auto_trainable"
    """GPTQ checkpoints (Qwen-VL-Chat-Int4): the gptqmodel kernel. Training needs one with a backward
    pass; `auto_trainable` picks the fastest such kernel (never Marlin / ExLlama)."""

    def validate(self) -> None:
        pass


@dataclass
class TrainConfig:
    method: str = "sft"
    """sft: supervised answers; dpo: chosen/rejected pairs (the `dpo:` section); grpo: sampled
    answers scored by rewards; embedding / reranker: retrieval samples (query, positive, negatives)
    for Qwen3-VL-Embedding / -Reranker (the `embedding:` / `reranker:` sections); or a method registered with `training.methods.register`. Each reads
    only some of the recipe's keys: one it does not read, set away from its default, is refused."""
    mode: Literal["full", "lora", "qlora"] = "lora"
    freeze_vision: bool = True
    """Keep the vision tower frozen (the default for every generation)."""
    freeze_merger: bool | None = None
    """Freeze the merger / resampler; None: the family's default for the mode."""
    freeze_language: bool = False
    vision_lr: float | None = None
    merger_lr: float | None = None
    learning_rate: float = 1e-4
    epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps; -1: run `epochs`."""
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    loss: Literal["chunked", "standard"] = "chunked"
    """chunked: cross-entropy over supervised tokens only, a chunk at a time, so the (tokens x 151k)
    logits never exist at once; standard: the model's own loss over full logits."""
    liger: bool = False
    """Liger kernels (RMSNorm, SwiGLU, rotary, fused linear cross-entropy) for the generations that
    have them; needs the `liger` extra and a CUDA GPU."""
    seed: int = 42
    deepspeed: str | None = None
    """Path to a DeepSpeed JSON (configs/deepspeed/); it must leave batch sizes and optimizer to the recipe."""
    fsdp: bool = False
    sequence_parallel: int = 1
    """Ranks that share each sample (Ulysses): each holds 1/N of its tokens, activation memory / N;
    the launch's process count must be a multiple; data parallel = processes / N. 1: off."""
    expert_parallel: int = 1
    """Ranks that split each MoE layer's routed experts (transformers' FSDP2 + expert parallelism):
    each holds 1/N of them and tokens travel to their experts by all-to-all; the dense part is
    FSDP2-sharded over every rank. Must divide the process count and the expert count. 1: off."""
    logging_steps: int = 10
    save_steps: int = 500
    eval_steps: int | None = None
    """Evaluate the loss on `data.eval` every this many steps; None: at every save."""
    save_total_limit: int | None = 3
    resume: str | None = None
    """'auto' resumes from the latest complete checkpoint in output.dir; or a checkpoint path."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)

    def validate(self) -> None:
        require_positive("train", self, "learning_rate", "vision_lr", "merger_lr")
        if self.sequence_parallel < 1:
            raise ConfigError(
                f"train.sequence_parallel must be 1 (off) or more, got {self.sequence_parallel}"
            )
        if self.per_device_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError(
                "'train.per_device_batch_size' and 'train.gradient_accumulation_steps' must be >= 1"
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"'train.max_steps' must be -1 (use epochs) or positive, got {self.max_steps}")
        if self.deepspeed and self.fsdp:
            raise ConfigError("'train.deepspeed' and 'train.fsdp' are two engines: choose one")
        if self.freeze_vision and self.vision_lr is not None:
            raise ConfigError(
                "'train.vision_lr' is set but the vision tower is frozen ('train.freeze_vision: true')"
            )


@dataclass
class OutputConfig:
    dir: str = "runs/default"
    overwrite: bool = False
    """Allow writing into a non-empty output directory that holds no resumable run."""

    def validate(self) -> None:
        if not self.dir:
            raise ConfigError("'output.dir' must not be empty")


@dataclass
class EvalConfig:
    """Task metrics on `data.eval` during training, next to the eval loss (every `train.eval_steps`)."""

    generate: bool = False
    """Generate answers for `data.eval` and score them: grounding (samples with boxes) and `task`."""
    task: Literal["vqa", "caption", "ocr"] = "vqa"
    """Metric for answers without boxes."""
    max_new_tokens: int = 64
    limit: int | None = 200
    """Score the first this many eval samples (generation is slow); None: all."""
    batch_size: int = 8
    best_metric: str | None = None
    """Keep the best checkpoint by this metric, and end with it: 'loss', 'grounding.acc@0.5',
    'vqa.accuracy', 'caption.cider_d', 'ocr.cer' ... (lower is better for loss and cer)."""

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("'eval.max_new_tokens', 'eval.batch_size' and 'eval.limit' must be positive")

    @property
    def greater_is_better(self) -> bool:
        return (self.best_metric or "loss").split(".")[-1] not in ("loss", "cer", "mean_cer")


@dataclass
class DPOConfig:
    """Direct preference optimisation (`train.method: dpo`) on chosen / rejected answer pairs.

    The reference is the frozen starting model: with LoRA / Q-LoRA the same model with the adapter
    switched off (no second copy in memory); with full fine-tuning a frozen copy, sharded like the
    policy under ZeRO-3.
    """

    beta: float = 0.1
    """Strength of the pull towards the reference: higher keeps the policy closer to it."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """sigmoid: DPO's -log sigmoid(beta * margin); ipo: (margin per token - 1 / (2 beta))^2."""
    sft_weight: float = 0.0
    """Weight of an SFT term (mean token cross-entropy of the chosen answer) added to the loss; 0: none."""
    reference: str | None = None
    """The reference model. None: the model the run starts from (LoRA / Q-LoRA: the policy with its
    adapter switched off, no second copy; full: a frozen copy). A checkpoint directory of the same
    generation and tokenizer: that model, frozen (a second copy in memory, quantized like the policy
    under Q-LoRA, sharded under ZeRO-3)."""

    def validate(self) -> None:
        require_positive("dpo", self, "beta")
        if self.sft_weight < 0:
            raise ConfigError(f"'dpo.sft_weight' must be >= 0, got {self.sft_weight}")


@dataclass
class EmbeddingConfig:
    """Contrastive training of an embedder (`train.method: embedding`, Qwen3-VL-Embedding): InfoNCE of
    each query against its positive, its hard negatives and every other document of the step (all
    ranks' with `gather`), on L2-normalised last-token vectors (README 'Retrieval')."""

    temperature: float = 0.05
    """Similarities are divided by it; sentence-transformers' MultipleNegativesRankingLoss default
    (scale 20). ms-swift uses 0.1; the official training value is not published."""
    negatives: int | None = 7
    """Hard negatives per query, drawn once per sample from its list (None: all it lists)."""
    in_batch: bool = True
    """The other queries' documents are negatives too."""
    gather: bool = True
    """With several processes, every rank's documents join each query's negatives (gradients flow
    through this rank's own)."""
    matryoshka_dims: list[int] = field(default_factory=list)
    """Also train truncations to these widths (the first d values, normalised again): the loss is the
    mean of InfoNCE at the full width and at each of them."""

    def validate(self) -> None:
        require_positive("embedding", self, "temperature")
        if self.negatives is not None and self.negatives < 0:
            raise ConfigError(f"'embedding.negatives' must be >= 0 or null, got {self.negatives}")
        if any(d < 1 for d in self.matryoshka_dims):
            raise ConfigError(
                f"'embedding.matryoshka_dims' must be positive widths, got {self.matryoshka_dims}"
            )


@dataclass
class RerankerConfig:
    """Training a yes/no reranker (`train.method: reranker`, Qwen3-VL-Reranker); its score is
    logit("yes") - logit("no") at the answer position after the official prompt."""

    loss: Literal["listwise", "pointwise"] = "listwise"
    """listwise: for each query, softmax cross-entropy of its positive against its negatives' scores;
    pointwise: binary cross-entropy of each (query, document) score, "yes" for the positive, "no" for
    each negative (the official report's objective)."""
    negatives: int | None = 7
    """Negatives per query, drawn once per sample from its list (None: all); ms-swift's default 7."""
    temperature: float = 1.0
    """listwise: scores are divided by it before the softmax."""

    def validate(self) -> None:
        require_positive("reranker", self, "temperature")
        if self.negatives is not None and self.negatives < 1:
            raise ConfigError(f"'reranker.negatives' must be >= 1 or null, got {self.negatives}")


@dataclass
class RewardSpec:
    name: str = ""
    """A built-in reward (grounding_iou, exact_match, format) or a user's 'module:function'
    (signature: qwenvl_ft/training/rewards.py)."""
    weight: float = 1.0
    """Its weight in the summed reward of a completion."""


@dataclass
class GRPOConfig:
    """Group relative policy optimisation (`train.method: grpo`): for each prompt (a sample's
    conversation up to its last assistant turn, which is the reference) a group of answers is
    sampled from the policy, scored by `rewards`, and trained on with the clipped objective."""

    num_generations: int = 8
    """Answers sampled per prompt (the group); `train.per_device_batch_size` counts prompts."""
    max_new_tokens: int = 128
    """Longest sampled answer; prompt + max_new_tokens must fit `data.max_length` (data check)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0: no top-k cut."""
    beta: float = 0.0
    """KL penalty to the starting model (LoRA: the adapter switched off); 0: no reference at all."""
    epsilon: float = 0.2
    """Clip range of the probability ratio: [1 - epsilon, 1 + epsilon_high]."""
    epsilon_high: float | None = None
    """Upper clip (DAPO's clip-higher); None: epsilon."""
    num_iterations: int = 1
    """Passes over each generated batch (PPO epochs, mu), each an optimizer step of its own (counted by
    `train.max_steps`); above 1 the ratio leaves 1 and clipping acts."""
    loss_type: Literal["grpo", "bnpo", "dr_grpo"] = "bnpo"
    """grpo: token mean per answer, then mean over answers; bnpo: mean over every answer token of the
    micro-batch (TRL's default 'dapo' on one process without accumulation); dr_grpo: sum over
    answers / (answers x max_new_tokens)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantages (reward - group mean) divided by the group's std (group), by the std of the
    micro-batch's rewards (batch: a group whose answers differ by little keeps a small advantage),
    or not at all (none, Dr. GRPO)."""
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("grounding_iou")])
    thinking: bool | None = None
    """Thinking generations: prompts open the think block (true) or close an empty one (false);
    None: the template's default."""
    drift_window: int = 20
    """Steps per window of the drift warning (training/drift.py): at the end of each window, a warning
    when the mean reward did not rise over the previous window while the KL to the reference grew, or
    fell below the best earlier window; 0: no such check."""
    use_vllm: bool = False
    """Sample the groups with vLLM (GPU only, vllm installed); see README 'GRPO'."""

    def validate(self) -> None:
        require_positive("grpo", self, "max_new_tokens", "temperature", "epsilon", "epsilon_high")
        if self.num_generations < 2:
            raise ConfigError(
                f"'grpo.num_generations' must be at least 2 (advantages compare answers within a group), "
                f"got {self.num_generations}"
            )
        if self.drift_window and self.drift_window < 3:
            raise ConfigError(
                f"'grpo.drift_window' must be 0 (off) or at least 3 steps, got {self.drift_window}"
            )
        if not 0 < self.top_p <= 1 or self.top_k < 0 or self.beta < 0 or self.num_iterations < 1:
            raise ConfigError(
                "'grpo.top_p' must be in (0, 1], 'grpo.top_k' and 'grpo.beta' >= 0, 'grpo.num_iterations' >= 1"
            )
        if not self.rewards:
            raise ConfigError("'grpo.rewards' needs at least one reward")
        for r in self.rewards:
            if not r.name:
                raise ConfigError("every entry of 'grpo.rewards' needs a 'name'")
            if r.weight != r.weight:  # NaN
                raise ConfigError(f"'grpo.rewards': reward {r.name!r} has a NaN weight")


@dataclass
class RecipeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    reranker: RerankerConfig = field(default_factory=RerankerConfig)

    def validate(self) -> None:
        for section in (getattr(self, f.name) for f in fields(self)):  # every section, in order
            section.validate()
        if (self.eval.generate or self.eval.best_metric) and not self.data.eval:
            raise ConfigError("'eval.generate' and 'eval.best_metric' need held-out data in 'data.eval'")
        if (
            self.eval.best_metric
            and (self.train.eval_steps or self.train.save_steps)
            and (self.train.save_steps % (self.train.eval_steps or self.train.save_steps))
        ):
            raise ConfigError(
                "'eval.best_metric' keeps the best checkpoint: 'train.save_steps' must be a multiple of "
                "'train.eval_steps'"
            )
        if self.train.mode == "qlora" and self.train.deepspeed and zero_stage(self.train.deepspeed) == 3:
            raise ConfigError(
                "Q-LoRA cannot run under DeepSpeed ZeRO-3 (4-bit weights cannot be partitioned); "
                "use configs/deepspeed/zero2.json or no DeepSpeed"
            )
        if self.train.mode == "qlora" and self.model.dtype == "fp32":
            raise ConfigError("Q-LoRA computes in 16-bit: set 'model.dtype' to bf16 or fp16")
