"""qwenvl_ft.data.video: probing and decoding real files written here with PyAV, qwen-vl-utils'
sampling and sizing rules worked out by hand, and the patch layout against explicit loops and
transformers' PIL image processor."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from qwenvl_ft.data import video
from qwenvl_ft.data.video import (
    VIDEO_EXTENSIONS,
    FrameRules,
    VideoError,
    VideoInfo,
    patch_timestamps,
    probe,
    read_frames,
    resized_frame_size,
    sample_indices,
    video_patches,
)

W, H, N, FPS, SIDE, TOP = 64, 48, 20, 10, 10, 16


def left(i: int) -> int:
    """Left edge of the square in frame i (it moves 2 px a frame, wrapping before the right border)."""
    return 2 + (2 * i) % 44


def draw(i: int) -> np.ndarray:
    frame = np.full((H, W, 3), 70, np.uint8)
    frame[TOP : TOP + SIDE, left(i) : left(i) + SIDE] = (230, 30, 30)
    return frame


def pyav():
    """PyAV, which only the tests that read or write files need."""
    return pytest.importorskip("av")


def write(path, codec: str, n: int = N, pix_fmt: str = "yuv420p", muxer: dict | None = None, **options: str):
    av = pyav()
    with av.open(str(path), "w", options=muxer or {}) as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        stream.options = options
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(draw(i), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


ENCODERS = {  # suffix -> (codec, pixel format, options): what the PyAV wheel encodes
    ".mp4": ("libx264", "yuv420p", {"crf": "12"}),
    ".webm": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "crf": "10", "b": "0"}),
    ".avi": ("mpeg4", "yuv420p", {"qscale": "2"}),
    ".mkv": ("libx264", "yuv420p", {"crf": "12", "g": "5"}),
    ".gif": ("gif", "rgb8", {}),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for suffix, (codec, pix_fmt, options) in ENCODERS.items():
        out[suffix] = write(root / f"clip{suffix}", codec, pix_fmt=pix_fmt, **options)
    frames = root / "frames"
    frames.mkdir()
    for i in range(12):  # f1.png .. f12.png: lexical order would put f10 before f2
        Image.fromarray(draw(i)).save(frames / f"f{i + 1}.png")
    (frames / "notes.txt").write_text("not a frame")
    out["folder"] = frames
    return out


def square_centre(frame: np.ndarray) -> tuple[float, float]:
    r, g, b = (frame[..., c].astype(int) for c in range(3))
    ys, xs = np.nonzero((r > 150) & (g < 110) & (b < 110))
    assert len(xs) > 40, "square not found"
    return ys.mean(), xs.mean()


# -- probe and read_frames -------------------------------------------------------------------------
def test_extensions():
    assert {".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif"} <= VIDEO_EXTENSIONS


@pytest.mark.parametrize("suffix", list(ENCODERS))
def test_probe_file(files, suffix):
    info = probe(files[suffix])
    assert info == VideoInfo(str(files[suffix]), frames=20, fps=10.0, width=64, height=48)
    assert info.duration == 2.0


def test_probe_folder(files):
    info = probe(files["folder"], folder_fps=5.0)
    assert (info.frames, info.fps, info.width, info.height) == (12, 5.0, 64, 48)


@pytest.mark.parametrize("suffix", list(ENCODERS))
def test_read_frames_finds_the_square_where_it_was_drawn(files, suffix):
    indices = [0, 3, 3, 10, 19]
    frames = read_frames(files[suffix], indices)
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    for frame, i in zip(frames, indices, strict=True):
        y, x = square_centre(frame)
        assert abs(y - (TOP + 4.5)) < 1.0 and abs(x - (left(i) + 4.5)) < 1.0, (i, y, x)


def test_read_frames_seeks_over_groups_without_wanted_frames(tmp_path, monkeypatch):
    # One keyframe every 4 frames: frames 24 and 56 are reached by seeking, not by decoding up to them.
    path = write(tmp_path / "short_gop.mp4", "libx264", n=60, crf="12", g="4", bf="2")
    starts = []  # each decode pass starts here: once at the top, once per seek
    decoded = video._decoded
    monkeypatch.setattr(video, "_decoded", lambda *a: starts.append(1) or decoded(*a))
    sparse = read_frames(path, [0, 24, 56], timeout=None)
    assert len(starts) == 3
    dense = read_frames(path, list(range(60)), timeout=None)
    assert len(starts) == 4
    for frame, i in zip(sparse, [0, 24, 56], strict=True):
        assert np.array_equal(frame, dense[i])
        assert abs(square_centre(frame)[1] - (left(i) + 4.5)) < 1.0


def test_read_frames_folder_natural_order(files):
    frames = read_frames(files["folder"], [0, 1, 9, 10, 11])
    for frame, i in zip(frames, [0, 1, 9, 10, 11], strict=True):
        assert np.array_equal(frame, draw(i))  # PNG is lossless


def test_read_frames_index_past_the_end(files):
    with pytest.raises(VideoError, match=r"clip\.mp4.*frame 20"):
        read_frames(files[".mp4"], [0, 20])
    with pytest.raises(VideoError, match=r"frames.*frame 12"):
        read_frames(files["folder"], [12])
    with pytest.raises(ValueError, match="ascending"):
        read_frames(files[".mp4"], [3, 1])


@pytest.mark.parametrize("how", ["random bytes", "truncated", "missing", "empty folder", "no video stream"])
def test_unusable_videos_raise_video_error_naming_the_path(files, tmp_path, how):
    path = tmp_path / "bad.mp4"
    if how == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif how == "truncated":  # the index (moov) is written last, so half a file has none
        data = files[".mp4"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty folder":
        path = tmp_path / "frames"
        path.mkdir()
    elif how == "no video stream":
        path, av = tmp_path / "sound.wav", pyav()
        with av.open(str(path), "w") as out:
            stream = out.add_stream("pcm_s16le", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            frame.sample_rate = 8000
            for packet in [*stream.encode(frame), *stream.encode()]:
                out.mux(packet)
    with pytest.raises(VideoError, match=str(path)):
        probe(path)
    with pytest.raises(VideoError, match=str(path)):
        read_frames(path, [0])


def test_truncated_after_the_index_is_counted_and_reported(files, tmp_path):
    # moov first (faststart), then cut inside the 11th packet: the header still claims 20 frames.
    fast = write(tmp_path / "fast.mp4", "libx264", muxer={"movflags": "faststart"}, crf="12")
    with pyav().open(str(fast)) as c:
        assert c.streams.video[0].frames == 20
        cut = [p for p in c.demux(video=0) if p.size][10]
        end = cut.pos + cut.size // 2
    path = tmp_path / "cut.mp4"
    path.write_bytes(fast.read_bytes()[:end])
    info = probe(path)
    assert 10 <= info.frames < 20  # packets are counted, the header is not trusted
    assert read_frames(path, [0]).shape == (1, 48, 64, 3)
    with pytest.raises(VideoError, match=r"cut\.mp4: frame \d+ could not be decoded"):
        read_frames(path, list(range(info.frames)))


def test_timeout_reports_instead_of_hanging(files, monkeypatch):
    def hang(*args):
        time.sleep(3)

    monkeypatch.setattr(video, "_read_file", hang)
    monkeypatch.setattr(video, "_probe_file", hang)
    for call in (
        lambda: read_frames(files[".mp4"], [0], timeout=0.3),
        lambda: probe(files[".mp4"], timeout=0.3),
    ):
        start = time.perf_counter()
        with pytest.raises(VideoError, match=r"clip\.mp4.*longer than 0.3 s"):
            call()
        assert time.perf_counter() - start < 1.5


def test_timeout_works_in_a_dataloader_worker(files, monkeypatch):
    import torch.utils.data as tud

    monkeypatch.setattr(video, "_read_file", lambda *a: time.sleep(3))  # forked workers inherit it
    loader = tud.DataLoader(
        [files[".mp4"]],
        batch_size=None,
        num_workers=1,
        multiprocessing_context="fork",
        collate_fn=lambda path: read_frames(path, [0], timeout=0.3),
    )
    start = time.perf_counter()
    with pytest.raises(VideoError, match="longer than 0.3 s"):
        next(iter(loader))
    assert time.perf_counter() - start < 2.5


# -- sampling (numbers worked out by hand from qwen-vl-utils' rules) -------------------------------
def info(frames: int, fps: float = 30.0) -> VideoInfo:
    return VideoInfo("v.mp4", frames, fps, 1280, 720)


def test_sample_fps_ten_seconds_at_30fps():
    # 300 / 30 * 2 = 20 frames; linspace(0, 299, 20) steps 15.7368...
    assert sample_indices(info(300), FrameRules()) == [
        0, 16, 31, 47, 63, 79, 94, 110, 126, 142, 157, 173, 189, 205, 220, 236, 252, 268, 283, 299,
    ]  # fmt: skip
    # fps=1 -> 10 frames, steps 33.222...
    assert sample_indices(info(300), FrameRules(), fps=1) == [0, 33, 66, 100, 133, 166, 199, 233, 266, 299]


def test_sample_max_frames():
    # 1000 s: 2000 frames at 2 fps, capped at 768.
    idx = sample_indices(info(30000), FrameRules())
    assert len(idx) == 768 and idx[0] == 0 and idx[-1] == 29999
    # max_frames 9 floors to 8 (the frame factor): linspace(0, 299, 8) steps 42.714...
    assert sample_indices(info(300), FrameRules(max_frames=9)) == [0, 43, 85, 128, 171, 214, 256, 299]


def test_sample_num_frames_rounds_to_the_factor():
    # round(5 / 2) = round(2.5) = 2 (Python rounds half to even) -> 4 frames, steps 99.667
    assert sample_indices(info(300), FrameRules(), num_frames=5) == [0, 100, 199, 299]
    assert len(sample_indices(info(300), FrameRules(), num_frames=7)) == 8  # round(3.5) = 4
    with pytest.raises(VideoError, match="v.mp4"):
        sample_indices(info(30), FrameRules(), num_frames=40)
    with pytest.raises(ValueError, match="not both"):
        sample_indices(info(300), FrameRules(), num_frames=4, fps=1)


def test_sample_min_frames_and_short_videos():
    # 1 s at 30 fps: 2 frames at 2 fps, raised to min_frames 4; steps 9.667
    assert sample_indices(info(30), FrameRules()) == [0, 10, 19, 29]
    # 3 frames: min_frames 4 exceeds floor(3 / 2) * 2 = 2 -> 2 frames
    assert sample_indices(info(3), FrameRules()) == [0, 2]
    with pytest.raises(VideoError, match="v.mp4"):  # shorter than the frame factor: qwen-vl-utils raises too
        sample_indices(info(1), FrameRules())
    # a folder of 12 frames at 2 fps, sampled at 2 fps: every frame
    assert sample_indices(VideoInfo("f", 12, 2.0, 64, 48), FrameRules()) == list(range(12))


def test_patch_timestamps():
    # padded to [0, 16, 31, 47, 63, 63] at 30 fps, pairs averaged
    assert patch_timestamps([0, 16, 31, 47, 63], 30.0, 2) == pytest.approx([8 / 30, 1.3, 2.1])


# -- sizes (hand-worked smart_resize) --------------------------------------------------------------
def test_resized_frame_size_per_frame_cap():
    # 720x1280 rounds to 728x1288 = 937664 > 602112: beta = sqrt(921600 / 602112) = 1.23718,
    # 720 / beta = 581.97 -> 20 * 28 = 560, 1280 / beta = 1034.6 -> 36 * 28 = 1008
    assert resized_frame_size(info(300), 20, FrameRules()) == (560, 1008)


def test_resized_frame_size_total_pixels():
    # share = 90316800 / 600 * 2 = 301056 (384 tokens); beta = sqrt(921600 / 301056) = 1.74964,
    # 720 / beta = 411.5 -> 14 * 28 = 392, 1280 / beta = 731.6 -> 26 * 28 = 728
    rules = FrameRules(total_pixels=90316800)
    assert resized_frame_size(info(3000), 600, rules) == (392, 728)
    # share = 19267584 / 768 * 2 = 50176 is below 1.05 * min_pixels = 105369, which wins;
    # beta = sqrt(921600 / 105369) = 2.95743: 243.5 -> 8 * 28 = 224, 432.8 -> 15 * 28 = 420
    rules = FrameRules(total_pixels=24576 * 28 * 28)
    assert resized_frame_size(info(30000), 768, rules) == (224, 420)


# -- patches ---------------------------------------------------------------------------------------
MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)


def coded_frames(t: int, h: int, w: int) -> np.ndarray:
    """Pixel (t, y, x, c) holds a value computed from its coordinates."""
    t_, y, x, c = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((t_ * 61 + y * 17 + x * 5 + c * 83) % 256).astype(np.uint8)


def expected_patches(frames, patch, merge, tps) -> np.ndarray:
    """The layout spelled out: rows (t, block row, block col, row in block, col in block),
    columns (channel, frame in patch, y, x); frames past the end repeat the last one."""
    t_count, h, w, _ = frames.shape
    grid_t, grid_h, grid_w = -(-t_count // tps), h // patch, w // patch
    rows = []
    for bt in range(grid_t):
        for bh in range(grid_h // merge):
            for bw in range(grid_w // merge):
                for mh in range(merge):
                    for mw in range(merge):
                        row = []
                        for c in range(3):
                            for tt in range(tps):
                                for py in range(patch):
                                    for px in range(patch):
                                        t = min(bt * tps + tt, t_count - 1)
                                        y, x = (bh * merge + mh) * patch + py, (bw * merge + mw) * patch + px
                                        row.append((frames[t, y, x, c] / 255 - MEAN[c]) / STD[c])
                        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("t_count", [4, 3])
def test_video_patches_layout(t_count):
    frames = coded_frames(t_count, 8, 12)
    pixels, grid = video_patches(
        frames, (8, 12), patch_size=2, merge_size=2, temporal_patch_size=2, mean=MEAN, std=STD
    )
    assert grid == (2, 4, 6)  # 3 frames pad to 4
    assert pixels.shape == (2 * 4 * 6, 3 * 2 * 2 * 2) and str(pixels.dtype) == "torch.float32"
    np.testing.assert_allclose(pixels.numpy(), expected_patches(frames, 2, 2, 2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("copies", [1, 2])
def test_video_patches_match_transformers_image_processor(copies):
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
        smart_resize,
    )

    image = np.random.default_rng(1).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    min_pixels, max_pixels = 56 * 56, 28 * 28 * 10
    proc = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    ref = proc(images=[Image.fromarray(image)], return_tensors="np")
    size = smart_resize(90, 130, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    assert size != (90, 130)  # the frame really is resized
    # One image is a video of that frame repeated temporal_patch_size times (or one frame, padded).
    pixels, grid = video_patches(
        np.stack([image] * copies), size, 14, 2, 2, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    )
    assert list(grid) == ref["image_grid_thw"][0].tolist()
    np.testing.assert_array_equal(pixels.numpy(), ref["pixel_values"])
