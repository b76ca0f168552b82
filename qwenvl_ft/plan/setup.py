"""What a memory estimate depends on, resolved once from a recipe: mode, precision, engine, budgets.

Levers ("what if gradient checkpointing were on") are `dataclasses.replace` copies of a `Setup`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from ..config import RecipeConfig
from ..config.schema import zero_stage
from .model import ModelFacts

log = logging.getLogger("qwenvl_ft")


@dataclass(frozen=True)
class Engine:
    """How weights, gradients and optimizer states are spread over the ranks."""

    name: str
    stage: int = 0
    """ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also weights (FSDP full shard = 3)."""
    deepspeed: bool = False
    offload_optimizer: bool = False
    offload_param: bool = False


NO_ENGINE = Engine("no DeepSpeed / FSDP")
ZERO3 = Engine("DeepSpeed ZeRO-3", 3, True)
ZERO3_OFFLOAD = Engine("DeepSpeed ZeRO-3 + CPU offload", 3, True, True, True)


def ep_engine() -> Engine:
    """transformers' FSDP2 + expert parallelism: every parameter stored 1/nproc per rank."""
    return Engine("FSDP2 + expert parallel", 3)


def engine_of(deepspeed: str | None, fsdp: bool) -> Engine:
    """The engine a recipe names; a DeepSpeed JSON's offload_* sections decide what leaves the GPU."""
    if fsdp:
        return Engine("FSDP full shard", 3)
    if not deepspeed:
        return NO_ENGINE
    stage = zero_stage(deepspeed)  # also the clear error for a missing or broken file
    with open(deepspeed, encoding="utf-8") as f:
        zero = json.load(f).get("zero_optimization", {})

    def offloaded(key: str) -> bool:
        return str(zero.get(key, {}).get("device", "none")) in ("cpu", "nvme")

    opt, param = offloaded("offload_optimizer"), offloaded("offload_param") and stage == 3
    suffix = " + CPU offload" if opt or param else ""
    return Engine(f"DeepSpeed ZeRO-{stage}{suffix}", stage, True, opt, param)


@dataclass(frozen=True)
class Setup:
    """Everything the estimate reads, per rank."""

    mode: str
    dtype: str
    engine: Engine
    nproc: int
    gradient_checkpointing: bool
    loss: str
    liger: bool
    attn: str
    seq: int
    """Tokens per row: data.max_length, or data.pack_length when packing."""
    batch: int
    packing: bool
    images: int
    """Images per row at the largest size (capped by what fits in `seq`)."""
    max_pixels: int | None
    min_pixels: int | None
    freeze_vision: bool
    freeze_merger: bool | None
    freeze_language: bool
    lora_r: int
    lora_targets: str
    lora_dropout: float
    modules_to_save: tuple[str, ...]
    quant_type: str
    double_quant: bool
    sp: int = 1
    """Ranks sharing each sample (train.sequence_parallel): each holds seq / sp of its tokens."""
    ep: int = 1
    """Ranks splitting each MoE layer's routed experts (train.expert_parallel, plan/experts.py)."""

    @property
    def mixed(self) -> bool:
        return self.dtype in ("bf16", "fp16")


def setup_from_recipe(
    cfg: RecipeConfig, facts: ModelFacts, nproc: int = 1, images_per_sample: int = 1
) -> tuple[Setup, list[str]]:
    """The recipe's Setup, and notes on what was assumed (base or chat model, images per row)."""
    from ..training.setup import modules_to_save, resolve_is_base

    notes = []
    if facts.checkpoint:
        is_base = resolve_is_base(cfg)
    else:
        is_base = bool(cfg.model.is_base)
        if cfg.model.is_base is None:
            notes.append("model.is_base not set and no checkpoint to ask: a chat model (as training assumes)")
    family = facts.family
    lora = cfg.lora
    targets = family.lora_target_regex if lora.targets is None else "|".join(f"(?:{r})" for r in lora.targets)
    d = cfg.data
    seq = (d.pack_length or d.max_length) if d.packing else d.max_length
    samples_per_row = max(1, seq // d.max_length) if d.packing else 1
    t = cfg.train
    rows, max_pixels, min_pixels = retrieval_rows(cfg, notes)
    for key, n in (("sequence_parallel", t.sequence_parallel), ("expert_parallel", t.expert_parallel)):
        if nproc % n:
            raised = -(-nproc // n) * n
            notes.append(f"--nproc {nproc} raised to {raised}: train.{key} {n} needs a multiple")
            nproc = raised
    setup = Setup(
        mode=t.mode,
        dtype=cfg.model.dtype,
        engine=ep_engine() if t.expert_parallel > 1 else engine_of(t.deepspeed, t.fsdp),
        nproc=nproc,
        gradient_checkpointing=t.gradient_checkpointing,
        loss=t.loss,
        liger=t.liger,
        attn=cfg.model.attn_implementation,
        seq=seq,
        batch=t.per_device_batch_size * rows,
        packing=d.packing,
        images=images_per_sample * samples_per_row,
        max_pixels=max_pixels,
        min_pixels=min_pixels,
        freeze_vision=t.freeze_vision,
        freeze_merger=t.freeze_merger,
        freeze_language=t.freeze_language,
        lora_r=lora.r,
        lora_targets=targets,
        lora_dropout=lora.dropout,
        modules_to_save=tuple(modules_to_save(cfg, family, is_base)) if t.mode != "full" else (),
        quant_type=cfg.quant.quant_type,
        double_quant=cfg.quant.double_quant,
        sp=t.sequence_parallel,
        ep=t.expert_parallel,
    )
    return setup, notes


def retrieval_rows(cfg: RecipeConfig, notes: list[str]) -> tuple[int, int | None, int | None]:
    """(model inputs per sample, max_pixels, min_pixels): an embedding or reranker sample is several
    inputs in one step (query, positive, negatives), at the official pixel budget unless the recipe
    sets one; 1 and the recipe's pixels for the other methods."""
    m, t = cfg.model, cfg.train
    if t.method not in ("embedding", "reranker"):
        return 1, m.max_pixels, m.min_pixels
    from ..models.qwen3_vl_retrieval import MAX_PIXELS, MIN_PIXELS

    negatives = (cfg.embedding if t.method == "embedding" else cfg.reranker).negatives
    if negatives is None:
        negatives = 7
        notes.append(f"{t.method}.negatives is unset (all of each sample's): planned for 7")
    rows = negatives + (2 if t.method == "embedding" else 1)
    notes.append(
        f"{t.method}: {rows} inputs per sample (the query{', the positive' if t.method == 'embedding' else ' with the positive'}"
        f" and {negatives} negatives): {t.per_device_batch_size * rows} rows per step"
    )
    official = m.max_pixels is None and m.min_pixels is None
    return rows, MAX_PIXELS if official else m.max_pixels, MIN_PIXELS if official else m.min_pixels
