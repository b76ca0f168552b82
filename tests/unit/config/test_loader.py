"""Recipe loading: errors are pinned by message (key, source, valid choices); overrides apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenvl_ft.config import ConfigError, load_recipe
from qwenvl_ft.config.schema import zero_stage

REPO = Path(__file__).resolve().parents[3]

MINIMAL = """
model:
  path: /ckpt/tiny
data:
  train:
    - path: data.jsonl
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_minimal_recipe_gets_defaults(tmp_path):
    cfg = load_recipe(write(tmp_path, MINIMAL))
    assert cfg.model.path == "/ckpt/tiny"
    assert cfg.data.train[0].path == "data.jsonl"
    assert cfg.data.train[0].format == "auto"
    assert cfg.train.mode == "lora"
    assert cfg.train.freeze_vision is True
    assert cfg.lora.targets is None


def test_unknown_key_names_file_key_and_valid_keys(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  lerning_rate: 1.0e-5\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: unknown key 'train.lerning_rate' (did you mean 'train.learning_rate'?)")
    assert "valid keys in train: method, mode, freeze_vision," in msg


def test_unknown_section(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'trainer' \(did you mean 'train'\?\); valid keys in the recipe: model, data, lora, quant, train, output",
    ):
        load_recipe(write(tmp_path, MINIMAL + "trainer:\n  x: 1\n"))


def test_bad_choice_lists_choices(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  mode: lorra\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert str(e.value) == f"{path}: 'train.mode' must be one of 'full', 'lora', 'qlora'; got 'lorra'"


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  max_steps: ten\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert str(e.value) == f"{path}: 'train.max_steps' must be an integer, got 'ten' (str)"


def test_bool_is_not_an_integer_and_string_is_not_a_bool(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.max_steps' must be an integer, got True \(bool\)"):
        load_recipe(write(tmp_path, MINIMAL + "train:\n  max_steps: true\n"))
    with pytest.raises(
        ConfigError, match=r"'train.freeze_vision' must be true or false, got 'yes please' \(str\)"
    ):
        load_recipe(write(tmp_path, MINIMAL + "train:\n  freeze_vision: yes please\n"))


def test_yaml_1_1_exponent_string_is_a_float(tmp_path):
    # PyYAML reads `1e-5` (no dot) as a string; a float field must still accept it.
    cfg = load_recipe(write(tmp_path, MINIMAL + "train:\n  learning_rate: 1e-5\n"))
    assert cfg.train.learning_rate == 1e-5


def test_nested_list_of_datasets_is_checked(tmp_path):
    path = write(tmp_path, "model:\n  path: x\ndata:\n  train:\n    - path: a.jsonl\n      fromat: llava\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'data.train\[0\].fromat' \(did you mean 'data.train\[0\].format'\?\)"
    ):
        load_recipe(path)


def test_overrides_apply_and_are_typed(tmp_path):
    cfg = load_recipe(
        write(tmp_path, MINIMAL),
        [
            "train.learning_rate=1e-5",
            "train.mode=full",
            "model.max_pixels=50176",
            "lora.targets=[q_proj, v_proj]",
            "model.family=null",
        ],
    )
    assert cfg.train.learning_rate == 1e-5
    assert cfg.train.mode == "full"
    assert cfg.model.max_pixels == 50176
    assert cfg.lora.targets == ["q_proj", "v_proj"]
    assert cfg.model.family is None


def test_bad_override_names_override(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"\+ overrides: unknown key 'train.learning_rat' \(did you mean 'train.learning_rate'\?\)",
    ):
        load_recipe(write(tmp_path, MINIMAL), ["train.learning_rat=1"])
    with pytest.raises(ConfigError, match=r"override 'train.learning_rate' must look like section.key=value"):
        load_recipe(write(tmp_path, MINIMAL), ["train.learning_rate"])


def test_cross_field_rules(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.path' is required"):
        load_recipe(write(tmp_path, "data:\n  train:\n    - path: a.jsonl\n"))
    with pytest.raises(ConfigError, match=r"'data.train' needs at least one dataset"):
        load_recipe(write(tmp_path, "model:\n  path: x\n"))
    with pytest.raises(ConfigError, match=r"'train.vision_lr' is set but the vision tower is frozen"):
        load_recipe(write(tmp_path, MINIMAL), ["train.vision_lr=1e-6"])
    with pytest.raises(
        ConfigError, match=r"'model.min_pixels' \(100\) is larger than 'model.max_pixels' \(10\)"
    ):
        load_recipe(write(tmp_path, MINIMAL), ["model.min_pixels=100", "model.max_pixels=10"])


def test_qlora_with_zero3_is_refused_from_the_json_stage(tmp_path):
    ds = tmp_path / "my_ds.json"  # the name says nothing: the stage is read from the file
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ConfigError, match=r"Q-LoRA cannot run under DeepSpeed ZeRO-3"):
        load_recipe(write(tmp_path, MINIMAL), ["train.mode=qlora", f"train.deepspeed={ds}"])
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert (
        load_recipe(write(tmp_path, MINIMAL), ["train.mode=qlora", f"train.deepspeed={ds}"]).train.mode
        == "qlora"
    )


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe not found: .*nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_recipe(write(tmp_path, "model: [unclosed\n"))


@pytest.mark.parametrize(
    "recipe", sorted((REPO / "recipes").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO))
)
def test_every_recipe_loads_and_validates(recipe, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes name repo-relative paths (deepspeed configs, demo data)
    cfg = load_recipe(recipe)
    assert cfg.model.path and cfg.data.train and cfg.output.dir


@pytest.mark.parametrize(
    "config", sorted((REPO / "configs").rglob("*.json")), ids=lambda p: str(p.relative_to(REPO))
)
def test_every_deepspeed_config_is_thin_and_valid(config):
    ds = json.loads(config.read_text())
    assert zero_stage(str(config)) in (2, 3)
    # The recipe owns batch sizes, accumulation, clipping, precision, optimizer and schedule.
    assert "optimizer" not in ds and "scheduler" not in ds
    assert "train_batch_size" not in ds  # with 'auto' it asserts on CPU (see shared NOTES)
    for key in ("gradient_accumulation_steps", "gradient_clipping", "train_micro_batch_size_per_gpu"):
        assert ds[key] == "auto", key
    assert ds["bf16"]["enabled"] == "auto" and ds["fp16"]["enabled"] == "auto"
