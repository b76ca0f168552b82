"""End to end, the pipeline learns: a tiny model trained through the CLI finds shapes it could not before.

The task, generated here: 96x96 images cut into a 3x3 grid, one coloured shape in a random cell,
"Where is the {colour} {shape}?" answered by its box in the family's convention. After a few
minutes of training, accuracy at IoU 0.5 on held-out images must clearly beat the untrained
model and the best fixed box (the most frequent training box).

Everything the language model learns goes through the code under test: data loading, the chat
template, the assistant-only label mask, box conversion to the family's convention, rotary
positions, the trainer, `qwenvl-ft eval` on a model (generation, box parsing back to pixels, IoU).
Two deliberate bugs, each run once on Qwen3-VL, made this test fail: labels shifted by one token
(a double shift) gave 0.000, and x and y swapped when boxes are written gave 0.141, the fixed-box
level. Unit tests pin each part against hand-worked values; this test checks that they work
together.

The vision tower is a stand-in for a pretrained one. A random tiny ViT's features barely depend
on the image (measured: the colour of the shape could not be learned from them in 300 steps), and
real fine-tuning always starts from a pretrained tower. So before training, the test gives the tiny
tower what a pretrained one provides: the colour of each patch relative to the background in
three channels, a 2-D sin-cos code of the patch's place in the others, identity blocks, and a
merger that averages each 2x2 group (Qwen3-VL) or a resampler whose queries attend to their own
place (Qwen-VL). Tower and merger stay frozen (`train.freeze_merger=true`): training them at
the language model's rate wipes the structure out in a few steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from qwenvl_ft.cli import main
from qwenvl_ft.data.synthetic import draw_grid_shapes
from qwenvl_ft.models import get_family
from qwenvl_ft.models.tiny import make_tiny

REPO = Path(__file__).resolve().parents[2]
SIZE, GRID = 96, 3
BACKGROUND = (245, 245, 240)  # draw_grid_shapes' background


def sincos_table(n: int, dims: int) -> torch.Tensor:
    """(n*n, dims): sin and cos of the row and of the column at dims/4 wavelengths longer than a cell."""
    r, c = torch.meshgrid(torch.arange(float(n)), torch.arange(float(n)), indexing="ij")
    omega = (math.pi / n) * torch.arange(1, dims // 4 + 1) / 2
    return torch.cat([f(p.reshape(-1, 1) * omega) for p in (r, c) for f in (torch.sin, torch.cos)], 1)


@torch.no_grad()
def colour_filter(conv: torch.nn.Module, mean, std, scale: float = 4.0) -> None:
    """Output channel k (k < 3) = scale x the patch's mean of colour channel k minus the background's."""
    conv.weight.zero_()
    per = conv.weight[0, 0].numel()
    for k in range(3):
        conv.weight[k, k] = scale / per
    if conv.bias is not None:
        conv.bias.zero_()
        for k in range(3):
            conv.bias[k] = -scale * (BACKGROUND[k] / 255 - mean[k]) / std[k]


@torch.no_grad()
def place_code(table: torch.Tensor) -> None:
    """Channels 8.. of a (n*n, width) position table: the 2-D sin-cos code; channels 0..7 left to colour."""
    n = int(math.sqrt(table.shape[0]))
    table.zero_()
    table[:, 8:] = sincos_table(n, table.shape[1] - 8)


@torch.no_grad()
def standin_qwen3_vl(model) -> None:
    v = model.model.visual
    colour_filter(v.patch_embed.proj, (0.5,) * 3, (0.5,) * 3)
    place_code(v.pos_embed.weight)
    for block in v.blocks:  # residual blocks with zero output: identity
        for out in (block.attn.proj, block.mlp.linear_fc2):
            out.weight.zero_()
            out.bias.zero_()
    merger, width = v.merger, v.pos_embed.weight.shape[1]
    groups = merger.linear_fc2.weight.shape[1] // width  # the 2x2 patches of one token, concatenated
    merger.linear_fc1.weight.copy_(0.1 * torch.eye(groups * width))  # small inputs: GELU nearly linear
    merger.linear_fc1.bias.zero_()
    merger.linear_fc2.weight.zero_()
    merger.linear_fc2.bias.zero_()
    for g in range(groups):
        merger.linear_fc2.weight[:width, g * width : (g + 1) * width] = torch.eye(width) * 20 / groups
    for extra in v.deepstack_merger_list:  # no second path into the language model
        extra.linear_fc2.weight.zero_()
        extra.linear_fc2.bias.zero_()


@torch.no_grad()
def standin_qwen_vl(model) -> None:
    from qwenvl_ft.models.qwen_vl.image_processing import CLIP_MEAN, CLIP_STD

    v = model.transformer.visual
    colour_filter(v.conv1, CLIP_MEAN, CLIP_STD)  # no bias: the background stays a constant offset
    place_code(v.positional_embedding)
    for block in v.transformer.resblocks:
        for out in (block.attn.out_proj, block.mlp.c_proj):
            out.weight.zero_()
            out.bias.zero_()
    attn = v.attn_pool.attn  # queries and keys both carry the 2-D sin-cos table: meet where they match
    d = attn.embed_dim
    attn.in_proj_weight[: 2 * d] = 8 * torch.eye(d).repeat(2, 1)
    attn.in_proj_bias.zero_()


# family -> (stand-in, config overrides, recipe overrides, steps, learning rate)
SETUPS = {
    "qwen3_vl": (standin_qwen3_vl, {}, ["model.min_pixels=9216", "model.max_pixels=9216"], 800, 1e-3),
    "qwen_vl": (
        standin_qwen_vl,
        # 112-px images (8x8 patches) and a 128-wide language model: about 5 steps a second on CPU.
        {
            "hidden_size": 128,
            "intermediate_size": 256,
            "kv_channels": 32,
            "visual.output_dim": 128,
            "visual.image_size": 112,
        },
        [],
        2400,
        1e-3,
    ),
}


def tiny_standin(name: str, out: Path) -> Path:
    family = get_family(name)
    standin, overrides, *_ = SETUPS[name]
    make_tiny(family, out, real_vocab=False, overrides=overrides)
    model = family.load_model(str(out), dtype=torch.float32)
    standin(model)
    model.save_pretrained(out)
    return out


def grounding_data(out: Path, count: int, seed: int) -> tuple[Path, list[list[int]]]:
    (out / "img").mkdir(parents=True, exist_ok=True)
    boxes = []
    with open(out / "data.jsonl", "w") as f:
        for i in range(count):
            image, shapes = draw_grid_shapes(seed * 100_000 + i, SIZE, GRID, 1)
            image.save(out / "img" / f"{i}.png")
            (shape,) = shapes
            boxes.append(list(shape.box))
            sample = {
                "id": f"s{i}",
                "messages": [
                    {"role": "user", "content": f"<image>Where is the {shape.name}?"},
                    {"role": "assistant", "content": "<bbox>"},
                ],
                "images": [f"img/{i}.png"],
                "objects": {"ref": [], "bbox": [list(shape.box)]},
            }
            f.write(json.dumps(sample) + "\n")
    return out / "data.jsonl", boxes


def accuracy(model: Path, data: Path, out: Path) -> float:
    report = out / f"{model.name}.json"
    args = ["eval", str(model), "--data", str(data), "--dtype", "fp32", "--max-new-tokens", "32"]
    assert main([*args, "--batch-size", "16", "--output", str(report)]) == 0
    return json.loads(report.read_text())["grounding"]["acc@0.5"]


@pytest.mark.parametrize("name", list(SETUPS))
def test_a_tiny_model_learns_to_ground_shapes(tmp_path, name):
    _, _, recipe, steps, lr = SETUPS[name]
    model = tiny_standin(name, tmp_path / "model")
    train, train_boxes = grounding_data(tmp_path / "train", 2400, seed=1)
    held_out, eval_boxes = grounding_data(tmp_path / "eval", 64, seed=2)

    run = tmp_path / "run"
    args = [
        "train",
        str(REPO / f"recipes/tiny/{name}_lora.yaml"),
        f"model.path={model}",
        f"output.dir={run}",
        f"data.train=[{{path: {train}}}]",
        "data.num_workers=0",
        "train.mode=full",
        "train.freeze_merger=true",
        f"train.learning_rate={lr}",
        "train.lr_scheduler=constant_with_warmup",
        f"train.max_steps={steps}",
        "train.per_device_batch_size=8",
        "train.logging_steps=50",
        "train.save_steps=100000",
        *recipe,
    ]
    assert main(args) == 0

    before = accuracy(model, held_out, tmp_path)
    after = accuracy(run, held_out, tmp_path)
    # The best fixed answer: the most frequent training box, scored on the held-out boxes
    # (every box fills its cell, so IoU >= 0.5 means the same cell).
    fixed = max(train_boxes, key=train_boxes.count)
    fixed_acc = sum(b == fixed for b in eval_boxes) / len(eval_boxes)
    print(f"{name}: acc@0.5 untrained {before:.3f}, fixed box {fixed_acc:.3f}, trained {after:.3f}")
    assert before < 0.2 and fixed_acc < 0.25
    assert after >= 0.6 and after >= max(before, fixed_acc) + 0.4
