"""Videos for the Qwen2-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), without torchvision.

    info = probe("clip.mp4")                                  # frames, fps, size; no pixels decoded
    idx = sample_indices(info, rules)                         # which frames, by qwen-vl-utils' rules
    frames = read_frames("clip.mp4", idx)                     # (n, H, W, 3) uint8 RGB
    size = resized_frame_size(info, len(idx), rules)          # per-frame pixel budget
    pixels, grid_thw = video_patches(frames, size, 14, 2, 2, mean, std)

A video is a file PyAV (FFmpeg) can demux, or a folder of frame images in natural order
(frame_2 before frame_10) played at a caller-given fps. PyAV is the decoder because its wheels
bundle FFmpeg: torchvision is not installed here and torchcodec needs system FFmpeg libraries
(`bench/bench_video_decode.py` measures the choice).

Every file operation runs in a helper thread with a deadline, so a broken file is reported as a
`VideoError` instead of hanging a DataLoader worker (signals only work in the main thread). On a
timeout the thread is abandoned: it stops at the next frame it decodes, or ends with the call into
FFmpeg that hangs; it is a daemon, so it never keeps the process alive.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from ..models.base import frame_resize

# Containers FFmpeg demuxes (its wheel in PyAV reads all of them); a path with another suffix is
# not treated as a video file.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .3gp .ogv .gif".split()
)

# Seek only when it skips at least this many frames: a seek flushes the decoder, which must then
# refill its reordering delay, so skipping a few frames costs more than decoding them (measured on
# H.264 and MPEG-4 at 720p; 2..8 were alike, 0 was slower).
_SEEK_MIN_SKIP = 8

T = TypeVar("T")


class VideoError(ValueError):
    """A video that cannot be used; the message names the path and what is wrong."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    frames: int
    """Decodable frames, counted by demuxing packets (container headers can overstate it)."""
    fps: float
    """Average frame rate; for a folder of frames, the fps the caller gave."""
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps


@dataclass(frozen=True)
class FrameRules:
    """Sampling and pixel rules of one generation (values come from the model family).

    Defaults are qwen-vl-utils' for Qwen2-VL / Qwen2.5-VL (28 px per merged patch) with no total cap;
    Qwen3-VL uses size_factor 32 and per-frame pixels 128 * 32 * 32 .. 768 * 32 * 32.
    """

    fps: float = 2.0
    """Frames sampled per second when num_frames is not given."""
    min_frames: int = 4
    max_frames: int = 768
    frame_factor: int = 2
    """The vision tower's temporal_patch_size: sampled frame counts are multiples of it."""
    min_pixels: int = 128 * 28 * 28
    """Per frame."""
    max_pixels: int = 768 * 28 * 28
    """Per frame."""
    total_pixels: int | None = None
    """Whole-video pixel budget shared by the frames (None: no total cap)."""
    size_factor: int = 28
    """patch_size * merge_size: resized sides are multiples of it."""

    def __post_init__(self):
        if self.fps <= 0 or self.frame_factor < 1 or self.size_factor < 1:
            raise ValueError(f"FrameRules: fps, frame_factor and size_factor must be positive, got {self}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(
                f"FrameRules: need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}"
            )
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"FrameRules: need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}"
            )
        if self.total_pixels is not None and self.total_pixels <= 0:
            raise ValueError(f"FrameRules: total_pixels must be positive or None, got {self.total_pixels}")


# -- metadata and decoding -------------------------------------------------------------------------
def probe(path: str | Path, timeout: float | None = 30.0, folder_fps: float = 2.0) -> VideoInfo:
    """Metadata without decoding pixels (a folder of frames: count the image files, size of the first).

    Frames are counted by reading every packet of the stream (no decoding; FFmpeg only decodes the
    first frame or two when it opens a file, to identify the codec). Raises VideoError for a missing path, an unreadable or corrupt container, no video stream,
    zero frames, or a probe that takes longer than `timeout` seconds (None: no deadline).
    """
    path = str(path)
    if Path(path).is_dir():
        return _with_timeout(lambda cancel: _probe_folder(path, folder_fps), timeout, path, "probe")
    _check_file(path)
    return _with_timeout(lambda cancel: _probe_file(path, cancel), timeout, path, "probe")


