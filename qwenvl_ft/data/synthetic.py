"""Synthetic images of coloured shapes with exact boxes, for the demo data, self-checks and tests.

Deterministic for a seed, and drawn with PIL only, so they need no download and no torchvision.
`write_grounding_set` writes the grounding task of the quickstart and the learning test
(`qwenvl-ft data synth`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 180),
}
SHAPES = ("square", "circle", "triangle")
BACKGROUND = (245, 245, 240)


@dataclass
class Shape:
    colour: str
    shape: str
    box: tuple[int, int, int, int]
    """x1, y1, x2, y2 in pixels of the image (x2, y2 exclusive)."""

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def draw_shapes(
    seed: int, size: tuple[int, int] = (96, 72), count: int = 2
) -> tuple[Image.Image, list[Shape]]:
    """An RGB image of `size` (width, height) with `count` non-overlapping shapes, and their boxes."""
    rng = random.Random(seed)
    w, h = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    shapes: list[Shape] = []
    names = rng.sample([(c, s) for c in COLOURS for s in SHAPES], count)
    for colour, kind in names:
        for _ in range(100):  # rejection-sample a free spot; tiny images fit two or three shapes
            side = rng.randint(max(8, min(w, h) // 5), max(9, min(w, h) // 2))
            x1, y1 = rng.randint(0, w - side), rng.randint(0, h - side)
            box = (x1, y1, x1 + side, y1 + side)
            if all(_disjoint(box, s.box) for s in shapes):
                break
        else:
            raise ValueError(f"cannot place {count} shapes on a {w}x{h} image")
        _fill(draw, kind, box, COLOURS[colour])
        shapes.append(Shape(colour, kind, box))
    return image, shapes


def shapes_image(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    return draw_shapes(seed, size)[0]


def _disjoint(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def draw_grid_shapes(
    seed: int, size: int = 56, grid: int = 2, count: int = 2
) -> tuple[Image.Image, list[Shape]]:
    """A `size`-pixel square image cut into grid x grid cells, `count` shapes in distinct random cells.

    Each shape fills its cell less a small margin, so its box says which cell it is in: the
    grounding task of the end-to-end learning test, sized for a tiny model to learn in minutes.
    (colour, shape) pairs are distinct, so naming both always picks exactly one shape.
    """
    rng = random.Random(seed)
    cell, margin = size // grid, max(1, size // (8 * grid))
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cells = rng.sample(range(grid * grid), count)
    names = rng.sample([(c, s) for c in COLOURS for s in SHAPES], count)
    shapes = []
    for index, (colour, kind) in zip(cells, names, strict=True):
        x, y = (index % grid) * cell, (index // grid) * cell
        box = (x + margin, y + margin, x + cell - margin, y + cell - margin)
        _fill(draw, kind, box, COLOURS[colour])
        shapes.append(Shape(colour, kind, box))
    return image, shapes


HELD_OUT_EVERY = 5
"""One (colour, shape, cell) combination in this many is held out: training sets never draw it."""


def is_held_out(shape: Shape, size: int = 96, grid: int = 3) -> bool:
    """Whether the shape's combination of colour, shape and cell is one that only held-out sets contain.

    Every combination fixes the whole image (there are 15 x 9 of them on the 3x3 grid), so a
    held-out image differs from every training image, yet each colour, shape and cell is trained on.
    """
    cell_side = size // grid
    cell = (shape.box[1] // cell_side) * grid + shape.box[0] // cell_side
    kind = list(COLOURS).index(shape.colour) * len(SHAPES) + SHAPES.index(shape.shape)
    return (kind * grid * grid + cell) % HELD_OUT_EVERY == 0


def write_grounding_set(
    out_dir: str | Path, count: int, seed: int, heldout: bool = False, size: int = 96, grid: int = 3
) -> Path:
    """`count` grounding samples, "Where is the {colour} {shape}?" on `draw_grid_shapes` images.

    Writes `out_dir/data.jsonl` (messages format, the box in pixels through `objects`, so each
    generation writes it in its own convention) and `out_dir/img/N.png`; returns the JSONL path.
    `heldout`: only the combinations of colour, shape and cell that other sets never contain
    (`is_held_out`), so no image of it occurs in a training set. Deterministic for a seed.
    """
    if not 0 < count <= 10_000:
        raise ValueError(f"count must be in [1, 10000], got {count}")
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(out / "data.jsonl", "w", encoding="utf-8") as f:
        i = 0
        while i < count:  # draw, keep the images of the wanted kind of combination
            image, (shape,) = draw_grid_shapes(rng.getrandbits(64), size, grid, 1)
            if is_held_out(shape, size, grid) != heldout:
                continue
            image.save(out / "img" / f"{i}.png")
            sample = {
                "id": f"s{seed}-{i}",
                "messages": [
                    {"role": "user", "content": f"<image>Where is the {shape.name}?"},
                    {"role": "assistant", "content": "<bbox>"},
                ],
                "images": [f"img/{i}.png"],
                "objects": {"ref": [], "bbox": [list(shape.box)]},
            }
            f.write(json.dumps(sample) + "\n")
            i += 1
    return out / "data.jsonl"


def _fill(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill) -> None:
    corners = [box[0], box[1], box[2] - 1, box[3] - 1]
    if kind == "square":
        draw.rectangle(corners, fill=fill)
    elif kind == "circle":
        draw.ellipse(corners, fill=fill)
    else:
        draw.polygon(
            [(box[0], box[3] - 1), ((box[0] + box[2]) // 2, box[1]), (box[2] - 1, box[3] - 1)], fill=fill
        )


def moving_square_video(
    path: str, frames: int = 30, fps: int = 10, size: tuple[int, int] = (64, 48), colour: str = "red"
) -> str:
    """Write an H.264 video of a square crossing a plain background (needs PyAV); returns the path.

    Frame i has the square's left edge at 2 * i pixels (wrapping), so which frames were sampled
    can be read back from the pixels.
    """
    import av
    import numpy as np

    w, h = size
    side = max(4, h // 4)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18"}
        for i in range(frames):
            frame = np.full((h, w, 3), 245, np.uint8)
            x = (2 * i) % (w - side)
            frame[h // 2 - side // 2 : h // 2 + side - side // 2, x : x + side] = COLOURS[colour]
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return str(path)
