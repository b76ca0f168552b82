"""What to change when a recipe does not fit: one change at a time, each estimated again, best first."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..config import RecipeConfig
from .estimate import Plan, estimate
from .model import ModelFacts
from .setup import ZERO3, ZERO3_OFFLOAD, Setup, setup_from_recipe


@dataclass(frozen=True)
class Lever:
    change: str
    total_gib: float
    saves_gib: float


def _edits(cfg: RecipeConfig, s: Setup, plan: Plan, facts: ModelFacts) -> list[tuple[str, Callable]]:
    """Recipe edits worth trying for this plan: (description, function that edits a copy)."""
    t, edits = cfg.train, []

    def put(section: str, key: str, value) -> Callable:
        return lambda c: setattr(getattr(c, section), key, value)

    if not t.gradient_checkpointing:
        edits.append(("train.gradient_checkpointing: true", put("train", "gradient_checkpointing", True)))
    if t.loss == "standard" and not t.liger:
        edits.append(("train.loss: chunked", put("train", "loss", "chunked")))
    if t.mode == "full":
        edits.append(("train.mode: lora", put("train", "mode", "lora")))
        if not t.freeze_vision:
            edits.append(("train.freeze_vision: true", put("train", "freeze_vision", True)))
    elif t.mode == "lora" and facts.quantization is None and s.engine.stage < 3 and cfg.model.dtype != "fp32":
        edits.append(("train.mode: qlora (4-bit base)", put("train", "mode", "qlora")))
    if plan.term("activations: vision") > 0.05 * plan.dynamic_gib and facts.family.vision.fixed_size is None:
        pixels = (cfg.model.max_pixels or facts.family.vision.max_pixels) // 4
        edits.append((f"model.max_pixels: {pixels} (half each side)", put("model", "max_pixels", pixels)))
    if t.per_device_batch_size > 1:
        edits.append(
            (
                "train.per_device_batch_size: 1 (raise gradient_accumulation_steps)",
                put("train", "per_device_batch_size", 1),
            )
        )
    if s.seq > 1024:
        d = cfg.data
        key = "pack_length" if d.packing and d.pack_length else "max_length"
        edits.append(
            (f"data.{key}: {s.seq // 2} (longer samples dropped or cut)", put("data", key, s.seq // 2))
        )
    return edits


def _engines(s: Setup) -> list[tuple[str, Setup]]:
    if s.mode == "qlora":  # 4-bit weights cannot be partitioned
        return []
    out = []
    if s.engine.stage < 3:
        n = s.nproc if s.nproc > 1 else 8
        out.append(
            (
                f"ZeRO-3 across {n} GPUs (configs/deepspeed/zero3.json, --nproc {n})",
                replace(s, engine=ZERO3, nproc=n),
            )
        )
    if not s.engine.offload_param:
        out.append(
            (
                "ZeRO-3 + CPU offload of weights and optimizer (configs/deepspeed/zero3_offload.json)",
                replace(s, engine=ZERO3_OFFLOAD),
            )
        )
    return out


def levers(cfg: RecipeConfig, facts: ModelFacts, plan: Plan, limit: int = 5) -> list[Lever]:
    """The single changes that lower the per-rank total the most, each with its new total."""
    s, base = plan.setup, plan.total_gib
    tried: list[tuple[str, Setup]] = []
    for change, edit in _edits(cfg, s, plan, facts):
        c = copy.deepcopy(cfg)
        edit(c)
        setup, _ = setup_from_recipe(c, facts, s.nproc, _images_per_sample(s, cfg))
        tried.append((change, setup))
    tried += _engines(s)
    out = []
    for change, setup in tried:
        total = estimate(facts, setup).total_gib
        if total < base - 0.05:
            out.append(Lever(change, total, base - total))
    return sorted(out, key=lambda lever: lever.total_gib)[:limit]


def _images_per_sample(s: Setup, cfg: RecipeConfig) -> int:
    d = cfg.data
    per_row = max(1, s.seq // d.max_length) if d.packing else 1
    return max(1, s.images // per_row)
