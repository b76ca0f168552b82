"""The vision tower once per distinct image, when a batch repeats its media row by row.

The model matches image tokens to vision features row by row, so a batch whose rows share media
holds each image once per row: DPO's pair batches hold every pair's media twice (the chosen rows,
then the rejected rows: "blocks"), GRPO's rollouts each prompt's media once per sampled answer
(each image `copies` times in a row: "each"). Within `vision_once`, a call of the tower whose grids
have that layout runs on the distinct images only and repeats their features, and so, when the
tower trains, their gradients add up from every row exactly as separate calls would. Any other call
(the keepalive's dummy image) passes through. Generations whose tower takes `grid_thw`; the
first-generation Qwen-VL's (fixed 448 px images, no grids) runs per row either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

Layout = Literal["blocks", "each"]


@contextmanager
def vision_once(visual: torch.nn.Module, copies: int = 2, layout: Layout = "blocks") -> Iterator[None]:
    """Within: `visual` runs once per distinct image of a call whose media repeat `copies` times
    ("blocks": the whole list repeated; "each": every image repeated in place)."""
    original = visual.forward

    def forward(pixel_values, *args, **kwargs):
        grid = kwargs["grid_thw"] if "grid_thw" in kwargs else (args[0] if args else None)
        plan = _plan(grid, pixel_values, copies, layout) if isinstance(grid, torch.Tensor) else None
        if plan is None:
            return original(pixel_values, *args, **kwargs)
        unique_grid, rows, sizes = plan
        if "grid_thw" in kwargs:
            kwargs["grid_thw"] = unique_grid
        else:
            args = (unique_grid, *args[1:])
        out = original(pixel_values[rows], *args, **kwargs)
        return _expand(out, sizes, copies, layout)

    visual.forward = forward
    try:
        yield
    finally:
        del visual.forward  # the class's forward again


def _plan(grid: torch.Tensor, pixels: torch.Tensor, copies: int, layout: Layout):
    """(the distinct images' grid, their pixel rows, their patch counts), or None when the call does
    not have the layout."""
    n = grid.shape[0] // copies
    if copies < 2 or n == 0 or grid.shape[0] != n * copies:
        return None
    if layout == "blocks":
        blocks = grid.view(copies, n, -1)
        unique = blocks[0]
        if not bool((blocks == unique).all()):
            return None
    else:
        each = grid.view(n, copies, -1)
        unique = each[:, 0]
        if not bool((each == unique[:, None]).all()):
            return None
    sizes = unique.prod(-1).tolist()
    if pixels.shape[0] != copies * sum(sizes):
        return None
    if layout == "blocks":  # the first block: a view, no copy
        rows = slice(0, sum(sizes))
    else:  # the first copy of each image: its rows start every copies x size rows
        starts = torch.tensor([0, *sizes[:-1]]).cumsum(0) * copies
        rows = torch.cat([torch.arange(s, s + k) for s, k in zip(starts.tolist(), sizes, strict=True)])
        rows = rows.to(pixels.device)
    return unique, rows, sizes


def _expand(out, sizes: list[int], copies: int, layout: Layout):
    """A vision output (tensors, lists of them, ModelOutputs) laid out as the call's rows were."""
    if isinstance(out, torch.Tensor):
        if layout == "blocks":
            return torch.cat([out] * copies)
        if out.dim() == 0:
            return out
        # Per image, its share of the rows (patches, or merged tokens), repeated in place.
        total = sum(sizes)
        counts = [k * out.shape[0] // total for k in sizes]
        if sum(counts) != out.shape[0] or any(k * out.shape[0] % total for k in sizes):
            raise ValueError(f"a vision output of {out.shape[0]} rows for images of {sizes} patches")
        starts = torch.tensor([0, *counts[:-1]]).cumsum(0).tolist()
        index = torch.cat(
            [torch.arange(s, s + c).repeat(copies) for s, c in zip(starts, counts, strict=True)]
        )
        return out[index.to(out.device)]
    if isinstance(out, dict):  # transformers' ModelOutput is an OrderedDict
        for key in list(out.keys()):
            out[key] = _expand(out[key], sizes, copies, layout)
        return out
    if isinstance(out, (list, tuple)):
        return type(out)(_expand(x, sizes, copies, layout) for x in out)
    return out