def read_frames(
    path: str | Path, indices: Sequence[int], timeout: float | None = 60.0, folder_fps: float = 2.0
) -> np.ndarray:
    """uint8 array (len(indices), H, W, 3), RGB, of the given frame indices (ascending, may repeat).

    A file is decoded once, front to back, and only wanted frames are converted to RGB; a seek
    replaces the decoding of every group of pictures that holds no wanted frame. Raises VideoError
    (path and frame) when an index cannot be decoded, or after `timeout` seconds. `folder_fps` is
    not needed to read frames; it is accepted so that probe and read_frames take the same arguments.
    """
    path = str(path)
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("read_frames: no indices given")
    if idx[0] < 0 or idx != sorted(idx):
        raise ValueError(f"read_frames: indices must be ascending and non-negative, got {idx[:8]}...")
    wanted = sorted(set(idx))
    if Path(path).is_dir():
        got = _with_timeout(
            lambda cancel: _read_folder(path, wanted, cancel), timeout, path, "reading frames"
        )
    else:
        _check_file(path)
        got = _with_timeout(lambda cancel: _read_file(path, wanted, cancel), timeout, path, "decoding")
    return np.stack([got[i] for i in idx])


class _Cancelled(Exception):
    """Raised inside an abandoned worker thread so it stops at its next frame."""


