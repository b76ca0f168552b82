"""Preference pairs on the synthetic grounding task (`qwenvl-ft data synth --pairs`).

The same images and questions as `write_grounding_set`; the chosen answer is the shape's box, the
rejected one the box of another cell of the grid, so a model prefers the right answer exactly when
it has learned where the shape is. Our pair layout (data/pairs.py), boxes in pixels.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .synthetic import write_grounding_set


def wrong_box(box: list[int], size: int, grid: int, rng: random.Random) -> list[int]:
    """The box moved to another cell of the grid, chosen at random."""
    cell = size // grid
    here = (box[1] // cell) * grid + box[0] // cell
    other = rng.choice([c for c in range(grid * grid) if c != here])
    dx, dy = (other % grid - here % grid) * cell, (other // grid - here // grid) * cell
    return [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]


def write_pair_set(
    out_dir: str | Path, count: int, seed: int, heldout: bool = False, size: int = 96, grid: int = 3
) -> Path:
    """`count` pairs (correct box chosen, a box in another cell rejected) in `out_dir/data.jsonl`."""
    path = write_grounding_set(out_dir, count, seed, heldout, size, grid)
    rng = random.Random(f"pairs-{seed}")
    samples = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with open(path, "w", encoding="utf-8") as f:
        for sample in samples:
            box = sample.pop("objects")["bbox"][0]
            sample["messages"] = sample["messages"][:1]  # the question; the answers follow
            sample["chosen"] = {"content": "<bbox>", "objects": {"bbox": [box]}}
            sample["rejected"] = {"content": "<bbox>", "objects": {"bbox": [wrong_box(box, size, grid, rng)]}}
            f.write(json.dumps(sample) + "\n")
    return path
