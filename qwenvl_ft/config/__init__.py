"""Typed recipe configuration: schema (dataclasses) and loader (YAML + dotted overrides)."""

from .loader import apply_override, dump_yaml, load_recipe, to_dict
from .schema import (
    ConfigError,
    DataConfig,
    DatasetSpec,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    OutputConfig,
    QuantConfig,
    RecipeConfig,
    TrainConfig,
    VideoConfig,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "DatasetSpec",
    "LoraConfig",
    "ModelConfig",
    "OutputConfig",
    "QuantConfig",
    "EvalConfig",
    "RecipeConfig",
    "TrainConfig",
    "VideoConfig",
    "apply_override",
    "dump_yaml",
    "load_recipe",
    "to_dict",
]
