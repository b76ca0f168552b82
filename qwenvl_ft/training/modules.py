"""Which part of the model each parameter belongs to, and what that decides: freezing, the
trainable-parameter table printed before training, and optimizer groups with per-part rates.

Parts come from the family's module paths (vision, merger, language, embeddings, lm_head), so
this works unchanged for every generation and through PEFT's wrappers.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..models.base import ModulePaths

PARTS = ("vision", "merger", "language", "embeddings", "lm_head", "other")
_PEFT_PREFIX = "base_model.model."


def part_of(name: str, paths: ModulePaths) -> str:
    """The part a parameter (or module) name belongs to; the merger is checked before the vision tower it sits in."""
    name = name.removeprefix(_PEFT_PREFIX)

    def under(prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    if any(under(m) for m in paths.merger):
        return "merger"
    if under(paths.vision):
        return "vision"
    if under(paths.embeddings):
        return "embeddings"
    if under(paths.lm_head):
        return "lm_head"
    if any(under(p) for p in paths.language):
        return "language"
    return "other"


def set_trainable(model: torch.nn.Module, paths: ModulePaths, parts: set[str]) -> None:
    """requires_grad on exactly the parameters of `parts` (full fine-tuning)."""
    for name, p in model.named_parameters():
        p.requires_grad_(part_of(name, paths) in parts)


def trainable_table(model: torch.nn.Module, paths: ModulePaths) -> str:
    """Per part: parameters, trainable parameters (LoRA adapters counted apart)."""
    total: dict[str, int] = defaultdict(int)
    train: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        part = "lora" if "lora_" in name else part_of(name, paths)
        total[part] += p.numel()
        if p.requires_grad:
            train[part] += p.numel()
    rows = [("part", "parameters", "trainable", "")]
    for part in (*PARTS, "lora"):
        if total[part]:
            share = f"{100 * train[part] / total[part]:.1f}%" if train[part] else "frozen"
            rows.append((part, f"{total[part]:,}", f"{train[part]:,}", share))
    all_total, all_train = sum(total.values()), sum(train.values())
    rows.append(("total", f"{all_total:,}", f"{all_train:,}", f"{100 * all_train / max(all_total, 1):.2f}%"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


def param_groups(
    model: torch.nn.Module,
    paths: ModulePaths,
    lr: float,
    weight_decay: float,
    vision_lr: float | None = None,
    merger_lr: float | None = None,
) -> list[dict]:
    """Optimizer groups: per-part learning rate; no weight decay on biases and norms (1-D tensors)."""
    rates = {"vision": vision_lr or lr, "merger": merger_lr or lr}
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = defaultdict(list)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        rate = rates.get(part_of(name, paths), lr)
        decay = 0.0 if p.ndim < 2 else weight_decay
        groups[(rate, decay)].append(p)
    return [{"params": ps, "lr": rate, "weight_decay": decay} for (rate, decay), ps in groups.items()]


def parameter_bytes(model: torch.nn.Module, names: list[str]) -> tuple[int, int]:
    """(parameters, bytes of weights + gradients + AdamW states) of the modules named, when trained in full."""
    count = 0
    per_param = 0
    for name in names:
        module = model.get_submodule(name)
        for p in module.parameters():
            count += p.numel()
            per_param = p.element_size() * 2 + 8  # weight + grad in their dtype, two fp32 Adam moments
    return count, count * per_param
