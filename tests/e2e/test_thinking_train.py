"""Training on data with reasoning: a thinking family trains on it in every `data.thinking` mode
(the data check's token count is what the encoder produces); a family without a thinking mode
trains it as plain text of the answer, as the data wrote it (inline), or drops it, and refuses
the thinking modes at start."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from qwenvl_ft.config import ConfigError, load_recipe
from qwenvl_ft.models import FAMILIES
from qwenvl_ft.train import train

REPO = Path(__file__).resolve().parents[2]
THINKING = [n for n, f in FAMILIES.items() if f.thinking]


def reasoning_data(folder: Path) -> Path:
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "red.png")
    lines = []
    for i in range(6):
        lines.append(
            {
                "id": f"r{i}",
                "messages": [
                    {"role": "user", "content": "<image>What colour is it?"},
                    {"role": "assistant", "content": f"<think>\nEvery pixel is red ({i}).\n</think>\n\nRed."},
                    {"role": "user", "content": "Sure?"},
                    {"role": "assistant", "reasoning_content": "Nothing else is there.", "content": "Yes."},
                ],
                "images": ["red.png"],
            }
        )
    path = folder / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def recipe(family: str, model: Path, data: Path, out: Path, *extra: str):
    return load_recipe(
        REPO / f"recipes/tiny/{family}_lora.yaml",
        [
            f"model.path={model}",
            f"output.dir={out}",
            f"data.train=[{{path: {data}}}]",
            "data.num_workers=0",
            "model.dtype=fp32",
            "train.max_steps=2",
            "train.save_steps=1000",
            *extra,
        ],
    )


@pytest.mark.parametrize("name", THINKING)
@pytest.mark.parametrize("mode", ["template", "keep", "drop"])
def test_thinking_family_trains_on_reasoning(tiny_model, tmp_path, name, mode):
    cfg = recipe(name, tiny_model(name), reasoning_data(tmp_path), tmp_path / "run", f"data.thinking={mode}")
    losses = [h["loss"] for h in train(cfg).log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    # The run records the mode inference defaults to: each last answer shows its reasoning, unless
    # the mode drops every block's (README 'Thinking at inference').
    meta = json.loads((tmp_path / "run" / "qwenvl_ft.json").read_text())
    shown = 0 if mode == "drop" else 6
    assert (meta["thinking"], meta["thinking_why"]) == (
        mode != "drop",
        f"{shown} of 6 trained samples showed reasoning",
    )


def test_a_family_without_thinking_trains_reasoning_inline_or_drops_it(tiny_model, tmp_path):
    data = reasoning_data(tmp_path)
    inline = train(recipe("qwen2_5_vl", tiny_model("qwen2_5_vl"), data, tmp_path / "run"))
    assert all(math.isfinite(h["loss"]) for h in inline.log_history if "loss" in h)
    with pytest.raises(
        ConfigError, match=r"data.thinking: keep, but Qwen2.5-VL \(qwen2_5_vl\) has no thinking"
    ):
        train(recipe("qwen2_5_vl", tiny_model("qwen2_5_vl"), data, tmp_path / "run2", "data.thinking=keep"))
    dropped = train(
        recipe("qwen2_5_vl", tiny_model("qwen2_5_vl"), data, tmp_path / "run3", "data.thinking=drop")
    )
    assert all(math.isfinite(h["loss"]) for h in dropped.log_history if "loss" in h)
