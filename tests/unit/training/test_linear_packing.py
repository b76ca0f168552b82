"""Packing stays exact through Qwen3.5's Gated DeltaNet layers (models/qwen3_5/packing.py).

The reference is always the stock transformers model run on each sample alone, without position
ids or `sample_index`, so transformers computes positions its own way and its own linear layers
run unchanged; nothing of the packing code takes part in it. Packed rows are built here by hand
(positions from transformers' `get_rope_index`), and through `PackingCollator` at the end.

Tiny models are built directly from transformers' configs: hidden 64, layers [linear, linear,
linear, full], grouped value heads (4 value heads on 2 key heads), a one-block vision tower; fp32.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
)

from qwenvl_ft.data.encode import IGNORE
from qwenvl_ft.models.qwen3_5.packing import isolate_linear_attention

IMAGE, START, END = 100, 98, 99  # tiny vocabulary: image pad, vision start, vision end
TEXT = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    layer_types=["linear_attention"] * 3 + ["full_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.25,
        "mrope_section": [2, 1, 1],  # sums to head_dim * 0.25 / 2
        "mrope_interleaved": True,
    },
)
MOE = dict(moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
LINEAR_LAYERS = 3


def tiny_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    tokens = dict(
        image_token_id=IMAGE, video_token_id=101, vision_start_token_id=START, vision_end_token_id=END
    )
    if kind == "moe":
        config = Qwen3_5MoeConfig(text_config={**TEXT, **MOE}, vision_config=VISION, **tokens)
        model = Qwen3_5MoeForConditionalGeneration(config)
    else:
        config = Qwen3_5Config(text_config=TEXT, vision_config=VISION, **tokens)
        model = Qwen3_5ForConditionalGeneration(config)
    return model.float().eval()


class Sample:
    """input ids with images spliced in as START, grid-sized IMAGE runs, END; random patches."""

    def __init__(self, seed: int, parts: list[int | tuple[int, int]]):
        gen = torch.Generator().manual_seed(seed)
        ids, grids = [], []
        for part in parts:
            if isinstance(part, int):  # that many text tokens
                ids += torch.randint(1, 90, (part,), generator=gen).tolist()
            else:  # an image of (h, w) patches of 16 px: h * w / 4 tokens after the 2x2 merge
                ids += [START] + [IMAGE] * (part[0] * part[1] // 4) + [END]
                grids.append([1, *part])
        self.ids = torch.tensor(ids)
        self.mm = (self.ids == IMAGE).int()
        self.grid = torch.tensor(grids) if grids else None
        patches = sum(h * w for _, h, w in grids)
        self.pixels = torch.randn(patches, 3 * 2 * 16 * 16, generator=gen) if grids else None

    def inputs(self) -> dict:
        out = {"input_ids": self.ids[None], "mm_token_type_ids": self.mm[None], "use_cache": False}
        if self.grid is not None:
            out.update(pixel_values=self.pixels, image_grid_thw=self.grid)
        return out


def samples() -> list[Sample]:
    """Two images in one sample (70 tokens: past a 64-token chunk), text only, one image."""
    return [
        Sample(1, [5, (4, 4), 3, (4, 6), 50]),
        Sample(2, [23]),
        Sample(3, [7, (4, 4), 28]),
    ]


def packed(model, parts: list[Sample]) -> dict:
    """One row: ids side by side, per-sample positions (transformers' own mRoPE rows), sample_index."""
    rope = [model.model.get_rope_index(s.ids[None], s.mm[None], image_grid_thw=s.grid)[0] for s in parts]
    text = torch.cat([torch.arange(len(s.ids)) for s in parts])
    images = [s for s in parts if s.grid is not None]
    return {
        "input_ids": torch.cat([s.ids for s in parts])[None],
        "mm_token_type_ids": torch.cat([s.mm for s in parts])[None],
        "position_ids": torch.cat([text[None, None], torch.cat(rope, dim=2)]),
        "sample_index": torch.cat([torch.full((len(s.ids),), i) for i, s in enumerate(parts)])[None],
        "pixel_values": torch.cat([s.pixels for s in images]),
        "image_grid_thw": torch.cat([s.grid for s in images]),
        "use_cache": False,
    }


def spans(parts: list[Sample]) -> list[slice]:
    out, start = [], 0
    for s in parts:
        out.append(slice(start, start + len(s.ids)))
        start += len(s.ids)
    return out


def sample_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy of one sample's logits (L, V) over its own ids."""
    return F.cross_entropy(logits[:-1], ids[1:], reduction="sum")


def grads(model) -> dict[str, torch.Tensor]:
    return {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()
    }


@pytest.fixture(scope="module", params=["dense", "moe"])
def setup(request):
    """The stock model, each sample's logits / loss / gradients alone, and an isolated copy."""
    model = tiny_model(request.param)
    parts = samples()
    alone = []
    for s in parts:
        model.zero_grad()
        logits = model(**s.inputs()).logits[0]
        loss = sample_loss(logits, s.ids)
        loss.backward()
        alone.append((logits.detach(), loss.detach(), grads(model)))
    model.zero_grad()
    isolated = copy.deepcopy(model)
    assert isolate_linear_attention(isolated) == LINEAR_LAYERS
    return model, isolated, parts, alone


def check_each_sample(model, batch: dict, parts: list[Sample], alone, atol: float = 1e-5) -> None:
    """Every sample's logits, loss and gradients in the packed row equal those it gets alone."""
    for i, (span, s) in enumerate(zip(spans(parts), parts, strict=True)):
        model.zero_grad()
        logits = model(**batch).logits[0, span]
        loss = sample_loss(logits, s.ids)
        loss.backward()
        ref_logits, ref_loss, ref_grads = alone[i]
        torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=1e-4, msg=f"sample {i} logits")
        torch.testing.assert_close(loss, ref_loss, atol=atol * 10, rtol=1e-5, msg=f"sample {i} loss")
        got = grads(model)
        linear = [n for n in got if ".linear_attn." in n]
        assert any(n.endswith("conv1d.weight") for n in linear) and any(n.endswith("A_log") for n in linear)
        for name, g in got.items():  # every parameter, the linear-attention ones included
            torch.testing.assert_close(g, ref_grads[name], atol=atol, rtol=1e-3, msg=f"sample {i}: {name}")
    model.zero_grad()


