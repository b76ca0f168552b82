"""Refuse, at start, what a family does not declare it can do: never run silently wrong.

Shared code relies on a family's declared capabilities (`ModelFamily.packing_isolation`,
`plans_layers`, ...). A new generation that declares a capability but does not
implement it, or a recipe that needs one the family lacks, is stopped here with its name and the
way out, before a model is loaded:

    check_capabilities(family, cfg)     # train(): once, before anything else runs
    check_plan(family, config)          # qwenvl-ft plan: the planner can describe the layers

The tests build a family that declares linear-attention packing without installing it and check
that each of these refuses it (tests/unit/models/test_capabilities.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config.schema import ConfigError
from .base import ModelFamily

if TYPE_CHECKING:
    from ..config import RecipeConfig


def implements(family: ModelFamily, hook: str) -> bool:
    """Whether the family's class overrides `ModelFamily.<hook>` (the base default refuses or does nothing)."""
    return getattr(type(family), hook) is not getattr(ModelFamily, hook)


def check_capabilities(family: ModelFamily, cfg: RecipeConfig) -> None:
    """Raise ConfigError when the recipe needs something `family` does not declare or implement."""
    _packing(family, cfg)
    _thinking(family, cfg)


def _thinking(family: ModelFamily, cfg: RecipeConfig) -> None:
    problem = thinking_mode_problem(family, cfg.data.thinking) or effort_problem(
        family, cfg.data.reasoning_effort, "data.reasoning_effort"
    )
    if problem:
        raise ConfigError(problem)


def effort_problem(family: ModelFamily, effort: str | None, what: str) -> str | None:
    """Why `effort` cannot be asked of `family` (`what` names the setting), or None when it can."""
    if effort is None:
        return None
    if not family.reasoning_efforts:
        return f"{what}: {effort}, but {family.title} ({family.name}) has no reasoning effort (Qwen3.8 has)"
    if effort not in family.reasoning_efforts:
        return f"{what}: {effort}, but {family.title} takes {', '.join(family.reasoning_efforts)}"
    return None


def thinking_mode_problem(family: ModelFamily, mode: str | None) -> str | None:
    """Why `data.thinking: mode` cannot render on `family`, or None when it can (the recipe check
    here and the encoder, which the data check runs without a recipe, both ask this).

    The modes render reasoning in the think blocks of the family's official template; a family
    without a thinking mode takes `inline` (reasoning as plain text of the answer, as the data
    wrote it) or `drop`, and a thinking family refuses `inline` (its template has its own blocks)."""
    if mode is None or mode == "drop" or (mode == "inline") != family.thinking:
        return None
    if family.thinking:
        return (
            f"data.thinking: inline is for generations without a thinking mode; {family.title} "
            f"({family.name}) renders reasoning in its own think blocks: use template, drop_earlier, keep or drop"
        )
    return (
        f"data.thinking: {mode}, but {family.title} ({family.name}) has no thinking mode; use inline "
        "(reasoning trained as plain text, as the data wrote it: the default) or drop"
    )


def _packing(family: ModelFamily, cfg: RecipeConfig) -> None:
    """Packing is exact only when the family keeps packed samples apart in every layer.

    "positions" is enough where attention is the only mixing across tokens (positions restart per
    sample, transformers turns that into block-causal attention). Any other declared isolation
    must be installed by `isolate_packed_samples`; the base default installs nothing.
    """
    if not cfg.data.packing or family.packing_isolation == "positions":
        return
    if not implements(family, "isolate_packed_samples"):
        raise ConfigError(
            f"data.packing: {family.title} ({family.name}) declares packing_isolation="
            f"{family.packing_isolation!r} but installs no isolation (isolate_packed_samples), so packed "
            "samples would leak into each other; set data.packing: false"
        )


def check_plan(family: ModelFamily, config: Any) -> None:
    """Raise ValueError, in one line, when the memory planner cannot describe `family`'s layers."""
    if not family.plans_layers:
        raise ValueError(f"qwenvl-ft plan does not support {family.title} ({family.name}) yet")
    try:
        family.shapes(config)
    except (AttributeError, KeyError, TypeError, NotImplementedError) as e:
        # A family that reads another generation's config fields (or none): say which, not a traceback.
        raise ValueError(
            f"qwenvl-ft plan cannot describe the layers of {family.title} ({family.name}): "
            f"{type(e).__name__}: {e}"
        ) from None
