"""What the demo page does, without the page: models, uploads, one chat per model, drawn boxes.

The gradio page (`app.py`) is a thin layer over `Session`, so everything here is tested without a
browser: a question goes to every loaded model (the run and, with `--compare`, its base), each
answer streams as it decodes, and the boxes in each answer are parsed with that model's own
convention and drawn on the last image in its original pixels, labelled with their reference text.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..chat import Chat
from ..data.images import ImageError, load_image
from ..infer import Predictor
from ..models.base import ModelFamily

log = logging.getLogger("qwenvl_ft.demo")

COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
DISPLAY_SIDE, DISPLAY_MIN = 1280, 512
"""Bounds of the longest side of a drawn image as the page shows it."""


class UploadRefused(ValueError):
    """An upload the demo does not use; the message names the file and says why."""


@dataclass
class DemoModel:
    """One loaded model and how the page names it."""

    title: str
    predictor: Predictor
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def takes_video(self) -> bool:
        return self.predictor.family.video is not None


def load_models(
    model: str,
    compare: str | None = None,
    dtype: str = "bf16",
    base: str | None = None,
    device: str | None = None,
    max_pixels: int | None = None,
    reasoning_effort: str | None = None,
) -> list[DemoModel]:
    """The model or run (and the one to compare it with), loaded as `predict` loads them.

    reasoning_effort: for the models whose generation has one; refused by name when none does."""
    from ..models.capabilities import effort_problem

    paths = [model] + ([compare] if compare else [])
    families = [_family_of(p) for p in paths]
    if reasoning_effort is not None and not any(f.reasoning_efforts for f in families):
        raise ValueError(effort_problem(families[0], reasoning_effort, "--reasoning-effort"))
    models = []
    for path, family in zip(paths, families, strict=True):
        effort = reasoning_effort if family.reasoning_efforts else None
        predictor = Predictor.load(
            path, dtype=dtype, device=device, base=base if path == model else None, reasoning_effort=effort
        )
        if max_pixels:
            predictor.processor.set_pixel_range(None, max_pixels)
        models.append(DemoModel(f"{path} ({predictor.family.title})", predictor))
    return models


def _family_of(path: str) -> ModelFamily:
    """The generation of a run (as it recorded) or a checkpoint (detected), before loading it."""
    from ..models import get_family, resolve_family
    from ..runs import is_adapter, read_run

    return get_family(read_run(path)["family"]) if is_adapter(path) else resolve_family(path)


def classify_upload(path: str | Path, takes_video: bool) -> tuple[str, Image.Image | str]:
    """("image", the decoded image) or ("video", its path); UploadRefused for anything else.

    The content decides, never the file name: an image is what PIL decodes (within its
    decompression-bomb limit), a video what the container probe reads."""
    from ..data.video import VideoError, probe

    path = Path(path)
    name = path.name
    try:
        return "image", load_image(str(path))
    except ImageError as e:
        image_error = str(e).replace(str(path), name)
    if "too large" in image_error:
        raise UploadRefused(image_error)
    if takes_video:
        try:
            info = probe(str(path), timeout=10.0)
        except VideoError:
            pass
        else:
            if info.frames > 0:
                return "video", str(path)
    what = "an image or a video" if takes_video else "an image (these models take no video)"
    raise UploadRefused(f"{name}: not {what}; refused")


def draw_boxes(image: Image.Image, boxes: list[tuple[str | None, tuple[float, ...]]]) -> Image.Image:
    """A copy of `image` with each box (in its original pixels) outlined and labelled with its
    reference text, else its number; shown with the longest side between DISPLAY_MIN and
    DISPLAY_SIDE (a 96-pixel image is enlarged so that its labels stay readable)."""
    side = max(image.size)
    scale = min(max(1.0, DISPLAY_MIN / side), DISPLAY_SIDE / side)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    out = image.convert("RGB").resize(
        size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    )
    draw = ImageDraw.Draw(out)
    width = max(2, min(size) // 150)
    font = ImageFont.load_default(size=max(12, min(size) // 25))
    for i, (label, box) in enumerate(boxes):
        colour = COLOURS[i % len(COLOURS)]
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = label or f"box {i + 1}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tag_h = bottom + 2 * width
        y = y1 - tag_h if y1 - tag_h >= 0 else y1  # above the box when it fits, else inside it
        draw.rectangle((x1, y, x1 + right + 2 * width, y + tag_h), fill=colour)
        draw.text((x1 + width, y + width), text, fill=(255, 255, 255), font=font)
    return out


@dataclass
class Reply:
    """Where one model's answer stands while it streams, and once it is done."""

    text: str = ""
    reasoning: str = ""
    done: bool = False
    error: str | None = None
    boxes: list[tuple[str | None, tuple[float, float, float, float]]] = field(default_factory=list)
    drawn: Image.Image | None = None


