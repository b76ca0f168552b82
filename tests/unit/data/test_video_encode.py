"""Video samples through the data pipeline: frames, grid, tokens and timestamps per generation,
worked out by hand from qwen-vl-utils' rules; the data check's messages; the batch tensors."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("av")

from family_facts import by_architecture, need, registered  # noqa: E402

from qwenvl_ft.config.schema import DataConfig, DatasetSpec, VideoConfig  # noqa: E402
from qwenvl_ft.data.check import check_sources, format_report  # noqa: E402
from qwenvl_ft.data.clips import load_clip, plan_clip  # noqa: E402
from qwenvl_ft.data.collate import PaddingCollator  # noqa: E402
from qwenvl_ft.data.conversation import Conversation, Segment, Turn  # noqa: E402
from qwenvl_ft.data.dataset import build_dataset  # noqa: E402
from qwenvl_ft.data.encode import IGNORE, encode  # noqa: E402
from qwenvl_ft.data.sources import Source  # noqa: E402
from qwenvl_ft.data.synthetic import moving_square_video, shapes_image  # noqa: E402
from qwenvl_ft.models import get_family  # noqa: E402


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """3 s at 10 fps, 64x48: the default 2 fps sampling takes 6 of its 30 frames."""
    return moving_square_video(str(tmp_path_factory.mktemp("v") / "square.mp4"), frames=30, fps=10)


def processor(tiny_model, name, video=None):
    family = get_family(name)
    proc = family.load_processor(str(tiny_model(name)))
    proc.video_config = video
    return proc


def video_conv(path):
    return Conversation(
        "sample-1",
        [
            Turn("user", [Segment("video", path), Segment("text", "What moves?")]),
            Turn("assistant", [Segment("text", "A red square.")]),
        ],
    )


# linspace(0, 29, 6).round() = 0, 5.8, 11.6, 17.4, 23.2, 29 -> 0, 6, 12, 17, 23, 29.
FRAMES = [0, 6, 12, 17, 23, 29]


@pytest.mark.parametrize("name", by_architecture(registered(lambda f: f.video is not None)))
def test_frames_grid_and_tokens_by_hand(tiny_model, clip_file, name):
    """Frames, grid, tokens and time of the clip, against tests/family_facts.py (VideoClip)."""
    want = need(name, "video_clip").video_clip
    proc = processor(tiny_model, name)
    clip = plan_clip(clip_file, proc)
    assert clip.indices == FRAMES and clip.size == want.size and clip.grid == want.grid
    loaded = load_clip(clip, proc)
    t, h, w = want.grid
    # One row per patch; each row holds 3 channels x 2 frames x patch x patch values.
    patch = proc.family.vision.patch_size
    assert tuple(loaded.pixel_values.shape) == (t * h * w, 3 * 2 * patch * patch)

    enc = encode(video_conv(clip_file), proc, [], videos=[loaded])
    tok = proc.tokenizer
    pad = proc.family.chat.video_pad
    video_pad = tok.convert_tokens_to_ids(pad)
    assert enc.input_ids.count(video_pad) == want.text.count(pad)
    assert [i for i, m in enumerate(enc.mm_token_type_ids) if m == 2] == [
        i for i, x in enumerate(enc.input_ids) if x == video_pad
    ]
    assert enc.video_grid_thw.tolist() == [list(want.grid)]
    assert all(label == IGNORE for label, x in zip(enc.labels, enc.input_ids, strict=True) if x == video_pad)
    if want.second_per_grid_ts is None:
        assert enc.second_per_grid_ts is None
    else:
        assert enc.second_per_grid_ts.tolist() == list(want.second_per_grid_ts)
    assert want.text in tok.decode(enc.input_ids)


def test_recipe_overrides_frames_and_pixels(tiny_model, clip_file):
    """num_frames 4 and a 56x56..112x112 frame budget: indices linspace(0, 29, 4) = 0, 9.67, 19.33, 29."""
    proc = processor(
        tiny_model, "qwen2_5_vl", VideoConfig(num_frames=4, min_pixels=56 * 56, max_pixels=112 * 112)
    )
    clip = plan_clip(clip_file, proc)
    # 48x64 rounds to 56x56 (multiples of 28), inside the budget: grid 4x4 patches, 2 temporal patches.
    assert clip.indices == [0, 10, 19, 29] and clip.size == (56, 56) and clip.grid == (2, 4, 4)
    # 4 frames of 30 at 10 fps: 1.333 frames a second, so a 2-frame temporal patch spans 1.5 s.
    assert clip.seconds_per_grid == pytest.approx(1.5)
    # fps 4 with max_frames 8: 3 s x 4 = 12 frames, capped at 8.
    proc.video_config = VideoConfig(fps=4.0, max_frames=8, min_pixels=56 * 56, max_pixels=112 * 112)
    assert len(plan_clip(clip_file, proc).indices) == 8


def test_video_tokens_refused_for_first_generation(tiny_model, clip_file, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "<video>Hi"},
                    {"role": "assistant", "content": "Ok"},
                ],
                "videos": [clip_file],
            }
        )
        + "\n"
    )
    proc = get_family("qwen_vl").load_processor(str(tiny_model("qwen_vl")))
    report = check_sources([Source(DatasetSpec(str(data)))], proc, 4096, progress=False)
    assert [p.message for p in report.errors] == ["Qwen-VL (first generation) takes no video input"]


def test_check_reports_broken_videos_with_their_location(tiny_model, clip_file, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x01 not a video" * 100)
    (tmp_path / "empty").mkdir()
    rows = [
        {
            "id": "ok",
            "messages": [{"role": "user", "content": "<video>Hi"}, {"role": "assistant", "content": "Ok"}],
            "videos": [clip_file],
        },
        {
            "id": "bad",
            "messages": [{"role": "user", "content": "<video>Hi"}, {"role": "assistant", "content": "Ok"}],
            "videos": ["broken.mp4"],
        },
        {
            "id": "none",
            "messages": [{"role": "user", "content": "<video>Hi"}, {"role": "assistant", "content": "Ok"}],
            "videos": ["missing.mp4"],
        },
        {
            "id": "zero",
            "messages": [{"role": "user", "content": "<video>Hi"}, {"role": "assistant", "content": "Ok"}],
            "videos": ["empty"],
        },
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = processor(tiny_model, "qwen2_vl")
    report = check_sources([Source(DatasetSpec(str(data)))], proc, 4096, progress=False)
    where = {p.where: p.message for p in report.errors}
    assert set(where) == {f"{data}:2 (id bad)", f"{data}:3 (id none)", f"{data}:4 (id zero)"}
    assert str(tmp_path / "broken.mp4") in where[f"{data}:2 (id bad)"]
    assert str(tmp_path / "missing.mp4") in where[f"{data}:3 (id none)"]
    assert str(tmp_path / "empty") in where[f"{data}:4 (id zero)"]
    # The good sample is planned with its exact length: 420 video tokens plus the text.
    assert len(report.plan) == 1 and report.plan[0].videos == 1 and report.plan[0].video_frames == 6
    # Over budget: dropped, and the message says what the video costs.
    report = check_sources([Source(DatasetSpec(str(data)))], proc, 200, progress=False)
    assert [p.where for p in report.dropped] == [f"{data}:1 (id ok)"]
    assert "6 frames of 30 at 392x280 (3x20x28 patches)" in report.dropped[0].message
    assert "errors: 3" in format_report(report, 200)


def test_mixed_batch_tensors(tiny_model, clip_file, tmp_path):
    """Image, video and text-only samples in one batch: each tensor holds exactly its samples' media."""
    shapes_image(seed=3, size=(56, 56)).save(tmp_path / "a.png")
    rows = [
        {
            "messages": [
                {"role": "user", "content": "<image>What?"},
                {"role": "assistant", "content": "Shapes."},
            ],
            "images": ["a.png"],
        },
        {
            "messages": [
                {"role": "user", "content": "<video>What?"},
                {"role": "assistant", "content": "A square."},
            ],
            "videos": [clip_file],
        },
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = processor(tiny_model, "qwen2_5_vl")
    cfg = DataConfig(
        train=[DatasetSpec(str(tmp_path / "d.jsonl"))],
        video=VideoConfig(num_frames=4, min_pixels=56 * 56, max_pixels=56 * 56),
    )
    proc.video_config = cfg.video
    dataset, report = build_dataset(cfg, proc, seed=0, cache_dir=None, progress=False)
    batch = PaddingCollator(proc.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert batch["pixel_values_videos"].shape == (32, 3 * 2 * 14 * 14)
    assert batch["second_per_grid_ts"].tolist() == pytest.approx([1.5])
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert (
        int((batch["mm_token_type_ids"] == 2).sum()) == 8
        and int((batch["mm_token_type_ids"] == 1).sum()) == 4
    )
    assert torch.isfinite(batch["pixel_values_videos"]).all()


def test_llava_and_openai_videos_and_frame_folders(tiny_model, clip_file, tmp_path):
    """A folder of 10 frames at the default folder_fps 2 is 5 s: 2 fps takes all 10. LLaVA's `video`
    and OpenAI-style typed parts both reach the check."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(1, 11):
        shapes_image(seed=i, size=(56, 56)).save(frames / f"f{i}.png")
    rows = [
        {
            "id": "llava",
            "video": "frames",
            "conversations": [
                {"from": "human", "value": "<video>\nWhat?"},
                {"from": "gpt", "value": "Shapes."},
            ],
        },
        {
            "id": "openai",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "video", "video": clip_file}, {"type": "text", "text": "What?"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
            ],
        },
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = processor(tiny_model, "qwen2_vl", VideoConfig(min_pixels=3136, max_pixels=3136))
    report = check_sources([Source(DatasetSpec(str(data)))], proc, 4096, progress=False)
    assert report.ok, report.errors
    assert [(p.videos, p.video_frames) for p in report.plan] == [(1, 10), (1, 6)]
    clip = plan_clip(str(frames), proc)
    assert clip.indices == list(range(10)) and clip.grid == (5, 4, 4)
    # 56x56 frames at 3136 px: 4x4 patches; 10 frames make 5 temporal patches (natural order: test_video.py).
    loaded = load_clip(clip, proc)
    assert loaded.pixel_values.shape == (5 * 16, 3 * 2 * 14 * 14)
