"""Dummy vision calls run inside the forward, where real ones would, so ZeRO-3 / FSDP gathers match.

Under ZeRO-3 a rank whose batch lacks images or videos must still call the vision tower as often as
a rank whose batch has them, and in the same place: after the model's forward starts (DeepSpeed's
start-of-forward hook is a collective) and before the first decoder layer. Calling it before the
forward deadlocked two ranks (one in the start hook's broadcast, one in a patch-embed all-gather).
"""

from __future__ import annotations

import pytest
import torch
from family_facts import need, registered
from PIL import Image
from transformers import TrainingArguments

from qwenvl_ft.data.collate import PaddingCollator
from qwenvl_ft.data.conversation import Conversation, Segment, Turn
from qwenvl_ft.data.encode import encode
from qwenvl_ft.models import get_family
from qwenvl_ft.training.trainer import VLTrainer


@pytest.fixture(scope="module", params=registered())
def setup(request, tiny_model, tmp_path_factory):
    family = get_family(request.param)
    layer = need(request.param, "first_decoder_layer").first_decoder_layer
    kinds = 1 if family.video is None else 2  # media kinds: images, and videos where the family takes them
    path = str(tiny_model(request.param))
    model = family.load_model(path, dtype=torch.float32).train()
    calls: list[str] = []
    model.register_forward_pre_hook(lambda *_: calls.append("forward"))
    model.get_submodule(family.paths.vision).register_forward_pre_hook(lambda *_: calls.append("vision"))
    model.get_submodule(layer).register_forward_pre_hook(lambda *_: calls.append("layer"))
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("t")), report_to=[], use_cpu=True)
    trainer = VLTrainer(
        model=model, args=args, family=family, vision_lr=None, merger_lr=None, media_kinds=kinds
    )
    processor = family.load_processor(path)
    return family, model, processor, trainer, calls, kinds


def batch(processor, image: bool) -> dict[str, torch.Tensor]:
    red = Image.new("RGB", (84, 56), (200, 30, 30))
    user = [Segment("image", red)] if image else []
    conv = Conversation(
        "s",
        [
            Turn("user", [*user, Segment("text", "What colour?")]),
            Turn("assistant", [Segment("text", "Red.")]),
        ],
    )
    enc = encode(conv, processor, [red] if image else [], "all_assistant")
    return PaddingCollator(pad_token_id=0)([enc])


def test_text_batch_calls_vision_once_per_kind_inside_the_forward(setup):
    family, model, processor, trainer, calls, kinds = setup
    inputs = batch(processor, image=False)
    with torch.no_grad():
        plain = model(**inputs).loss
    calls.clear()
    loss = trainer.compute_loss(model, inputs)
    assert calls == ["forward"] + ["vision"] * kinds + ["layer"]
    torch.testing.assert_close(loss, plain, rtol=0, atol=0)  # the dummies add exactly zero
    model.zero_grad()
    loss.backward()
    vision = model.get_submodule(family.paths.vision)
    grads = [p.grad for p in vision.parameters()]
    assert all(g is not None and not g.any() for g in grads)  # reached, with zero gradient


def test_a_real_image_counts_and_comes_first(setup):
    family, model, processor, trainer, calls, kinds = setup
    inputs = batch(processor, image=True)
    calls.clear()
    trainer.compute_loss(model, inputs)
    assert calls == ["forward"] + ["vision"] * kinds + ["layer"]


def test_no_dummy_outside_the_trainers_forward(setup):
    """Generation and plain calls after a step run no dummy: the count is spent by one forward."""
    family, model, processor, trainer, calls, kinds = setup
    inputs = batch(processor, image=False)
    trainer.compute_loss(model, inputs)
    calls.clear()
    with torch.no_grad():
        model(**inputs)
    assert calls == ["forward", "layer"]
