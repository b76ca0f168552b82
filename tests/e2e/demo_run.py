"""A trained tiny grounding run for the demo tests: the quickstart's recipe, shortened.

A tiny Qwen3-VL (stand-in vision, small vocabulary) learns the synthetic grounding task for 80
LoRA steps: enough to answer in its box format ("[x1, y1, x2, y2]"), which is what the demo's
tests need (a box to parse and draw). Held-out samples are its eval data, so the page offers
them as examples. About 15 s on one thread.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qwenvl_ft.cli import main

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "qwen3_vl_grounding.yaml"


def build_grounding_run(root: Path, steps: int = 80, seed: int = 0) -> tuple[Path, Path, Path]:
    """(base model, LoRA run, held-out data file) under `root`; `seed`: the training run's."""
    model, data, run = root / "model", root / "data", root / "lora"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    try:
        assert main(["make-tiny", "qwen3_vl", str(model), "--small-vocab", "--standin-vision",
                     "--min-pixels", "9216", "--max-pixels", "9216", "--force"]) == 0  # fmt: skip
        assert main(["data", "synth", str(data / "train"), "--count", "400", "--seed", "1"]) == 0
        assert (
            main(["data", "synth", str(data / "heldout"), "--count", "8", "--seed", "2", "--held-out"]) == 0
        )
        heldout = data / "heldout" / "data.jsonl"
        assert main([
            "train", str(RECIPE), f"model.path={model}", f"output.dir={run}", "output.overwrite=true",
            f"data.train=[{{path: {data / 'train' / 'data.jsonl'}}}]", f"data.eval=[{{path: {heldout}}}]",
            f"train.max_steps={steps}", "data.num_workers=0", f"train.seed={seed}",
        ]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return model, run, heldout
