"""GRPO on prompts with videos, images and text mixed in one run (Qwen2.5-VL, which puts seconds in
its rotary positions, and Qwen3-VL, which writes timestamps as text): the prompt check plans the
clips, prompts of every kind are sampled in one batch and trained on, with finite losses."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("av", reason="video decoding needs PyAV (av)")

from test_train_video import REPO, VIDEO, mixed_data  # noqa: E402

from qwenvl_ft.cli import main  # noqa: E402


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_grpo_on_mixed_video_image_text_prompts(tiny_model, tmp_path, family):
    data = mixed_data(tmp_path / "data")
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([
            "train", str(REPO / "recipes" / "tiny" / "qwen3_vl_grpo.yaml"), f"model.path={tiny_model(family)}",
            f"output.dir={out}", "output.overwrite=true", f"data.train=[{{path: {data}}}]", "data.num_workers=0",
            "data.max_length=512", "model.is_base=true", "train.max_steps=2", "train.logging_steps=1",
            "train.per_device_batch_size=6", "grpo.num_generations=2", "grpo.max_new_tokens=6", "grpo.beta=0.04",
            "grpo.rewards=[{name: exact_match}, {name: format}]", *VIDEO,
        ]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "reward/format" in h]
    assert len(steps) == 2 and all(h["completion_length"] > 0 for h in steps)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in steps)
