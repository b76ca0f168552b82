"""A stand-in for a pretrained vision tower, so a tiny model can learn the synthetic grounding task.

    qwenvl-ft make-tiny qwen3_vl runs/tiny --standin-vision --min-pixels 9216 --max-pixels 9216

A random tiny ViT's features barely depend on the image (the spread of its mean feature over
images is 5-7% of its size), and real fine-tuning always starts from a pretrained tower. So the
stand-in gives the tiny tower what a pretrained one provides on the images of
`qwenvl_ft.data.synthetic.draw_grid_shapes`: in three channels, the colour of each patch relative
to the background; in the others, a 2-D sin-cos code of the patch's place; identity blocks; and a
projector that passes both on to the language model. Where the projector has a hidden layer
(Qwen3-VL) it also gates: a token shows the colour and place of the shape it covers and is 0 on
background, so the language model has one token to find; with it the quickstart's LoRA reaches
1.0 held-out accuracy in 400 steps, where the ungated projector took 800 steps of full training.

The generation-specific part (which weights are the patch filter, the position table, the
projector) is each family's `standin_vision`; the shared pieces are here. Keep the tower and
projector frozen when training on it (`train.freeze_merger: true`): trained at the language
model's rate, the structure is wiped out in a few steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..data.synthetic import BACKGROUND

COLOUR_CHANNELS = 8
"""Channels 0..2 carry colour, 3..7 stay zero; the place code starts after them."""


def sincos_table(n: int, dims: int) -> torch.Tensor:
    """(n*n, dims): sin and cos of the row and of the column at dims/4 wavelengths longer than a cell."""
    r, c = torch.meshgrid(torch.arange(float(n)), torch.arange(float(n)), indexing="ij")
    omega = (math.pi / n) * torch.arange(1, dims // 4 + 1) / 2
    return torch.cat([f(p.reshape(-1, 1) * omega) for p in (r, c) for f in (torch.sin, torch.cos)], 1)


@torch.no_grad()
def colour_filter(
    conv: torch.nn.Module, mean: Sequence[float], std: Sequence[float], scale: float = 4.0
) -> None:
    """Patch filter: output channel k (k < 3) = scale x the patch's mean of colour k minus the background's.

    `mean` and `std` are the image processor's normalisation, so the filter undoes it. Without a
    bias the background is not subtracted but stays a constant offset, which works as well.
    """
    conv.weight.zero_()
    per = conv.weight[0, 0].numel()  # the pixels (and frames) of one patch in one colour
    for k in range(3):
        conv.weight[k, k] = scale / per
    if conv.bias is not None:
        conv.bias.zero_()
        for k in range(3):
            conv.bias[k] = -scale * (BACKGROUND[k] / 255 - mean[k]) / std[k]


@torch.no_grad()
def place_code(table: torch.Tensor) -> None:
    """A square (n*n, width) position table: after the colour channels, a 2-D sin-cos code and its negative.

    With its negative every row has mean 0 and the same norm, so a LayerNorm over a background
    patch (colour channels 0) leaves those channels at exactly 0.
    """
    n = math.isqrt(table.shape[0])
    if n * n != table.shape[0]:
        raise ValueError(f"position table of {table.shape[0]} rows is not a square grid")
    half = (table.shape[1] - COLOUR_CHANNELS) // 2
    code = sincos_table(n, half)
    table.zero_()
    table[:, COLOUR_CHANNELS : COLOUR_CHANNELS + code.shape[1]] = code
    table[:, COLOUR_CHANNELS + half : COLOUR_CHANNELS + half + code.shape[1]] = -code


@torch.no_grad()
def zero_out(*layers: torch.nn.Module) -> None:
    """Zero weight and bias: a residual branch ending in one of these adds nothing (an identity block)."""
    for layer in layers:
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()


GATE_THRESHOLD = 6.0
"""How far below 0 the colour channels of a token's patches must sum (after LayerNorm) to show a
shape: 0 on background, -13 to -34 on the shapes (measured on 200 images of `draw_grid_shapes`)."""


@torch.no_grad()
def gated_projector(fc1: torch.nn.Linear, fc2: torch.nn.Linear, width: int, groups: int) -> None:
    """fc2(GELU(fc1(x))) over `groups` LayerNorm'd patches of `width` channels, concatenated.

    Output channel j is the mean of channel j over the patches where the token shows a shape, and
    0 on background: so the shape's colour and place are what the language model sees. A gate
    z = -(colour channels summed) - GATE_THRESHOLD is -6 on background and 7 to 28 on a shape;
    hidden unit j computes GELU(z + x_j), a gate unit GELU(z), and fc2 takes their difference:
    on a shape both are linear and the difference is x_j, on background both are about 0.
    """
    if fc1.out_features <= width or fc2.out_features < width:
        raise ValueError(f"a gated projector over {width} channels needs more hidden and output units")
    gate = torch.zeros(groups * width)
    for g in range(groups):
        gate[g * width : g * width + 3] = -1.0
    used = [*range(3), *range(COLOUR_CHANNELS, width)]
    zero_out(fc1, fc2)
    for j in used + [width]:  # unit `width` is the gate unit
        fc1.weight[j] = gate
        fc1.bias[j] = -GATE_THRESHOLD
    for j in used:
        gain = 0.5 if j < 3 else 1.0  # colour channels are larger: keep z + x_j in GELU's linear range
        for g in range(groups):
            fc1.weight[j, g * width + j] += gain / groups
        fc2.weight[j, j] = 1.0
        fc2.weight[j, width] = -1.0
