"""End to end, GRPO learns: a briefly SFT-trained tiny model sharpens its boxes with the IoU reward.

The start is the demo's run (tests/e2e/demo_run.py): a tiny Qwen3-VL trained for 80 LoRA steps on
the synthetic grounding task answers in its box format but is right on about half the held-out
images (acc@0.5 0.47 on the 64 below). Merged, it is the base of recipes/tiny/qwen3_vl_grpo.yaml
as it is: 100 steps of 8 prompts x 8 sampled answers, rewarded by grounding_iou alone. Measured:
held-out acc@0.5 0.47 -> 1.00 (mIoU 0.47 -> 0.99); the sampled answers' mean reward 0.17 -> 0.40.
Held-out images are combinations of colour, shape and cell that training never draws. Everything
runs through the CLI: the data check, sampling, rewards, the loss, saving, then `eval`, `merge`
and `predict` on the GRPO run as on any other.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from demo_run import build_grounding_run

from qwenvl_ft.cli import main

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "tiny" / "qwen3_vl_grpo.yaml"


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """(merged SFT model, its training data, 64 held-out samples)."""
    root = tmp_path_factory.mktemp("grpo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, run, _ = build_grounding_run(root, steps=80)
        assert main(["merge", str(run), "--output", str(root / "sft"), "--force"]) == 0
        heldout = root / "data" / "heldout64"
        assert main(["data", "synth", str(heldout), "--count", "64", "--seed", "2", "--held-out"]) == 0
        yield root / "sft", root / "data" / "train" / "data.jsonl", heldout / "data.jsonl"
    finally:
        torch.set_num_threads(threads)


def accuracy(model: Path, data: Path) -> dict:
    report = model.parent / f"{model.name}-eval.json"
    args = ["eval", str(model), "--data", str(data), "--dtype", "fp32", "--max-new-tokens", "32"]
    assert main([*args, "--batch-size", "16", "--output", str(report)]) == 0
    return json.loads(report.read_text())["grounding"]


def grpo(model: Path, data: Path, out: Path, *overrides: str) -> list[dict]:
    args = ["train", str(RECIPE), f"model.path={model}", f"output.dir={out}", "output.overwrite=true"]
    args += [f"data.train=[{{path: {data}}}]", "data.num_workers=0", *overrides]
    assert main(args) == 0
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def test_grpo_with_iou_reward_raises_heldout_accuracy(start, tmp_path):
    model, train, heldout = start
    before = accuracy(model, heldout)
    run = tmp_path / "grpo"
    history = grpo(model, train, run)
    after = accuracy(run, heldout)
    print(f"held-out acc@0.5 {before['acc@0.5']:.3f} -> {after['acc@0.5']:.3f}")
    assert after["acc@0.5"] >= before["acc@0.5"] + 0.25, (before, after)
    assert after["miou"] > before["miou"] + 0.2
    rewards = [h["reward/grounding_iou"] for h in history if "reward/grounding_iou" in h]
    assert rewards[-1] > rewards[0] + 0.1, rewards
    for key in ("reward_group_std", "completion_length", "clip_ratio", "frac_reward_zero_std"):
        assert key in history[0]

    # An ordinary run: self-describing, and merge / predict take it as they take an SFT run.
    meta = json.loads((run / "qwenvl_ft.json").read_text())
    assert meta["method"] == "grpo" and meta["base_model"] == str(model.resolve())
    assert (run / "loss.png").is_file() and (run / "rewards.png").is_file()
    assert main(["merge", str(run), "--output", str(tmp_path / "merged")]) == 0
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(run), str(heldout), "--output", str(preds), "--limit", "4"]) == 0
    assert len(preds.read_text().splitlines()) == 4


def test_grpo_kl_to_the_adapter_free_model_and_reused_rollouts(start, tmp_path):
    """beta > 0: KL to the base (LoRA switched off) is 0 at the first step, then grows; num_iterations 2
    trains twice on each rollout (the second pass's ratio leaves 1, so clipping can act)."""
    model, train, _ = start
    history = grpo(
        model, train, tmp_path / "kl", "train.max_steps=6", "train.logging_steps=1", "grpo.beta=0.04",
        "grpo.num_iterations=2", "grpo.num_generations=4", "train.per_device_batch_size=4",
        "train.learning_rate=2e-2",
    )  # fmt: skip
    kl = [h["kl"] for h in history if "kl" in h]
    assert len(kl) == 6 and kl[0] == pytest.approx(0.0, abs=1e-6) and max(kl) > 1e-4, kl
    # Steps 1, 3, 5 sample (and log rewards); steps 2, 4, 6 train again on the same answers.
    sampled = [h["step"] for h in history if "reward" in h]
    assert sampled == [1, 3, 5], history
    clip = [h["clip_ratio"] for h in history if "clip_ratio" in h]
    assert len(clip) == 6 and clip[0] == 0.0, clip  # on-policy at a rollout: the ratio is exactly 1


def test_grpo_under_zero3_with_two_processes(start, launch_train, tmp_path):
    """Two ranks sample groups of different lengths: generate() steps in sync (synced_gpus) while
    ZeRO-3 gathers the partitioned weights, the KL reference is the adapter switched off, and the run
    saves a whole adapter that predicts."""
    model, train, heldout = start
    out = tmp_path / "z3"
    launch_train(
        2, str(RECIPE), f"model.path={model}", f"output.dir={out}", "output.overwrite=true",
        f"data.train=[{{path: {train}}}]", "data.num_workers=0", "train.max_steps=3", "train.logging_steps=1",
        "train.per_device_batch_size=4", "train.deepspeed=configs/deepspeed/zero3.json", "grpo.beta=0.04",
    )  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "reward" in h] == [1, 2, 3]
    assert json.loads((out / "qwenvl_ft.json").read_text())["method"] == "grpo"
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(out), str(heldout), "--output", str(preds), "--limit", "2"]) == 0