def wrong_logits(model, batch: dict, parts: list[Sample], alone) -> tuple[float, float]:
    """Fraction of positions after the first sample whose logits differ from alone, and the max diff."""
    with torch.no_grad():
        logits = model(**batch).logits[0]
    diffs = [(logits[span] - ref[0]).abs().amax(-1) for span, ref in zip(spans(parts), alone, strict=True)]
    later = torch.cat(diffs[1:])
    return float((later > 1e-4).float().mean()), float(torch.cat(diffs).max())


def test_packed_row_gives_each_sample_its_own_logits_loss_and_gradients(setup):
    _, isolated, parts, alone = setup
    check_each_sample(isolated, packed(isolated, parts), parts, alone)


def test_a_packer_ignoring_linear_boundaries_fails_the_same_check(setup):
    """The stock layers receive `sample_index` and ignore it: the later samples come out wrong."""
    model, isolated, parts, alone = setup
    batch = packed(model, parts)
    wrong, worst = wrong_logits(model, batch, parts, alone)
    assert wrong > 0.9 and worst > 1e-3, (wrong, worst)
    with pytest.raises(AssertionError, match="sample 1 logits"):
        check_each_sample(model, batch, parts, alone)
    # The first sample starts the row, so only the samples after a boundary are hit.
    with torch.no_grad():
        first = model(**batch).logits[0, spans(parts)[0]]
    torch.testing.assert_close(first, alone[0][0], atol=1e-5, rtol=1e-4)
    assert wrong_logits(isolated, batch, parts, alone)[0] == 0.0


def test_model_loss_of_the_packed_row_is_the_mean_over_samples(setup):
    """The model's own loss on the row (labels ignore each sample's first token) is the token mean."""
    _, isolated, parts, alone = setup
    labels = torch.cat([torch.cat([torch.tensor([IGNORE]), s.ids[1:]]) for s in parts])[None]
    with torch.no_grad():
        loss = isolated(**packed(isolated, parts), labels=labels).loss
    expected = sum(a[1] for a in alone) / sum(len(s.ids) - 1 for s in parts)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)


def test_exact_with_activation_checkpointing(setup):
    """Checkpointing re-runs each decoder layer in backward with its kwargs: sample_index included."""
    _, isolated, parts, alone = setup
    model = copy.deepcopy(isolated)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    calls = []
    for module in model.modules():
        if type(module).__name__.startswith("Packed"):
            module.register_forward_pre_hook(
                lambda m, args, kwargs: calls.append(kwargs.get("sample_index") is not None), with_kwargs=True
            )
    check_each_sample(model, packed(model, parts), parts, alone)
    # forward + recomputation in backward, for each of the 3 samples' steps: all with the index.
    assert calls == [True] * (2 * LINEAR_LAYERS * len(parts))


def test_cached_generation_is_unchanged_by_isolation(setup):
    model, isolated, parts, _ = setup
    for s in (parts[1], parts[2]):  # text only; with an image
        inputs = {k: v for k, v in s.inputs().items() if k != "use_cache"}
        kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
        before = model.generate(**inputs, **kwargs)
        after = isolated.generate(**inputs, **kwargs)
        assert after.shape[1] == len(s.ids) + 12
        assert torch.equal(before, after)


def test_packed_batch_with_a_cache_is_refused(setup):
    _, isolated, parts, _ = setup
    batch = {**packed(isolated, parts[:2]), "use_cache": True}
    with pytest.raises(ValueError, match="cannot run with a cache"):
        isolated(**batch)
