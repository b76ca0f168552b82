"""The real CLI: --help, config show on every recipe, make-tiny for every family."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from family_facts import registered

from qwenvl_ft.cli import main
from qwenvl_ft.models import detect_family, get_family

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "config" in out and "make-tiny" in out


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "qwenvl_ft", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("qwenvl-ft ")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_config_show_every_recipe(recipe, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["config", "show", str(recipe), "train.learning_rate=1e-5"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate: 1.0e-05" in out and "model:" in out


def test_config_show_reports_error_in_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: x\n  dtype: bf32\ndata:\n  train: [{path: a.jsonl}]\n")
    assert main(["config", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"qwenvl-ft config: error: {bad}: 'model.dtype' must be one of 'bf16', 'fp16', 'fp32'; got 'bf32'\n"
    )


def transformers_native(family) -> bool:
    """The family's model class is transformers' own (the first generation's is native to qwenvl-ft)."""
    return family.model_class().__module__.startswith("transformers.")


@pytest.mark.parametrize("family", registered(transformers_native))
def test_make_tiny_reloads_as_a_plain_transformers_checkpoint(family, tmp_path, capsys):
    out_dir = tmp_path / family
    assert main(["make-tiny", family, str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "self-check: reloaded from disk" in printed and str(out_dir.resolve()) in printed
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        assert (out_dir / name).is_file(), name
    # The published model_type (Qwen3.8's is qwen3_5's), and detection finds the family again.
    assert json.loads((out_dir / "config.json").read_text())["model_type"] in get_family(family).model_types
    assert detect_family(out_dir).name == family

    # Loaded with transformers alone, the way a user would load a real checkpoint.
    import transformers

    cls = getattr(transformers, json.loads((out_dir / "config.json").read_text())["architectures"][0])
    model = cls.from_pretrained(out_dir)
    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    proc = transformers.Qwen2VLImageProcessorPil.from_pretrained(out_dir)
    from PIL import Image

    pixels = proc(images=[Image.new("RGB", (64, 64), (10, 200, 10))], return_tensors="pt")
    n = int(pixels["image_grid_thw"].prod()) // proc.merge_size**2
    text = (
        "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>Hi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n"
    )
    ids = tok(text, return_tensors="pt")["input_ids"]
    mm = (ids == tok.convert_tokens_to_ids("<|image_pad|>")).long()
    loss = model(input_ids=ids, labels=ids, mm_token_type_ids=mm, **pixels).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.lm_head.weight.grad is not None


def test_make_tiny_refuses_non_empty_dir(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    assert main(["make-tiny", "qwen2_vl", str(tmp_path / "x")]) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err


@pytest.mark.parametrize("family", registered(lambda f: not transformers_native(f)))
def test_make_tiny_native_model(family, tmp_path, capsys):
    """A generation whose model is ours (first generation: model_type "qwen") self-checks the same way."""
    assert main(["make-tiny", family, str(tmp_path / "q")]) == 0
    assert "self-check: reloaded from disk" in capsys.readouterr().out
    model_type = json.loads((tmp_path / "q/config.json").read_text())["model_type"]
    assert model_type in get_family(family).model_types


def test_make_tiny_small_vocab(tmp_path, capsys):
    assert main(["make-tiny", "qwen2_5_vl", str(tmp_path / "s"), "--small-vocab"]) == 0
    assert "small offline BPE" in capsys.readouterr().out
