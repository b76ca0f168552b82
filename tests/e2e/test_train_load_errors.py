"""An image that vanishes after the data check, during a real (tiny) training run: with
data.on_load_error skip the run finishes and counts it; with stop `qwenvl-ft train` ends with the
sample's location in one line, no traceback, though the error comes from a loader worker."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import qwenvl_ft.training.sft
from qwenvl_ft.cli import main
from qwenvl_ft.config import load_recipe
from qwenvl_ft.train import train

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes/tiny/qwen2_vl_lora.yaml"


def test_an_image_deleted_after_the_check(tiny_model, tmp_path, monkeypatch, caplog, capsys):
    shutil.copytree(REPO / "data/demo", tmp_path / "demo")
    data, image = tmp_path / "demo/demo.jsonl", tmp_path / "demo/images/003.png"
    kept = image.read_bytes()
    build_dataset = qwenvl_ft.training.sft.build_dataset

    def check_then_delete(*args, **kwargs):
        checked = build_dataset(*args, **kwargs)  # the check passes...
        image.unlink()  # ...and then the image goes away
        return checked

    monkeypatch.setattr(qwenvl_ft.training.sft, "build_dataset", check_then_delete)
    overrides = [
        f"model.path={tiny_model('qwen2_vl')}",
        f"data.train=[{{path: {data}}}]",
        "data.num_workers=1",  # the error comes from a loader worker, as in real runs
        "train.max_steps=4",  # 4 steps of 2: every sample once
        "train.save_steps=1000",
    ]
    with caplog.at_level(logging.WARNING, logger="qwenvl_ft"):
        train(load_recipe(RECIPE, [*overrides, f"output.dir={tmp_path / 'skip'}", "data.on_load_error=skip"]))
    assert "1 sample(s) failed to load and were skipped (data.on_load_error: skip)" in caplog.text

    image.write_bytes(kept)
    code = main(["train", str(RECIPE), *overrides, f"output.dir={tmp_path / 'stop'}"])  # stop: the default
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-3000:]
    # One line (after the progress bar's carriage returns): where, what, and what to do.
    assert err.split("qwenvl-ft train: error: ")[-1] == (
        f"{data}:4 (id demo-003): {image}: image file not found (it passed the data check, so the "
        "data changed since; data.on_load_error: skip trains on without such samples)\n"
    )
