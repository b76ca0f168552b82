"""A frozen vision tower stays out of backward when checkpointing / PEFT hook the input embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qwenvl_ft.config import load_recipe
from qwenvl_ft.models import get_family
from qwenvl_ft.training.setup import adapt, load_model

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("family_name", ["qwen2_5_vl", "qwen2_vl"])
def test_frozen_vision_records_no_graph(tiny_model, family_name):
    family = get_family(family_name)
    path = tiny_model(family_name)
    cfg = load_recipe(
        REPO / f"recipes/tiny/{family_name}_lora.yaml",
        [f"model.path={path}", "model.dtype=fp32", "train.gradient_checkpointing=true"],
    )
    model = adapt(load_model(cfg, family), cfg, family, is_base=False)
    model.get_base_model().activation_checkpointing_enable()  # what the Trainer does at start
    base = model.get_base_model()
    seen = {}
    patches = base.get_submodule(family.paths.vision).patch_embed
    patches.register_forward_hook(lambda m, i, o: seen.setdefault("vision", o))
    base.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.setdefault("text", o))
    model.train()
    pixels = torch.randn(16, 3 * 2 * 14 * 14)
    ids = torch.tensor([[151644, 872, 198] + [family_image_pad(base)] * 4 + [151645]])
    model(
        input_ids=ids,
        pixel_values=pixels,
        image_grid_thw=torch.tensor([[1, 4, 4]]),
        mm_token_type_ids=(ids == family_image_pad(base)).long(),
    )
    assert not seen["vision"].requires_grad  # the patch embedding starts no graph through the frozen ViT
    assert seen["text"].requires_grad  # the checkpointed decoder still gets an input that requires grad


def family_image_pad(model) -> int:
    return model.config.image_token_id
