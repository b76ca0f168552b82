"""The model-family registry: one module per Qwen VL generation, looked up by name or detected.

family = detect_family("/ckpt/Qwen2.5-VL-7B-Instruct")   # from config.json's model_type
family = get_family("qwen2_5_vl")
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import BoxStyle, ChatFormat, ModelFamily, ModulePaths, VisionBudget
from .qwen2_5_vl import Qwen2_5_VLFamily
from .qwen2_vl import Qwen2VLFamily
from .qwen3_5 import Qwen3_5Family, Qwen3_5MoeFamily
from .qwen3_vl import Qwen3VLFamily
from .qwen3_vl_moe import Qwen3VLMoeFamily
from .qwen_vl import QwenVLFamily

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        QwenVLFamily(),
        Qwen2VLFamily(),
        Qwen2_5_VLFamily(),
        Qwen3VLFamily(),
        Qwen3VLMoeFamily(),
        Qwen3_5Family(),
        Qwen3_5MoeFamily(),
    )
}


def get_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}") from None


def detect_family(model_dir: str | Path) -> ModelFamily:
    """The family of a checkpoint directory, from the `model_type` in its config.json."""
    cfg_file = Path(model_dir) / "config.json"
    try:
        model_type = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        raise ValueError(f"{model_dir}: no config.json, so this is not a checkpoint directory") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not valid JSON: {e}") from None
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise ValueError(
        f"{cfg_file}: model_type {model_type!r} is not a Qwen VL generation this toolkit knows ({known})"
    )


def resolve_family(model_dir: str | Path, name: str | None = None) -> ModelFamily:
    """The family a recipe names, checked against the checkpoint; detected when not named."""
    detected = detect_family(model_dir)
    if name is not None and get_family(name) is not detected:
        raise ValueError(
            f"the recipe says family {name!r} but {model_dir}/config.json is a {detected.name} checkpoint"
        )
    return detected


__all__ = [
    "FAMILIES",
    "BoxStyle",
    "ChatFormat",
    "ModelFamily",
    "ModulePaths",
    "VisionBudget",
    "detect_family",
    "get_family",
    "resolve_family",
]
