"""DPO under DeepSpeed ZeRO-3 with two processes on CPU (gloo), through torchrun and the real CLI.

Full fine-tuning: the frozen reference copy is partitioned like the policy (TRL's
prepare_deepspeed); LoRA: the reference is the partitioned policy with its adapter off. What these
runs prove is that both start, step with finite losses and logged rewards (0 at step 1, where the
policy is the reference), and save outputs that load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qwenvl_ft.data.synthetic_pairs import write_pair_set
from qwenvl_ft.models import get_family
from qwenvl_ft.tiny import make_tiny

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_and_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo-dist")
    make_tiny(get_family("qwen3_vl"), root / "model", real_vocab=False, min_pixels=9216, max_pixels=9216)
    return root / "model", write_pair_set(root / "pairs", 32, seed=3)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_dpo_under_zero3(launch_train, model_and_pairs, tmp_path, mode):
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install 'qwenvl-ft[deepspeed]'")
    model, pairs = model_and_pairs
    out = tmp_path / "out"
    launch_train(
        2,
        str(REPO / "recipes/tiny/qwen3_vl_dpo.yaml"),
        f"model.path={model}",
        f"output.dir={out}",
        f"data.train=[{{path: {pairs}}}]",
        f"data.eval=[{{path: {pairs}}}]",
        "data.num_workers=0",
        f"train.mode={mode}",
        "train.max_steps=3",
        "train.logging_steps=1",
        "train.eval_steps=3",
        "train.deepspeed=configs/deepspeed/zero3.json",
    )
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    lines = [h for h in history if "loss" in h]
    assert len(lines) == 3 and all(torch.isfinite(torch.tensor([h["loss"] for h in lines])))
    assert lines[0]["rewards/margins"] == 0.0 and lines[0]["rewards/chosen"] == 0.0
    assert any(h["rewards/margins"] != 0.0 for h in lines[1:])  # the policy left the reference
    assert any("eval_rewards/accuracies" in h for h in history)
    meta = json.loads((out / "qwenvl_ft.json").read_text())
    assert meta["method"] == "dpo" and meta["mode"] == mode
    weights = out / ("model.safetensors" if mode == "full" else "adapter_model.safetensors")
    from safetensors.torch import load_file

    assert all(t.numel() > 0 for t in load_file(str(weights)).values())  # gathered, not empty shards