class Session:
    """One visitor's conversation with every loaded model: the same questions, separate histories."""

    def __init__(self, models: list[DemoModel], max_new_tokens: int = 512, system: str | None = None):
        self.models = models
        self.chats = [Chat(m.predictor, system, max_new_tokens) for m in models]

    def reset(self) -> None:
        for chat in self.chats:
            chat.reset()

    def check_uploads(self, paths: list[str]) -> tuple[list[Image.Image], list[str]]:
        """(images, videos) of the uploads; UploadRefused names the first unusable one."""
        takes_video = all(m.takes_video for m in self.models)
        images, videos = [], []
        for path in paths:
            kind, value = classify_upload(path, takes_video)
            (images if kind == "image" else videos).append(value)
        return images, videos

    def ask(
        self, text: str, images: list[Image.Image] = (), videos: list[str] = (), thinking: bool | None = None
    ) -> Iterator[list[Reply]]:
        """Ask every model at once; yields every model's `Reply` each time one of them streams more,
        the last time with all of them done (each with its boxes and drawn image, or its error)."""
        replies = [Reply() for _ in self.models]
        events: queue.Queue[int] = queue.Queue()
        workers = [
            threading.Thread(
                target=self._answer, args=(i, text, images, videos, thinking, replies[i], events)
            )
            for i in range(len(self.models))
        ]
        for w in workers:
            w.start()
        finished = 0
        while finished < len(workers):
            if events.get() < 0:
                finished += 1
            yield replies
        for w in workers:
            w.join()

    def _answer(self, i, text, images, videos, thinking, reply: Reply, events: queue.Queue) -> None:
        model, chat = self.models[i], self.chats[i]
        try:
            with model.lock:  # one generation at a time per model, whoever asks
                if model.predictor.family.thinking:
                    chosen = (
                        model.predictor.thinking if thinking is None else thinking
                    )  # None: as the run trained
                    chat.predictor = dataclasses.replace(model.predictor, thinking=chosen)

                def on_text(piece: str) -> None:
                    reply.text += piece
                    events.put(i)

                def on_reasoning(piece: str) -> None:
                    reply.reasoning += piece
                    events.put(i)

                reply.text = chat.ask(text, list(images), on_text, on_reasoning, videos=list(videos))
                reply.reasoning = chat.reasoning or ""
                if chat.images:
                    reply.boxes = chat.labelled_boxes()
                    reply.drawn = draw_boxes(chat.images[-1], reply.boxes)
        except Exception as e:  # one model's failure is shown on the page; the server goes on
            log.exception("demo: %s failed on a question", model.title)
            reply.error = f"{type(e).__name__}: {e}"
        finally:
            reply.done = True
            events.put(-1)


def example_prompts(run_dir: str | Path, limit: int = 4) -> list[tuple[str, list[str]]]:
    """(question, image paths) of the first samples of a run's eval data (`data.eval` in its
    resolved_config.yaml), for the page's examples; [] when it has none or they cannot be read."""
    import yaml

    from ..config import DatasetSpec
    from ..data.sources import Source

    config = Path(run_dir) / "resolved_config.yaml"
    if not config.is_file():
        return []
    try:
        specs = (yaml.safe_load(config.read_text()).get("data") or {}).get("eval") or []
        out = []
        for spec in specs:
            source = Source(DatasetSpec(**spec))
            for i in range(min(limit - len(out), len(source))):
                turn = next(t for t in source.conversation(i).turns if t.role == "user")
                text = " ".join(str(s.value) for s in turn.segments if s.kind == "text").strip()
                images = [
                    str(s.value) for s in turn.segments if s.kind == "image" and isinstance(s.value, str)
                ]
                if text and all(Path(p).is_file() for p in images):
                    out.append((text, images))
            if len(out) >= limit:
                break
        return out
    except Exception as e:  # examples are a convenience: the page works without them
        log.warning("demo: no examples from %s (%s)", config, e)
        return []
