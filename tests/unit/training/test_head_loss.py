"""The loss computed inside lm_head (train.loss: chunked) equals the model's own loss, gradients
included, through PEFT's modules_to_save copy of lm_head and on packed rows."""

from __future__ import annotations

import pytest
import torch
from family_facts import by_architecture, registered

from qwenvl_ft.data.collate import PaddingCollator
from qwenvl_ft.data.conversation import Conversation, Segment, Turn
from qwenvl_ft.data.encode import encode
from qwenvl_ft.models import get_family
from qwenvl_ft.training.loss import loss_in_head


def batch_for(processor):
    from PIL import Image

    convs = [
        Conversation(
            "a",
            [
                Turn(
                    "user",
                    [Segment("image", Image.new("RGB", (64, 48), (9, 200, 30))), Segment("text", "Colour?")],
                ),
                Turn("assistant", [Segment("text", "Green.")]),
            ],
        ),
        Conversation(
            "b",
            [
                Turn("user", [Segment("text", "Count to three.")]),
                Turn("assistant", [Segment("text", "One, two, three.")]),
            ],
        ),
    ]
    encs = [
        encode(c, processor, [s.value for t in c.turns for s in t.segments if s.kind == "image"])
        for c in convs
    ]
    return {**PaddingCollator(processor.tokenizer.pad_token_id)(encs), "use_cache": False}


@pytest.mark.parametrize("family_name", by_architecture(registered()))
def test_head_loss_equals_the_model_loss_with_gradients(tiny_model, family_name):
    from peft import LoraConfig, get_peft_model

    family = get_family(family_name)
    path = str(tiny_model(family_name))
    processor = family.load_processor(path)
    model = family.load_model(path, dtype=torch.float32)
    # modules_to_save wraps lm_head: the loss must use the trained copy, and train it.
    model = get_peft_model(
        model,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=family.lora_target_regex, modules_to_save=[family.paths.lm_head]
        ),
    )
    model.train()
    batch = batch_for(processor)

    def step(fused: bool):
        model.zero_grad()
        if fused:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with loss_in_head(model.get_base_model().get_output_embeddings(), batch["labels"]):
                loss = model(**inputs).logits.reshape(())
        else:
            loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_loss, ref_grads = step(fused=False)
    loss, grads = step(fused=True)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    assert any("modules_to_save" in n and "lm_head" in n for n in grads)
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n], atol=1e-6, rtol=1e-4, msg=n)
    # The patch is gone afterwards: lm_head gives logits again.
    assert model(**batch).logits.shape[-1] == model.get_base_model().config.get_text_config().vocab_size


def test_lora_on_lm_head_is_refused(tiny_model):
    from peft import LoraConfig, get_peft_model

    family = get_family("qwen2_5_vl")
    model = get_peft_model(
        family.load_model(str(tiny_model("qwen2_5_vl")), dtype=torch.float32),
        LoraConfig(r=4, target_modules=["lm_head"]),
    )
    with pytest.raises(ValueError, match="lm_head carries LoRA; set train.loss: standard"):
        with loss_in_head(
            model.get_base_model().get_output_embeddings(), torch.zeros(1, 3, dtype=torch.long)
        ):
            pass
