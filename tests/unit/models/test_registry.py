"""The family registry: detection from config.json (never the directory name), clear errors."""

from __future__ import annotations

import json

import pytest
from family_facts import registered

from qwenvl_ft.models import FAMILIES, detect_family, get_family, resolve_family


def checkpoint(tmp_path, dirname: str, model_type: str, template: str | None = None):
    path = tmp_path / dirname
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    if template is not None:
        (path / "chat_template.jinja").write_text(template)
    return path


@pytest.mark.parametrize(
    ("model_type", "family"),
    [
        ("qwen", "qwen_vl"),
        ("qwen2_vl", "qwen2_vl"),
        ("qwen2_5_vl", "qwen2_5_vl"),
        ("qwen3_vl", "qwen3_vl"),
        ("qwen3_vl_moe", "qwen3_vl_moe"),
    ],
)
def test_detect_from_model_type(tmp_path, model_type, family):
    assert detect_family(checkpoint(tmp_path, "ckpt", model_type)).name == family


@pytest.mark.parametrize("name", registered())
def test_every_declared_model_type_detects_its_own_family(tmp_path, name):
    """Detection finds each declared model_type's owner; where generations share one (Qwen3.5 and
    Qwen3.8), the checkpoint's own chat template (the family's) tells them apart."""
    family = FAMILIES[name]
    for model_type in family.model_types:
        path = checkpoint(tmp_path, model_type, model_type, family.chat_template)
        assert detect_family(path) is family


def test_directory_name_is_ignored(tmp_path):
    # A directory called Qwen2-VL holding a Qwen3-VL checkpoint is a Qwen3-VL checkpoint.
    assert detect_family(checkpoint(tmp_path, "Qwen2-VL-7B-Instruct", "qwen3_vl")).name == "qwen3_vl"


def test_unknown_model_type_and_missing_config(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"model_type 'llava' is not a Qwen VL generation this toolkit knows \(qwen, qwen2_vl",
    ):
        detect_family(checkpoint(tmp_path, "x", "llava"))
    with pytest.raises(ValueError, match=r"no config.json, so this is not a checkpoint directory"):
        detect_family(tmp_path)


def test_named_family_must_match_checkpoint(tmp_path):
    path = checkpoint(tmp_path, "c", "qwen2_5_vl")
    assert resolve_family(path, "qwen2_5_vl").name == "qwen2_5_vl"
    with pytest.raises(
        ValueError, match=r"the recipe says family 'qwen2_vl' but .*/c/config.json is a qwen2_5_vl checkpoint"
    ):
        resolve_family(path, "qwen2_vl")
    with pytest.raises(ValueError, match=r"unknown model family 'qwen4'; known families: qwen_vl, qwen2_vl"):
        get_family("qwen4")


def test_every_family_declares_its_facts():
    for family in FAMILIES.values():
        assert family.model_types and family.special_tokens[0] == "<|endoftext|>"
        assert family.chat.image_pad in family.special_tokens
        assert family.paths.vision not in family.paths.language
        assert "visual" not in family.lora_target_regex


def test_qwen3_8_is_told_from_qwen3_5_by_its_template_alone(tmp_path):
    """config.json is the same (model_type qwen3_5); the template that takes reasoning_effort is 3.8's,
    in chat_template.jinja or tokenizer_config.json; without one the checkpoint is taken for Qwen3.5,
    whatever the directory is called, and a recipe naming qwen3_8 is believed."""
    effort = "{%- set e = reasoning_effort|default('xhigh') %}"
    assert detect_family(checkpoint(tmp_path, "a", "qwen3_5", effort)).name == "qwen3_8"
    config = checkpoint(tmp_path, "b", "qwen3_5")
    (config / "tokenizer_config.json").write_text(json.dumps({"chat_template": effort}))
    assert detect_family(config).name == "qwen3_8"
    bare = checkpoint(tmp_path, "Qwen3.8-27B", "qwen3_5")
    assert detect_family(bare).name == "qwen3_5"
    assert resolve_family(bare, "qwen3_8").name == "qwen3_8"
    assert detect_family(checkpoint(tmp_path, "c", "qwen3_5", "{{ messages }}")).name == "qwen3_5"


def test_a_qwen3_8_template_on_the_moe_architecture_is_refused_by_name(tmp_path):
    path = checkpoint(tmp_path, "moe", "qwen3_5_moe", "{{ reasoning_effort }}")
    with pytest.raises(
        ValueError, match=r"takes reasoning_effort \(Qwen3.8's\), which Qwen3.5-MoE \(qwen3_5_moe\)"
    ):
        detect_family(path)
