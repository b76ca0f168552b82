"""Packing is exact: a packed row gives each sample the logits, loss and gradients it gets alone.

The reference is the model itself run on each sample separately with no position ids, so
transformers (or the first-generation model) computes the positions its own way; nothing of the
packing code takes part in it. Every registered family runs: those whose packing isolation goes
beyond positions ("positions+linear_state") pack on a copy with `isolate_packed_samples` installed,
as training does, and are compared with an untouched copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from family_facts import by_architecture, registered
from PIL import Image

from qwenvl_ft.data.collate import PaddingCollator
from qwenvl_ft.data.conversation import Box, Conversation, Segment, Turn
from qwenvl_ft.data.encode import IGNORE, encode
from qwenvl_ft.data.packing import PackingCollator
from qwenvl_ft.models import ModelFamily, get_family


def conversations() -> list[tuple[Conversation, list[Image.Image]]]:
    """Three samples: two images in one turn plus a follow-up turn; text only; one image with a box."""
    red = Image.new("RGB", (120, 90), (200, 30, 30))
    noise = Image.fromarray(
        torch.randint(0, 255, (70, 140, 3), generator=torch.Generator().manual_seed(0))
        .to(torch.uint8)
        .numpy()
    )
    blue = Image.new("RGB", (64, 96), (20, 40, 220))
    two = Conversation(
        "two-images",
        [
            Turn("user", [Segment("image", red), Segment("image", noise), Segment("text", "Compare them.")]),
            Turn("assistant", [Segment("text", "The first is red, the second is noise.")]),
            Turn("user", [Segment("text", "Which is brighter?")]),
            Turn("assistant", [Segment("text", "The red one.")]),
        ],
    )
    text = Conversation(
        "text-only",
        [
            Turn("user", [Segment("text", "Say hello in French.")]),
            Turn("assistant", [Segment("text", "Bonjour !")]),
        ],
    )
    box = Conversation(
        "box",
        [
            Turn("user", [Segment("image", blue), Segment("text", "Where is the blue area?")]),
            Turn("assistant", [Segment("ref", "blue area"), Segment("box", Box(4, 8, 60, 90))]),
        ],
    )
    return [(two, [red, noise]), (text, []), (box, [blue])]


def video_encoding(processor, tmp_dir):
    """A sample with an image and a 4-frame video (2 temporal patches): time in the positions
    (Qwen2.5-VL) or in the text (Qwen3-VL) must survive packing too."""
    pytest.importorskip("av")
    from qwenvl_ft.config import VideoConfig
    from qwenvl_ft.data.clips import load_clip, plan_clip
    from qwenvl_ft.data.synthetic import moving_square_video

    processor.video_config = VideoConfig(num_frames=4, min_pixels=3136, max_pixels=4096)
    clip = load_clip(
        plan_clip(moving_square_video(str(tmp_dir / "v.mp4"), frames=16, fps=4), processor), processor
    )
    green = Image.new("RGB", (56, 84), (30, 200, 30))
    conv = Conversation(
        "video",
        [
            Turn(
                "user", [Segment("image", green), Segment("video", clip.path), Segment("text", "What moves?")]
            ),
            Turn("assistant", [Segment("text", "A red square, left to right.")]),
        ],
    )
    return encode(conv, processor, [green], "all_assistant", [clip])


@pytest.fixture(scope="module", params=by_architecture(registered()))
def setup(request, tiny_model, tmp_path_factory):
    from transformers import AutoConfig

    family = get_family(request.param)
    path = tiny_model(request.param)
    processor = family.load_processor(str(path))
    model = family.load_model(str(path), dtype=torch.float32, attn_implementation="sdpa").eval()
    reference = model
    if family.packing_isolation != "positions":  # the reference stays the plain model
        reference = family.load_model(str(path), dtype=torch.float32, attn_implementation="sdpa").eval()
        family.isolate_packed_samples(model)
    config = AutoConfig.from_pretrained(path)
    encs = [encode(c, processor, images, "all_assistant") for c, images in conversations()]
    if family.video is not None:
        encs.insert(1, video_encoding(processor, tmp_path_factory.mktemp("video")))
    packed = [
        (
            e,
            family.position_ids(
                config,
                torch.tensor(e.input_ids),
                torch.tensor(e.mm_token_type_ids),
                image_grid_thw=e.image_grid_thw,
                video_grid_thw=e.video_grid_thw,
                second_per_grid_ts=e.second_per_grid_ts,
            ),
        )
        for e in encs
    ]
    return Setup(family, model, reference, processor, encs, packed)


@dataclass
class Setup:
    family: ModelFamily
    model: torch.nn.Module
    """What packed rows run through: `reference`, plus the family's packing isolation if it needs one."""
    reference: torch.nn.Module
    """The plain model: each sample alone, and the padded batch."""
    processor: object
    encs: list
    packed: list


