"""Videos as the encoder sees them: which frames, at what size, how many tokens, then their pixels.

`plan_clip` reads only the container's metadata, so the data check knows a video's exact token
count before training; `load_clip` decodes the planned frames (in loader workers) and checks
that they give the planned grid. The rules are the generation's (`ModelFamily.video`), each
overridable from the recipe's `data.video` section.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .video import (
    FrameRules,
    VideoError,
    patch_timestamps,
    probe,
    read_frames,
    resized_frame_size,
    sample_indices,
    video_patches,
)

if TYPE_CHECKING:
    import torch

    from ..config import VideoConfig
    from ..models.processor import VLProcessor


@dataclass
class VideoClip:
    path: str
    indices: list[int]
    """Frames sampled from the source, ascending."""
    fps: float
    """Frame rate of the source."""
    total_frames: int
    size: tuple[int, int]
    """(height, width) every sampled frame is resized to."""
    grid: tuple[int, int, int]
    """(t, h, w) in patches; t counts groups of `temporal_patch` frames."""
    temporal_patch: int
    pixel_values: torch.Tensor | None = None

    @property
    def timestamps(self) -> list[float]:
        """Seconds of each temporal patch (Qwen3-VL's rule: the mean of its first and last frame)."""
        return patch_timestamps(self.indices, self.fps, self.temporal_patch)

    @property
    def seconds_per_grid(self) -> float:
        """Seconds one temporal patch spans at the sampled rate (Qwen2.5-VL's `second_per_grid_ts`)."""
        sampled_fps = len(self.indices) / self.total_frames * self.fps
        return self.temporal_patch / sampled_fps

    def describe(self) -> str:
        t, h, w = self.grid
        return f"{len(self.indices)} frames of {self.total_frames} at {self.size[1]}x{self.size[0]} ({t}x{h}x{w} patches)"


def frame_rules(processor: VLProcessor) -> FrameRules:
    """The generation's video rules with the recipe's `data.video` overrides applied."""
    family = processor.family
    budget, vision = family.video, family.vision
    if budget is None:
        raise VideoError(f"{family.title} takes no video input")
    cfg = _config(processor)
    pick = lambda name, default: default if getattr(cfg, name) is None else getattr(cfg, name)  # noqa: E731
    return FrameRules(
        fps=pick("fps", budget.fps),
        min_frames=pick("min_frames", budget.min_frames),
        max_frames=pick("max_frames", budget.max_frames),
        frame_factor=vision.temporal_patch_size,
        min_pixels=pick("min_pixels", budget.min_pixels),
        max_pixels=pick("max_pixels", budget.max_pixels),
        total_pixels=pick("total_pixels", budget.total_pixels),
        size_factor=vision.factor,
    )


def plan_clip(source: Any, processor: VLProcessor) -> VideoClip:
    """Which frames of `source` (a video file or a folder of frames) train, at what size; no pixels.

    Raises VideoError naming the file for anything unreadable, empty or undecodable in time.
    """
    if not isinstance(source, str):
        raise VideoError(f"a video must be a file or a folder of frames, got {type(source).__name__}")
    cfg = _config(processor)
    rules = frame_rules(processor)
    info = probe(source, timeout=cfg.decode_timeout, folder_fps=cfg.folder_fps)
    indices = sample_indices(
        info, rules, num_frames=cfg.num_frames, fps=None if cfg.num_frames else rules.fps
    )
    if not indices:
        raise VideoError(f"{source}: no frame to sample ({info.frames} frames at {info.fps:g} fps)")
    height, width = resized_frame_size(info, len(indices), rules)
    v = processor.family.vision
    t = -(-len(indices) // v.temporal_patch_size)
    return VideoClip(
        path=source,
        indices=list(indices),
        fps=info.fps,
        total_frames=info.frames,
        size=(height, width),
        grid=(t, height // v.patch_size, width // v.patch_size),
        temporal_patch=v.temporal_patch_size,
    )


def load_clip(clip: VideoClip, processor: VLProcessor) -> VideoClip:
    """The planned clip with its pixel values (decoded, resized, normalised and patchified)."""
    cfg = _config(processor)
    frames = read_frames(clip.path, clip.indices, timeout=cfg.decode_timeout, folder_fps=cfg.folder_fps)
    v, ip = processor.family.vision, processor.image_processor
    # The checkpoint's normalisation, as its images get (Qwen3-VL: 0.5; earlier: CLIP's).
    pixels, grid = video_patches(
        frames, clip.size, v.patch_size, v.merge_size, v.temporal_patch_size, ip.image_mean, ip.image_std
    )
    if tuple(grid) != clip.grid:
        raise VideoError(f"{clip.path}: decoded to a {grid} patch grid but the plan said {clip.grid}")
    return replace(clip, pixel_values=pixels)


def _config(processor: VLProcessor) -> VideoConfig:
    from ..config import VideoConfig

    return processor.video_config or VideoConfig()
