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
from .qwen3_8 import Qwen3_8Family, takes_reasoning_effort
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
        Qwen3_8Family(),
    )
}


def get_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}") from None


def detect_family(model_dir: str | Path) -> ModelFamily:
    """The family of a checkpoint directory, from the `model_type` in its config.json; where several
    generations share a model_type (Qwen3.5 and Qwen3.8), the one that `recognizes` the checkpoint."""
    cfg_file = Path(model_dir) / "config.json"
    try:
        model_type = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        raise ValueError(f"{model_dir}: no config.json, so this is not a checkpoint directory") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not valid JSON: {e}") from None
    candidates = [f for f in FAMILIES.values() if model_type in f.model_types]
    # Generations that look at the checkpoint first; the plain one claims what none of them does.
    candidates.sort(key=lambda f: type(f).recognizes is ModelFamily.recognizes)
    for family in candidates:
        if family.recognizes(Path(model_dir)):
            if takes_reasoning_effort(Path(model_dir)) and not family.reasoning_efforts:
                raise ValueError(
                    f"{model_dir}: its chat template takes reasoning_effort (Qwen3.8's), which "
                    f"{family.title} ({family.name}) does not render; Qwen3.8 is supported on the dense "
                    "architecture (family qwen3_8) only"
                )
            return family
    known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise ValueError(
        f"{cfg_file}: model_type {model_type!r} is not a Qwen VL generation this toolkit knows ({known})"
    )


def resolve_family(model_dir: str | Path, name: str | None = None) -> ModelFamily:
    """The family a recipe names, checked against the checkpoint; detected when not named."""
    if name is not None and _shares_model_type(get_family(name), model_dir):
        return get_family(name)  # the recipe names one of the generations with this model_type
    detected = detect_family(model_dir)
    if name is not None and get_family(name) is not detected:
        raise ValueError(
            f"the recipe says family {name!r} but {model_dir}/config.json is a {detected.name} checkpoint"
        )
    return detected


def _shares_model_type(family: ModelFamily, model_dir: str | Path) -> bool:
    """Another registered generation has the checkpoint's model_type too, and so does `family`."""
    try:
        model_type = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get(
            "model_type"
        )
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    sharing = [f for f in FAMILIES.values() if model_type in f.model_types]
    return len(sharing) > 1 and family in sharing


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
