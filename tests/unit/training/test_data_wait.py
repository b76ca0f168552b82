"""The input-bound share: each log line's `data_wait` and the end-of-run line, on a tiny model with a
loader that sleeps in `__getitem__` (input-bound) and one that does not."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import TrainingArguments

from qwenvl_ft.data.collate import PaddingCollator
from qwenvl_ft.data.conversation import Conversation, Segment, Turn
from qwenvl_ft.data.encode import encode
from qwenvl_ft.models import get_family
from qwenvl_ft.training.data_wait import HINT_ABOVE, summary
from qwenvl_ft.training.trainer import VLTrainer

FAMILY = "qwen2_5_vl"
DELAY = 0.3  # seconds each slow sample sleeps
STEPS = 6


class Samples(Dataset):
    def __init__(self, encoded, delay: float):
        self.encoded, self.delay = encoded, delay

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.encoded


@pytest.fixture(scope="module")
def setup(tiny_model):
    family = get_family(FAMILY)
    path = str(tiny_model(FAMILY))
    processor = family.load_processor(path)
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    conv = Conversation(
        "s",
        [
            Turn("user", [Segment("image", image), Segment("text", "What colour?")]),
            Turn("assistant", [Segment("text", "Red.")]),
        ],
    )
    return family, path, encode(conv, processor, [image], "all_assistant")


def run(setup, tmp_path, delay: float) -> VLTrainer:
    family, path, encoded = setup
    model = family.load_model(path, dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=STEPS,
        per_device_train_batch_size=1,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = VLTrainer(
        model=model,
        args=args,
        train_dataset=Samples(encoded, delay),
        data_collator=PaddingCollator(0),
        family=family,
        vision_lr=None,
        merger_lr=None,
    )
    trainer.train()
    return trainer


def test_a_slow_loader_shows_as_waiting(setup, tmp_path):
    trainer = run(setup, tmp_path, DELAY)
    steps = trainer.data_wait.steps
    assert len(steps) == STEPS
    # Each step waited at least its sample's sleep, and the wait is part of the step.
    assert all(DELAY <= wait <= step for wait, step in steps), steps
    lines = [h for h in trainer.state.log_history if "loss" in h]
    assert len(lines) == STEPS // 2 and all("data_wait" in h for h in lines)
    for h, pair in zip(lines, zip(steps[0::2], steps[1::2], strict=True), strict=True):
        expected = sum(w for w, _ in pair) / sum(s for _, s in pair)  # the two steps since the last line
        assert h["data_wait"] == pytest.approx(expected, abs=1e-3)
    share = trainer.data_wait.run_share()
    assert share == pytest.approx(sum(w for w, _ in steps[1:]) / sum(s for _, s in steps[1:]))
    assert share > HINT_ABOVE


def test_a_fast_loader_shows_as_not_waiting(setup, tmp_path):
    trainer = run(setup, tmp_path, 0.0)
    steps = trainer.data_wait.steps
    assert len(steps) == STEPS
    assert all(wait < 0.05 for wait, _ in steps[1:]), steps  # collating one small sample
    assert trainer.data_wait.run_share() < 0.2
    assert all(h["data_wait"] < 0.5 for h in trainer.state.log_history if "loss" in h)


def test_the_end_of_run_line():
    assert summary(0.031, 2, "draft") == "waiting for data: 3.1% of the training step time"
    assert summary(0.25, 4, "exact") == (
        "waiting for data: 25.0% of the training step time: the run is input-bound; raise "
        "data.num_workers (now 4; up to the CPU cores free per GPU), set data.image_decode: draft "
        "(large JPEGs decode at reduced scale), store images resized to the pixel budget "
        "(model.max_pixels) before training"
    )
    assert "image_decode" not in summary(0.25, 4, "draft")
    # A large share of a tiny step is no hint: 6 ms of 50 ms, the tiny recipes on CPU.
    assert (
        summary(0.12, 0, "draft", 0.006)
        == "waiting for data: 12.0% of the training step time (6 ms per step)"
    )
    assert summary(0.12, 0, "draft", 0.03).startswith(
        "waiting for data: 12.0% of the training step time (30 ms per step): the run is input-bound; raise"
    )
