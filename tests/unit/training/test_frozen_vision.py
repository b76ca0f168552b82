"""A frozen vision tower stays out of backward when checkpointing / PEFT hook the input embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
from family_facts import need, registered
from PIL import Image

from qwenvl_ft.config import load_recipe
from qwenvl_ft.data.collate import PaddingCollator
from qwenvl_ft.data.conversation import Conversation, Segment, Turn
from qwenvl_ft.data.encode import encode
from qwenvl_ft.models import get_family
from qwenvl_ft.training.setup import adapt, load_model

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("family_name", registered())
def test_frozen_vision_records_no_graph(tiny_model, family_name):
    family = get_family(family_name)
    first = need(family_name, "vision_input").vision_input
    path = tiny_model(family_name)
    cfg = load_recipe(
        REPO / f"recipes/tiny/{family_name}_lora.yaml",
        [f"model.path={path}", "model.dtype=fp32", "train.gradient_checkpointing=true"],
    )
    model = adapt(load_model(cfg, family), cfg, family, is_base=False)
    model.get_base_model().activation_checkpointing_enable()  # what the Trainer does at start
    base = model.get_base_model()
    seen = {}
    patches = base.get_submodule(f"{family.paths.vision}.{first}")
    patches.register_forward_hook(lambda m, i, o: seen.setdefault("vision", o))
    base.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.setdefault("text", o))
    model.train()
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    conv = Conversation(
        "v", [Turn("user", [Segment("image", image), Segment("text", "Colour?")]), Turn("assistant", [])]
    )
    processor = family.load_processor(str(path))
    batch = PaddingCollator(processor.tokenizer.pad_token_id)([encode(conv, processor, [image])])
    batch.pop("labels")
    model(**batch)
    assert not seen["vision"].requires_grad  # the patch embedding starts no graph through the frozen ViT
    assert seen["text"].requires_grad  # the checkpointed decoder still gets an input that requires grad
