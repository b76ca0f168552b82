"""Training's side of the run directory (runs.py holds its contract): prepared at start, every
checkpoint described like the final output, a loss curve at the end."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw
from transformers import TrainerCallback

from ..config import ConfigError, RecipeConfig
from ..runs import describe, latest_checkpoint


def prepare_output_dir(cfg: RecipeConfig) -> tuple[Path, Path | None]:
    """(output dir, checkpoint to resume from); refuses to write over an unrelated non-empty directory."""
    out = Path(cfg.output.dir)
    resume = cfg.train.resume
    if resume == "auto":
        ckpt = latest_checkpoint(out) if out.is_dir() else None
        return out, ckpt
    if resume:
        if not (Path(resume) / "trainer_state.json").is_file():
            raise ConfigError(
                f"'train.resume': {resume} is not a complete checkpoint (no trainer_state.json)"
            )
        return out, Path(resume)
    if out.is_dir() and any(out.iterdir()) and not cfg.output.overwrite:
        raise ConfigError(
            f"output directory {out} is not empty: set train.resume=auto to continue that run, "
            "output.overwrite=true to write over it, or choose another output.dir"
        )
    return out, None


class DescribeCheckpoints(TrainerCallback):
    """Every checkpoint describes itself like the final output does."""

    def __init__(self, meta: dict, cfg: RecipeConfig, processor):
        self.meta, self.cfg, self.processor = meta, cfg, processor

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            describe(
                Path(args.output_dir) / f"checkpoint-{state.global_step}", self.meta, self.cfg, self.processor
            )


def plot_loss(history: list[dict], path: Path, size: tuple[int, int] = (640, 400)) -> Path | None:
    """A PNG of training loss against step (PIL only, no plotting library)."""
    return plot_series(history, ("loss",), path, "training loss", size)


SERIES_COLOURS = [(30, 90, 200), (200, 60, 40), (40, 150, 70), (150, 70, 170), (200, 140, 20)]


def plot_series(
    history: list[dict], keys: tuple[str, ...], path: Path, title: str, size: tuple[int, int] = (640, 400)
) -> Path | None:
    """A PNG of several logged values against step, one colour each (e.g. DPO or GRPO rewards).

    Only training log lines count (those with `loss`); None when no key has two points.
    """
    series = {
        key: [(h["step"], h[key]) for h in history if key in h and "loss" in h and "step" in h]
        for key in keys
    }
    series = {k: v for k, v in series.items() if len(v) >= 2}
    if not series:
        return None
    w, h = size
    left, right, top, bottom = 60, 20, 30 + 14 * len(series), 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    steps = [s for points in series.values() for s, _ in points]
    values = [v for points in series.values() for _, v in points]
    s0, s1, lo, hi = min(steps), max(steps), min(values), max(values)
    span_s, span_v = max(s1 - s0, 1), max(hi - lo, 1e-9)

    def xy(step: float, value: float) -> tuple[float, float]:
        return (
            left + (step - s0) / span_s * (w - left - right),
            top + (hi - value) / span_v * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline=(160, 160, 160))
    draw.text((left, 4), title, fill="black")
    for k, (key, points) in enumerate(series.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        draw.line([xy(s, v) for s, v in points], fill=colour, width=2)
        draw.text((left, 18 + 14 * k), f"{key}: {points[0][1]:.3f} -> {points[-1][1]:.3f}", fill=colour)
    draw.text((4, top), f"{hi:.2f}", fill="black")
    draw.text((4, h - bottom - 10), f"{lo:.2f}", fill="black")
    draw.text((left, h - bottom + 6), f"step {s0}", fill="black")
    draw.text((w - right - 60, h - bottom + 6), f"step {s1}", fill="black")
    image.save(path)
    return path