def single(model, enc) -> torch.Tensor:
    batch = PaddingCollator(pad_token_id=0, pad_to_multiple_of=None)([enc])
    batch.pop("labels")
    return model(**batch, use_cache=False).logits[0]


def test_packed_row_gives_each_sample_its_own_logits(setup):
    model, reference, processor = setup.model, setup.reference, setup.processor
    encs, packed = setup.encs, setup.packed
    batch = PackingCollator(pad_token_id=processor.tokenizer.pad_token_id)([packed])
    assert "attention_mask" not in batch
    n = [len(e.input_ids) for e in encs]
    assert batch["input_ids"].shape == (1, sum(n))
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[
            0
        ]  # the batch says use_cache
        start = 0
        for e, length in zip(encs, n, strict=True):
            alone = single(reference, e)
            torch.testing.assert_close(logits[start : start + length], alone, atol=2e-5, rtol=1e-4)
            start += length


def test_wrong_positions_would_be_caught(setup):
    """The same row with plain 0..n positions per sample (what a naive packer writes) must differ."""
    model, processor, encs, packed = setup.model, setup.processor, setup.encs, setup.packed
    rows = packed[0][1].shape[0]
    if rows == 1:
        pytest.skip("1-D rotary: per-sample 0..n positions are the right ones")
    naive = [(e, torch.arange(len(e.input_ids)).expand(rows, -1)) for e, _ in packed]
    batch = PackingCollator(pad_token_id=processor.tokenizer.pad_token_id)([naive])
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        alone = single(setup.reference, encs[0])
    assert (logits[: len(encs[0].input_ids)] - alone).abs().max() > 1e-3


def test_ignoring_linear_attention_boundaries_would_be_caught(setup):
    """Linear-attention families: the same row through the plain model, whose layers ignore
    `sample_index` (what a packer without isolation gets), must differ after the first sample."""
    if setup.family.packing_isolation == "positions":
        pytest.skip("no state beyond attention: positions alone keep the samples apart")
    encs = setup.encs
    batch = PackingCollator(pad_token_id=setup.processor.tokenizer.pad_token_id)([setup.packed])
    start = len(encs[0].input_ids)
    with torch.no_grad():
        logits = setup.reference(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        second = single(setup.reference, encs[1])
    assert (logits[start : start + len(encs[1].input_ids)] - second).abs().max() > 1e-3


def test_packed_loss_and_gradients_equal_the_padded_batch(setup):
    model, reference, processor = setup.model, setup.reference, setup.processor
    encs, packed = setup.encs, setup.packed
    pad = processor.tokenizer.pad_token_id
    padded = {**PaddingCollator(pad_token_id=pad)(encs), "use_cache": False}
    rows = PackingCollator(pad_token_id=pad)([packed[:2], packed[2:]])  # two rows: padding between rows
    assert rows["input_ids"].shape[0] == 2

    # The loss both give is the mean over the same supervised tokens: check the count independently.
    supervised = sum(sum(1 for t in e.labels[1:] if t != IGNORE) for e in encs)
    assert int((padded["labels"][:, 1:] != IGNORE).sum()) == supervised
    assert int((rows["labels"][:, 1:] != IGNORE).sum()) == supervised

    def loss_and_grads(net, batch):
        net.zero_grad()
        loss = net(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    model.train(), reference.train()
    try:
        ref_loss, ref_grads = loss_and_grads(reference, padded)
        loss, grads = loss_and_grads(model, rows)
    finally:
        model.eval(), reference.eval()
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-3, msg=name)

    # And the mean itself, from per-sample logits computed alone.
    with torch.no_grad():
        total = 0.0
        for e in encs:
            logits = single(reference, e)
            labels = torch.tensor(e.labels)
            total += F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE, reduction="sum")
    torch.testing.assert_close(ref_loss, total / supervised, atol=1e-5, rtol=1e-5)
