"""A synthetic text -> image retrieval task in the spirit of the quickstart's shapes.

Each image is `draw_grid_shapes`' 96-pixel 3x3 grid with one coloured shape in one cell; its
description names all three: "the red circle in the top left cell". 5 colours x 3 shapes x 9 cells
make 135 combinations; one in five (`is_held_out`) only ever appears in held-out sets, so a model
retrieving them has to compose colour, shape and place, never having seen the combination.

`write_retrieval_set` writes samples in the retrieval format (data/retrieval.py): the description
as query, its image as positive, and hard negatives: images of the set that share two of the three
(same shape and colour elsewhere, or another shape or colour in the same cell), then any others.
A held-out set holds each held-out combination once, so it is also its own corpus.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .synthetic import Shape, draw_grid_shapes, is_held_out

ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "middle", "right")
INSTRUCTION = "Find the image that matches the description."
SIZE, GRID = 96, 3


def cell_of(shape: Shape) -> int:
    side = SIZE // GRID
    return (shape.box[1] // side) * GRID + shape.box[0] // side


def describe(shape: Shape) -> str:
    cell = cell_of(shape)
    row, column = ROWS[cell // GRID], COLUMNS[cell % GRID]
    place = "centre" if (row, column) == ("middle", "middle") else f"{row} {column}"
    return f"the {shape.colour} {shape.shape} in the {place} cell"


def write_retrieval_set(
    out_dir: str | Path, count: int, seed: int, heldout: bool = False, negatives: int = 3
) -> Path:
    """`count` samples (held-out: at most one per held-out combination, 27) into `out_dir/data.jsonl`
    and `out_dir/img/N.png`; returns the JSONL path. Deterministic for a seed."""
    if not 0 < count <= 10_000:
        raise ValueError(f"count must be in [1, 10000], got {count}")
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    drawn: list[Shape] = []
    seen: set[tuple] = set()
    for _ in range(200 * count):
        if len(drawn) == count:
            break
        image, (shape,) = draw_grid_shapes(rng.getrandbits(64), SIZE, GRID, 1)
        combo = (shape.colour, shape.shape, cell_of(shape))
        if is_held_out(shape, SIZE, GRID) != heldout or (heldout and combo in seen):
            continue
        seen.add(combo)
        image.save(out / "img" / f"{len(drawn)}.png")
        drawn.append(shape)
    if heldout:
        count = len(drawn)  # every held-out combination once: 27 of the 135
    if len(drawn) < count:
        raise ValueError(f"could not draw {count} images")
    with open(out / "data.jsonl", "w", encoding="utf-8") as f:
        for i, shape in enumerate(drawn):
            f.write(json.dumps(_sample(i, shape, drawn, negatives, seed, rng)) + "\n")
    return out / "data.jsonl"


def _sample(i: int, shape: Shape, drawn: list[Shape], negatives: int, seed: int, rng: random.Random) -> dict:
    key = (shape.colour, shape.shape, cell_of(shape))
    others = [j for j, s in enumerate(drawn) if (s.colour, s.shape, cell_of(s)) != key]

    def shared(j: int) -> int:  # how many of colour, shape, cell it has in common
        return sum(
            a == b for a, b in zip(key, (drawn[j].colour, drawn[j].shape, cell_of(drawn[j])), strict=True)
        )

    rng.shuffle(others)
    others.sort(key=shared, reverse=True)  # the hardest first: two of three in common
    return {
        "id": f"r{seed}-{i}",
        "instruction": INSTRUCTION,
        "query": describe(shape),
        "positive": {"image": f"img/{i}.png"},
        "negatives": [{"image": f"img/{j}.png"} for j in others[:negatives]],
    }
