"""Training methods: `train.method` -> the module that runs it, and what of the recipe it honours.

Each method module (sft.py, dpo.py, grpo.py) defines `METHOD = Method(...)`: its `run(run) ->
TrainResult` over the shared lifecycle (lifecycle.py), and the recipe keys it reads beyond those the
lifecycle reads for every method (`COMMON`). A key set away from its default that the chosen method
does not read is refused at start, by name, before anything loads: a setting is honoured or refused,
never silently ignored. Methods never import each other; another objective registers itself with
`register(Method(...))` and needs no edit here or in any method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING

from ..config import ConfigError, RecipeConfig

if TYPE_CHECKING:
    from .lifecycle import Run, TrainResult

# What the lifecycle reads for every method: the model and its adaptation, the optimizer, schedule,
# engine, checkpoints and logging, the output dir, and the processor's settings for reading data.
COMMON = (
    "model.*",
    "lora.*",
    "quant.*",
    "output.*",
    "train.method",
    "train.mode",
    "train.freeze_vision",
    "train.freeze_merger",
    "train.freeze_language",
    "train.vision_lr",
    "train.merger_lr",
    "train.learning_rate",
    "train.epochs",
    "train.max_steps",
    "train.per_device_batch_size",
    "train.gradient_accumulation_steps",
    "train.weight_decay",
    "train.warmup_ratio",
    "train.lr_scheduler",
    "train.max_grad_norm",
    "train.gradient_checkpointing",
    "train.seed",
    "train.deepspeed",
    "train.fsdp",
    "train.logging_steps",
    "train.save_steps",
    "train.eval_steps",
    "train.save_total_limit",
    "train.resume",
    "train.report_to",
    "data.train",
    "data.eval",
    "data.max_length",
    "data.allow_urls",
    "data.num_workers",
    "data.check_workers",
    "data.prefetch_factor",
    "data.image_decode",
    "data.special_text",
    "data.video.*",
    "eval.best_metric",
)


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[Run], TrainResult]
    honours: tuple[str, ...]
    """Recipe keys read beyond COMMON: 'section.key', or 'section.*' for a whole section."""
    summary: str = ""


BUILTIN = {
    "sft": "qwenvl_ft.training.sft",
    "dpo": "qwenvl_ft.training.dpo",
    "grpo": "qwenvl_ft.training.grpo",
    "embedding": "qwenvl_ft.training.embedding",
    "reranker": "qwenvl_ft.training.reranker",
}
_registered: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make `train.method: <method.name>` run `method` (a built-in name cannot be taken)."""
    if method.name in BUILTIN:
        raise ValueError(f"train.method {method.name!r} is built in")
    _registered[method.name] = method
    return method


def unregister(name: str) -> None:
    _registered.pop(name, None)


def names() -> list[str]:
    return [*BUILTIN, *_registered]


def get_method(name: str) -> Method:
    """The method named by `train.method`; ConfigError listing the known ones."""
    if name in BUILTIN:  # imported only when chosen: a method's dependencies (TRL) load with it
        return importlib.import_module(BUILTIN[name]).METHOD
    if name in _registered:
        return _registered[name]
    raise ConfigError(f"unknown 'train.method': {name!r}; known: {', '.join(names())}")


def flat(config, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf of a recipe (lists, such as data.train, are leaves)."""
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            yield from flat(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def honoured(method: Method, key: str) -> bool:
    return any(p == key or (p.endswith(".*") and key.startswith(p[:-1])) for p in (*COMMON, *method.honours))


def check_honoured(method: Method, cfg: RecipeConfig) -> None:
    """ConfigError naming every key set away from its default that `method` does not read."""
    defaults = dict(flat(RecipeConfig()))
    ignored = [key for key, value in flat(cfg) if value != defaults[key] and not honoured(method, key)]
    if ignored:
        shown = ", ".join(f"'{k}'" for k in ignored)
        raise ConfigError(
            f"'train.method: {method.name}' does not use {shown}; remove "
            f"{'it' if len(ignored) == 1 else 'them'} from the recipe (or choose a method that does)"
        )