def _with_timeout(fn: Callable[[threading.Event], T], timeout: float | None, path: str, what: str) -> T:
    """Run fn(cancel) in a daemon thread and wait at most `timeout` seconds for it."""
    if timeout is None:
        return fn(threading.Event())
    box: dict[str, object] = {}
    cancel = threading.Event()

    def run():
        try:
            box["value"] = fn(cancel)
        except BaseException as e:  # handed to the caller's thread below
            box["error"] = e

    worker = threading.Thread(target=run, name=f"video-{what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        cancel.set()  # the thread is abandoned; it exits at its next frame
        raise VideoError(f"{path}: {what} took longer than {timeout:g} s (broken or very long video?)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _check_file(path: str) -> None:
    if not Path(path).exists():
        raise VideoError(f"{path}: no such file or folder")
    if not Path(path).is_file():
        raise VideoError(f"{path}: not a regular file")


def _av():
    try:
        import av
    except ImportError as e:  # sampling and patches work without it; only decoding files needs it
        raise ImportError("reading video files needs PyAV: pip install av") from e
    return av


def _open(path: str):
    av = _av()
    try:
        return av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: not a readable video ({e})") from e


def _video_stream(container, path: str):
    if not container.streams.video:
        raise VideoError(f"{path}: has no video stream")
    return container.streams.video[0]


def _packet_index(container, stream, cancel: threading.Event) -> tuple[list, list[bool]]:
    """(pts, is_keyframe) of every frame in presentation order, from one pass over the packets.

    pts is None for a stream whose packets carry no (or duplicate) timestamps; then frames can only
    be counted by decoding from the start.
    """
    entries = []
    for n, packet in enumerate(container.demux(stream)):
        if n % 256 == 0 and cancel.is_set():
            raise _Cancelled
        if packet.size and not packet.is_discard:  # size 0: the flush packet at the end
            entries.append((packet.pts, packet.is_keyframe))
    if any(p is None for p, _ in entries) or len({p for p, _ in entries}) != len(entries):
        return [None] * len(entries), [k for _, k in entries]
    entries.sort()
    return [p for p, _ in entries], [k for _, k in entries]


def _probe_file(path: str, cancel: threading.Event) -> VideoInfo:
    av = _av()
    with _open(path) as container:
        stream = _video_stream(container, path)
        width, height = stream.codec_context.width, stream.codec_context.height
        try:
            frames = len(_packet_index(container, stream, cancel)[0])
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: corrupt container ({e})") from e
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if not fps and stream.duration and stream.time_base:  # no rate in the header: frames / duration
            fps = frames / float(stream.duration * stream.time_base)
    if frames == 0:
        raise VideoError(f"{path}: the video stream has no frames")
    if not width or not height:
        raise VideoError(f"{path}: the video stream has no frame size")
    if not fps > 0:
        raise VideoError(f"{path}: the video stream has no frame rate")
    return VideoInfo(path, frames, fps, width, height)


def _read_file(path: str, wanted: list[int], cancel: threading.Event) -> dict[int, np.ndarray]:
    """Frames `wanted` (ascending, unique) by presentation index; see read_frames."""
    av = _av()
    try:
        with _open(path) as container:
            pts, keys = _packet_index(container, _video_stream(container, path), cancel)
        if wanted[-1] >= len(pts):
            raise VideoError(f"{path}: frame {wanted[-1]} asked for, but the video has {len(pts)} frames")
        if pts[0] is not None:
            try:
                with _open(path) as container:  # reopened: rewinding by a seek is not exact in every format
                    return _read_indexed(
                        container, _video_stream(container, path), pts, keys, wanted, cancel, path
                    )
            except _SeekMissed:
                pass  # a seek landed past a wanted frame: decode everything from the start
        with _open(path) as container:
            return _read_counting(container, wanted, cancel, path)
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: decoding failed ({e})") from e


class _SeekMissed(Exception):
    """A seek landed after the frame it aimed for, or frames carry unknown pts; decode from the start."""


def _reformatter():
    # One converter for all frames of a call: frame.to_ndarray(format=...) builds a new swscale
    # context per frame, which costs more than decoding a small frame (bench/bench_video_decode.py).
    return _av().video.reformatter.VideoReformatter()


def _rgb(frame, reformatter) -> np.ndarray:
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


def _decoded(container, stream):
    av = _av()
    for packet in container.demux(stream):
        try:
            frames = packet.decode()  # the final empty packet flushes the decoder's delayed frames
        except av.error.InvalidDataError:
            continue  # a damaged packet (truncated file): its frame never comes out; asking for it fails
        yield from frames


def _read_indexed(container, stream, pts, keys, wanted, cancel, path) -> dict[int, np.ndarray]:
    """Decode in presentation order, matching frames to indices by pts; seek over unwanted groups."""
    av = _av()
    index_of = {p: i for i, p in enumerate(pts)}
    reformatter = _reformatter()
    key_before, last = [], -1  # index of the keyframe each frame's group starts at (-1: none)
    for i, is_key in enumerate(keys):
        last = i if is_key else last
        key_before.append(last)
    out: dict[int, np.ndarray] = {}
    frames, pos, just_sought = _decoded(container, stream), -1, False
    for target in wanted:
        if key_before[target] > pos + _SEEK_MIN_SKIP:
            # A keyframe lies ahead with nothing wanted before it: jump there instead of decoding up to it.
            try:
                container.seek(pts[key_before[target]], stream=stream)
            except av.error.FFmpegError:
                raise _SeekMissed from None  # a format FFmpeg cannot seek in
            frames, just_sought = _decoded(container, stream), True
        while pos < target:
            if cancel.is_set():
                raise _Cancelled
            frame = next(frames, None)
            if frame is None:
                raise VideoError(
                    f"{path}: frame {target} could not be decoded (the stream ended at frame {pos})"
                )
            i = index_of.get(frame.pts)
            if i is None or (just_sought and i > target):
                raise _SeekMissed
            just_sought = False
            if i > target:
                raise VideoError(
                    f"{path}: frame {target} could not be decoded (damaged, or dropped by the decoder)"
                )
            if i > pos:  # after a seek, an open group's leading frames come out first and are older
                pos = i
                if i == target:
                    out[target] = _rgb(frame, reformatter)
    return out


def _read_counting(container, wanted, cancel, path) -> dict[int, np.ndarray]:
    """Decode from the start and number frames as they come out (streams without usable pts)."""
    out: dict[int, np.ndarray] = {}
    reformatter = _reformatter()
    todo = iter(wanted)
    target = next(todo)
    for i, frame in enumerate(_decoded(container, _video_stream(container, path))):
        if cancel.is_set():
            raise _Cancelled
        if i == target:
            out[i] = _rgb(frame, reformatter)
            target = next(todo, None)
            if target is None:
                return out
    raise VideoError(f"{path}: frame {target} could not be decoded (the stream ended first)")


# -- folders of frames -----------------------------------------------------------------------------
def _natural_key(name: str) -> list:
    # re.split with a group alternates text and digits, so positions always compare like with like.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _image_extensions() -> set[str]:
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _folder_frames(path: str) -> list[Path]:
    exts = _image_extensions()
    files = [p for p in Path(path).iterdir() if p.is_file() and p.suffix.lower() in exts]
    if not files:
        raise VideoError(f"{path}: folder has no image files to use as frames")
    return sorted(files, key=lambda p: _natural_key(p.name))


def _probe_folder(path: str, folder_fps: float) -> VideoInfo:
    if not folder_fps > 0:
        raise ValueError(f"folder_fps must be positive, got {folder_fps}")
    files = _folder_frames(path)
    try:
        with Image.open(files[0]) as im:
            width, height = im.size
    except OSError as e:
        raise VideoError(f"{path}: frame {files[0].name} is not a readable image ({e})") from e
    return VideoInfo(path, len(files), float(folder_fps), width, height)


def _read_folder(path: str, wanted: list[int], cancel: threading.Event) -> dict[int, np.ndarray]:
    files = _folder_frames(path)
    out: dict[int, np.ndarray] = {}
    for i in wanted:
        if cancel.is_set():
            raise _Cancelled
        if i >= len(files):
            raise VideoError(f"{path}: frame {i} asked for, but the folder has {len(files)} frames")
        try:
            with Image.open(files[i]) as im:
                out[i] = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise VideoError(f"{path}: frame {i} ({files[i].name}) is not a readable image ({e})") from e
        if out[i].shape != out[wanted[0]].shape:
            raise VideoError(
                f"{path}: frame {i} ({files[i].name}) is {out[i].shape[1]}x{out[i].shape[0]}, "
                f"unlike frame {wanted[0]} ({out[wanted[0]].shape[1]}x{out[wanted[0]].shape[0]})"
            )
    return out


# -- sampling and sizes (qwen-vl-utils) ------------------------------------------------------------
def sample_indices(
    info: VideoInfo, rules: FrameRules, num_frames: int | None = None, fps: float | None = None
) -> list[int]:
    """Frame indices to sample, by qwen-vl-utils' `smart_nframes` and `_read_video_*`.

    Follows QwenLM/Qwen3-VL qwen-vl-utils/src/qwen_vl_utils/vision_process.py; the qwen-vl-utils
    of Qwen2.5-VL has the same rule (the first, in QwenLM/Qwen2-VL, rounded n instead of flooring):
      num_frames given: round to a multiple of frame_factor;
      else n = frames / video_fps * fps, clamped to [ceil(min_frames), floor(min(max_frames, frames))]
      and to frames, then floored to a multiple of frame_factor;
      indices = torch.linspace(0, frames - 1, n).round() (float32, half to even, as there).
    Like qwen-vl-utils, a count outside [frame_factor, frames] is an error, not padding: a video
    shorter than frame_factor frames, or num_frames above its frame count, raises VideoError.
    """
    if num_frames is not None and fps is not None:
        raise ValueError("sample_indices: give num_frames or fps, not both")
    f, total = rules.frame_factor, info.frames
    if num_frames is not None:
        n = round(num_frames / f) * f
    else:
        fps = rules.fps if fps is None else fps
        min_frames = math.ceil(rules.min_frames / f) * f
        max_frames = math.floor(min(rules.max_frames, total) / f) * f
        n = min(min(max(total / info.fps * fps, min_frames), max_frames), total)
        n = math.floor(n / f) * f
    if not f <= n <= total:
        raise VideoError(
            f"{info.path}: cannot sample {n} frames from a video of {total} "
            f"(need {f} <= frames sampled <= frames in the video)"
        )
    return torch.linspace(0, total - 1, n).round().long().tolist()


def patch_timestamps(indices: Sequence[int], video_fps: float, temporal_patch_size: int = 2) -> list[float]:
    """Seconds of each temporal patch, for Qwen3-VL's `<{t:.1f} seconds>` text before each one.

    As transformers' Qwen3VLProcessor._calculate_timestamps: pad indices with the last one to a
    multiple of temporal_patch_size, then average the first and last frame time of each patch.
    """
    idx = list(indices)
    idx += [idx[-1]] * (-len(idx) % temporal_patch_size)
    t = [i / video_fps for i in idx]
    return [(t[i] + t[i + temporal_patch_size - 1]) / 2 for i in range(0, len(t), temporal_patch_size)]


def resized_frame_size(info: VideoInfo, n_frames: int, rules: FrameRules) -> tuple[int, int]:
    """(height, width) every sampled frame is resized to (qwen-vl-utils' `fetch_video`).

    With a total budget the per-frame cap is its share: total_pixels / n_frames * frame_factor
    (a temporal patch of frame_factor frames costs one frame's tokens), never below 1.05 * min_pixels.
    """
    max_pixels: float = rules.max_pixels
    if rules.total_pixels is not None:
        share = rules.total_pixels / n_frames * rules.frame_factor
        max_pixels = max(min(rules.max_pixels, share), int(rules.min_pixels * 1.05))
    return frame_resize(info.height, info.width, rules.size_factor, rules.min_pixels, max_pixels)


# -- pixels for the vision tower -------------------------------------------------------------------
def video_patches(
    frames: np.ndarray,
    size: tuple[int, int],
    patch_size: int,
    merge_size: int,
    temporal_patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """pixel_values_videos (grid_t * grid_h * grid_w, 3 * temporal_patch_size * patch_size**2), float32,
    and (grid_t, grid_h, grid_w).

    Each frame is resized to `size` (height, width) with PIL bicubic on uint8, rescaled by 1/255 in
    float64 then cast to float32, and normalised, exactly as transformers' Qwen2VLImageProcessorPil
    does (qwen-vl-utils resizes with torchvision's antialiased bicubic instead: values differ
    slightly, shapes do not). Frames are padded to a multiple of temporal_patch_size by repeating
    the last; rows and columns are laid out as Qwen2VLVideoProcessor.patchify lays them out:
    rows (t, h-block, w-block, h-in-block, w-in-block), columns (channel, t-in-patch, y, x).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"video_patches: need uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = size
    factor = patch_size * merge_size
    if height % factor or width % factor or height <= 0 or width <= 0:
        raise ValueError(f"video_patches: size {size} is not a positive multiple of {factor} per side")
    resized = np.stack(
        [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC)) for f in frames]
    )
    x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    x = x.transpose(0, 3, 1, 2)  # (T, C, H, W)
    if pad := -len(x) % temporal_patch_size:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    grid_t, grid_h, grid_w = len(x) // temporal_patch_size, height // patch_size, width // patch_size
    m, p = merge_size, patch_size
    x = x.reshape(grid_t, temporal_patch_size, 3, grid_h // m, m, p, grid_w // m, m, p)
    # -> (t, h-block, w-block, h-in-block, w-in-block, channel, t-in-patch, y, x)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = x.reshape(grid_t * grid_h * grid_w, 3 * temporal_patch_size * p * p)
    return torch.from_numpy(np.ascontiguousarray(flat)), (grid_t, grid_h, grid_w)
