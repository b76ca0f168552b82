"""Training on videos mixed with images and text, through the real CLI: one process (padded and
packed), two processes under DeepSpeed, and the vision-tower call order that keeps ZeRO-3 ranks
in step when their batches hold different media."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("av", reason="video decoding needs PyAV (av)")

from family_facts import registered, sampled

from qwenvl_ft.cli import main  # noqa: E402
from qwenvl_ft.data.synthetic import moving_square_video, shapes_image  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# Small frames for every generation: 64x48 rounds to 56x56 (28-pixel patches) or 64x64 (32).
VIDEO = ["data.video.num_frames=4", "data.video.min_pixels=3136", "data.video.max_pixels=4096"]


def mixed_data(root: Path) -> Path:
    """Videos alone, videos with an image, images alone and text alone."""
    root.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(("red", "blue")):
        moving_square_video(str(root / f"v{i}.mp4"), frames=12 + 6 * i, fps=6, colour=colour)
        shapes_image(seed=i, size=(56, 56)).save(root / f"i{i}.png")
    rows = [
        {
            "messages": [
                {"role": "user", "content": "<video>What moves?"},
                {"role": "assistant", "content": "A red square."},
            ],
            "videos": ["v0.mp4"],
        },
        {
            "messages": [
                {"role": "user", "content": "<video>What moves?"},
                {"role": "assistant", "content": "A blue square."},
            ],
            "videos": ["v1.mp4"],
        },
        {
            "messages": [
                {"role": "user", "content": "<image>Same shapes as <video>?"},
                {"role": "assistant", "content": "No."},
            ],
            "images": ["i0.png"],
            "videos": ["v1.mp4"],
        },
        {
            "messages": [
                {"role": "user", "content": "<image>Describe."},
                {"role": "assistant", "content": "Two shapes."},
            ],
            "images": ["i1.png"],
        },
        {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."}]},
        {
            "messages": [
                {"role": "user", "content": "Count to three."},
                {"role": "assistant", "content": "1 2 3"},
            ]
        },
    ]
    path = root / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.mark.parametrize("family", sampled(registered(lambda f: f.video is not None), "video"))
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_trains_on_mixed_video_image_text_batches(tiny_model, tmp_path, family, packing):
    data = mixed_data(tmp_path / "data")
    out = tmp_path / "out"
    args = [
        "train",
        str(REPO / f"recipes/tiny/{family}_lora.yaml"),
        f"model.path={tiny_model(family)}",
        f"output.dir={out}",
        f"data.train=[{{path: {data}}}]",
        "data.num_workers=0",
        "train.max_steps=4",
        "train.per_device_batch_size=3",
        "train.save_steps=1000",
        *VIDEO,
    ]
    if packing:
        args += ["data.packing=true", "data.pack_length=512"]
    assert main(args) == 0
    got = losses(out)
    assert len(got) == 4 and all(torch.isfinite(torch.tensor(got)))


@pytest.mark.parametrize(
    "stage, family, extra",
    [
        ("zero2", "qwen2_5_vl", ()),
        # Ranks get different batches (video+image on one, image or text on the other): ZeRO-3
        # hangs unless both call the vision tower as often and in the same place.
        ("zero3", "qwen2_5_vl", ()),
        ("fsdp", "qwen2_5_vl", ()),
        # Linear attention under ZeRO-3 reads conv1d's weight outside conv1d's forward, and packed
        # rows take the boundary-aware path: both must work on the gathered weights.
        ("zero3", "qwen3_5", ("data.packing=true", "data.pack_length=1024")),
        ("fsdp", "qwen3_5", ()),
    ],
    ids=["zero2", "zero3", "fsdp", "zero3-packed-qwen3_5", "fsdp-qwen3_5"],
)
def test_mixed_video_batches_under_deepspeed_and_fsdp(
    launch_train, tiny_model, tmp_path, stage, family, extra
):
    if stage != "fsdp":
        pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install 'qwenvl-ft[deepspeed]'")
    data = mixed_data(tmp_path / "data")
    out = tmp_path / "out"
    launch_train(
        2,
        str(REPO / f"recipes/tiny/{family}_lora.yaml"),
        f"model.path={tiny_model(family)}",
        f"output.dir={out}",
        f"data.train=[{{path: {data}}}]",
        "data.num_workers=0",
        "train.max_steps=3",
        "train.per_device_batch_size=2",
        "train.save_steps=1000",
        "train.fsdp=true" if stage == "fsdp" else f"train.deepspeed=configs/deepspeed/{stage}.json",
        *VIDEO,
        *extra,
    )
    got = losses(out)
    assert len(got) == 3 and all(torch.isfinite(torch.tensor(got)))
