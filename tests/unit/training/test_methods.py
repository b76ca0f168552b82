"""The method contract: every recipe key is read by the lifecycle or by the chosen method, or refused.

For each built-in method, every key of the schema it does not declare, set away from its default,
is refused by name before anything loads; every key it declares passes. Every shipped recipe sets
only keys its method reads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qwenvl_ft.config import ConfigError, RecipeConfig, load_recipe
from qwenvl_ft.train import train
from qwenvl_ft.training.methods import (
    BUILTIN,
    Method,
    check_honoured,
    flat,
    get_method,
    honoured,
    register,
    unregister,
)

REPO = Path(__file__).resolve().parents[3]
KEYS = [key for key, _ in flat(RecipeConfig())]


def with_key(cfg: RecipeConfig, key: str, value) -> RecipeConfig:
    """`cfg` with the dotted `key` set to `value` (no validation: the contract compares values only)."""
    head, _, rest = key.partition(".")
    if not rest:
        return replace(cfg, **{head: value})
    return replace(cfg, **{head: with_key(getattr(cfg, head), rest, value)})


@pytest.mark.parametrize("name", list(BUILTIN))
def test_a_key_the_method_does_not_read_is_refused_by_name(name):
    method = get_method(name)
    base = with_key(RecipeConfig(), "train.method", name)
    ignored = [k for k in KEYS if not honoured(method, k)]
    assert ignored, f"{name} reads every key?"
    for key in ignored:
        with pytest.raises(ConfigError, match=rf"'train.method: {name}' does not use '{key}'"):
            check_honoured(method, with_key(base, key, object()))
    for key in KEYS:
        if honoured(method, key):
            check_honoured(method, with_key(base, key, object()))


def test_what_each_method_refuses():
    """Spot checks against what the methods do: these keys change nothing in the named method."""
    refused = {
        "sft": ["dpo.beta", "grpo.num_generations", "grpo.rewards"],
        "dpo": [
            "data.on_load_error",
            "data.packing",
            "data.overlength",
            "train.loss",
            "eval.generate",
            "grpo.beta",
            "train.sequence_parallel",  # its sequence log-probabilities run on whole samples
        ],
        "grpo": [
            "data.packing",
            "data.on_load_error",
            "data.thinking",
            "data.supervise",
            "train.liger",
            "dpo.beta",
            "train.sequence_parallel",  # generation runs on whole samples
        ],
    }
    for name, keys in refused.items():
        for key in keys:
            assert not honoured(get_method(name), key), (name, key)
    for name in BUILTIN:
        for key in ("model.path", "train.learning_rate", "data.train", "data.video.fps", "lora.r"):
            assert honoured(get_method(name), key), (name, key)


def test_train_refuses_before_anything_loads(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {path: /nowhere/model}\ndata: {train: [{path: /nowhere/d.jsonl}], on_load_error: skip}\n"
        "train: {method: dpo}\n"
    )
    with pytest.raises(ConfigError, match=r"'train.method: dpo' does not use 'data.on_load_error'"):
        train(load_recipe(recipe))
    recipe.write_text(
        "model: {path: /nowhere/model}\ndata: {train: [{path: d.jsonl}]}\ntrain: {method: ppo}\n"
    )
    with pytest.raises(ConfigError, match=r"unknown 'train.method': 'ppo'; known: sft, dpo, grpo"):
        train(load_recipe(recipe))


def test_a_registered_method_is_chosen_by_name_and_cannot_take_a_builtin_one():
    method = Method("echo", lambda run: run, honours=())
    register(method)
    try:
        assert get_method("echo") is method
        cfg = with_key(RecipeConfig(), "train.method", "echo")
        check_honoured(method, cfg)
        with pytest.raises(ConfigError, match="'train.method: echo' does not use 'data.packing'"):
            check_honoured(method, with_key(cfg, "data.packing", True))
    finally:
        unregister("echo")
    with pytest.raises(ValueError, match="built in"):
        register(Method("sft", lambda run: run, honours=()))


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(REPO) for p in (REPO / "recipes").rglob("*.yaml")), ids=str
)
def test_every_recipe_sets_only_keys_its_method_reads(path, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes name configs/deepspeed/*.json relative to the repository
    cfg = load_recipe(REPO / path)
    check_honoured(get_method(cfg.train.method), cfg)
