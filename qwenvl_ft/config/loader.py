"""Load a YAML recipe plus dotted command-line overrides into a validated `RecipeConfig`.

    cfg = load_recipe("recipes/tiny/qwen2_5_vl_lora.yaml", ["train.learning_rate=1e-5"])

Every error names the offending key and where it came from (the file, or `override`), and for
unknown keys and bad choices lists what is valid, so a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .schema import ConfigError, RecipeConfig

_NONE_WORDS = {"none", "null", "~"}


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> RecipeConfig:
    """Read `path` (may be None for overrides alone), apply `overrides`, type-check and validate."""
    raw: dict[str, Any] = {}
    source = "<overrides>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"recipe not found: {path}") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    # Check the file alone first, so an error in it is reported against the file, not an override.
    build(RecipeConfig, raw, source, prefix="")
    for item in overrides or []:
        apply_override(raw, item)
    cfg = build(RecipeConfig, raw, source if not overrides else f"{source} + overrides", prefix="")
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in the nested dict `raw`; the value is parsed as YAML (`1e-5`, `[a, b]`, `null`)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"override {item!r} must look like section.key=value, e.g. train.learning_rate=1e-5"
        )
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None


def build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    """Turn a nested dict into dataclass `cls`, checking keys and types against its field hints."""
    where = prefix.rstrip(".") or "the recipe"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            hint = difflib.get_close_matches(str(key), names, n=1)
            maybe = f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}'{maybe}; valid keys in {where}: {', '.join(names)}"
            )
        kwargs[key] = _coerce(hints[key], value, source, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)
        ):
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _coerce(arm, value, source, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source, prefix=f"{key}.")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: '{key}' must be one of {choices}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {_show(value)}")
        return [_coerce(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {_show(value)}")
        return value
    if hint is float:
        # YAML 1.1 reads `1e-5` as a string; accept any numeric spelling.
        if isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be a number, got {_show(value)}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: '{key}' must be a number, got {_show(value)}")
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported config field type {hint!r} for {key}")  # a schema bug, not a user error


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (what `config show` prints and runs save)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
