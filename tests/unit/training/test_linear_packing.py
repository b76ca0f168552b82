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
from family_facts import by_architecture
from PIL import Image
from transformers import (
    AutoConfig,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
)

from qwenvl_ft.data.collate import PaddingCollator
from qwenvl_ft.data.conversation import Conversation, Segment, Turn
from qwenvl_ft.data.encode import IGNORE, Encoded, encode
from qwenvl_ft.data.packing import PackedDataset, PackingCollator
from qwenvl_ft.models import FAMILIES, get_family
from qwenvl_ft.models.qwen3_5.packing import Kernels, installed_kernels, isolate_linear_attention

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


def build_model(kind: str) -> torch.nn.Module:
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
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.mm = (self.ids == IMAGE).int()
        self.grid = torch.tensor(grids) if grids else None
        patches = sum(h * w for _, h, w in grids)
        self.pixels = torch.randn(patches, 3 * 2 * 16 * 16, generator=gen) if grids else None

    @classmethod
    def padding(cls, n: int) -> Sample:
        """The dummy sample that pads a shorter row: pad tokens with their own positions and index."""
        pad = cls(0, [])
        pad.ids, pad.mm = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.int)
        return pad

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


def packed(model, rows: list[list[Sample]]) -> tuple[dict, list[tuple[int, slice]]]:
    """Rows of samples side by side, each with its own positions (transformers' own mRoPE rows)
    and `sample_index`; a shorter row ends with a dummy sample of pad tokens, as the collator
    pads. Returns the batch and where each real sample sits, in order: (row, span)."""
    longest = max(sum(len(s.ids) for s in row) for row in rows)
    ids, mm, pos, index, where = [], [], [], [], []
    for r, row in enumerate(rows):
        pad = longest - sum(len(s.ids) for s in row)
        parts = [*row, Sample.padding(pad)] if pad else row
        rope = [model.model.get_rope_index(s.ids[None], s.mm[None], image_grid_thw=s.grid)[0] for s in parts]
        text = torch.cat([torch.arange(len(s.ids)) for s in parts])
        pos.append(torch.cat([text[None, None], torch.cat(rope, dim=2)]))
        ids.append(torch.cat([s.ids for s in parts]))
        mm.append(torch.cat([s.mm for s in parts]))
        index.append(torch.cat([torch.full((len(s.ids),), i) for i, s in enumerate(parts)]))
        start = 0
        for s in row:
            where.append((r, slice(start, start + len(s.ids))))
            start += len(s.ids)
    images = [s for row in rows for s in row if s.grid is not None]
    batch = {
        "input_ids": torch.stack(ids),
        "mm_token_type_ids": torch.stack(mm),
        "position_ids": torch.cat(pos, dim=1),
        "sample_index": torch.stack(index),
        "pixel_values": torch.cat([s.pixels for s in images]),
        "image_grid_thw": torch.cat([s.grid for s in images]),
        "use_cache": False,
    }
    return batch, where


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
    model = build_model(request.param)
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


def check_each_sample(model, batch: dict, where, parts: list[Sample], alone, atol: float = 1e-5) -> None:
    """Every sample's logits, loss and gradients in the packed rows equal those it gets alone."""
    for i, ((row, span), s) in enumerate(zip(where, parts, strict=True)):
        model.zero_grad()
        logits = model(**batch).logits[row, span]
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


def wrong_logits(model, batch: dict, where, alone) -> tuple[float, float]:
    """Fraction of positions after the first sample whose logits differ from alone, and the max diff."""
    with torch.no_grad():
        logits = model(**batch).logits
    diffs = [(logits[r, span] - ref[0]).abs().amax(-1) for (r, span), ref in zip(where, alone, strict=True)]
    later = torch.cat(diffs[1:])
    return float((later > 1e-4).float().mean()), float(torch.cat(diffs).max())


# -- the torch path (CPU, or GPU without the kernels) ------------------------------------------


def test_packed_row_gives_each_sample_its_own_logits_loss_and_gradients(setup):
    _, isolated, parts, alone = setup
    check_each_sample(isolated, *packed(isolated, [parts]), parts, alone)


def test_two_rows_with_padding(setup):
    """Rows flattened together: a row boundary and the padding sample are boundaries too."""
    _, isolated, parts, alone = setup
    check_each_sample(
        isolated, *packed(isolated, [parts[1:], parts[:1]]), [*parts[1:], parts[0]], [*alone[1:], alone[0]]
    )


def test_a_packer_ignoring_linear_boundaries_fails_the_same_check(setup):
    """The stock layers receive `sample_index` and ignore it: the later samples come out wrong."""
    model, isolated, parts, alone = setup
    batch, where = packed(model, [parts])
    wrong, worst = wrong_logits(model, batch, where, alone)
    assert wrong > 0.9 and worst > 1e-3, (wrong, worst)
    with pytest.raises(AssertionError, match="sample 1 logits"):
        check_each_sample(model, batch, where, parts, alone)
    # The first sample starts the row, so only the samples after a boundary are hit.
    with torch.no_grad():
        first = model(**batch).logits[0, where[0][1]]
    torch.testing.assert_close(first, alone[0][0], atol=1e-5, rtol=1e-4)
    wrong, worst = wrong_logits(isolated, batch, where, alone)
    assert wrong == 0.0 and worst < 1e-5, (wrong, worst)


def test_model_loss_of_the_packed_row_is_the_mean_over_samples(setup):
    """The model's own loss on the row (labels ignore each sample's first token) is the token mean."""
    _, isolated, parts, alone = setup
    labels = torch.cat([torch.cat([torch.tensor([IGNORE]), s.ids[1:]]) for s in parts])[None]
    with torch.no_grad():
        loss = isolated(**packed(isolated, [parts])[0], labels=labels).loss
    expected = sum(a[1] for a in alone) / sum(len(s.ids) - 1 for s in parts)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)


def test_exact_with_activation_checkpointing(setup):
    """Checkpointing re-runs each decoder layer in backward with its kwargs: sample_index included."""
    _, isolated, parts, alone = setup
    model = copy.deepcopy(isolated)
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    calls = []
    for module in model.modules():
        if type(module).__name__.startswith("Packed"):
            module.register_forward_pre_hook(
                lambda m, args, kwargs: calls.append(kwargs.get("sample_index") is not None), with_kwargs=True
            )
    check_each_sample(model, *packed(model, [parts]), parts, alone)
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
    batch = {**packed(isolated, [parts[:2]])[0], "use_cache": True}
    with pytest.raises(ValueError, match="cannot run with a cache"):
        isolated(**batch)


def test_a_model_without_linear_attention_is_refused():
    with pytest.raises(ValueError, match="no Gated DeltaNet layers"):
        isolate_linear_attention(torch.nn.Linear(2, 2))


# -- the kernel path, proven on CPU with reference kernels of the same signatures ---------------

CALLS = {"conv": 0, "delta_rule": 0}


def reference_conv(
    x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
    final_states_out=None, activation=None,
):  # fmt: skip
    """causal-conv1d's `causal_conv1d_fn` contract: x (batch, dim, seqlen), weight (dim, width),
    seq_idx (batch, seqlen) int32, only with the channel-last layout; a tap never reads a token
    of another seq_idx."""
    assert seq_idx is not None and seq_idx.dtype == torch.int32 and seq_idx.is_contiguous()
    assert x.stride(1) == 1, "causal-conv1d takes seq_idx only with channels last"
    assert seq_idx.shape == (x.shape[0], x.shape[2]) and weight.shape[0] == x.shape[1]
    assert initial_states is None and not return_final_states
    CALLS["conv"] += 1
    length, width = x.shape[2], weight.shape[1]
    out = torch.zeros_like(x) if bias is None else bias[:, None].expand_as(x)
    for back in range(width):  # the tap that reads the token `back` steps earlier
        earlier = F.pad(x, (back, 0))[..., :length]
        same = F.pad(seq_idx, (back, 0), value=-1)[..., :length] == seq_idx
        out = out + weight[:, width - 1 - back, None] * earlier * same[:, None]
    return F.silu(out) if activation in ("silu", "swish") else out


def reference_delta_rule(
    q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
    use_qk_l2norm_in_kernel=False, cu_seqlens=None, **kwargs,
):  # fmt: skip
    """fla's `chunk_gated_delta_rule` contract, token by token: q, k (B, T, H, K), v (B, T, HV, V),
    g, beta (B, T, HV); with cu_seqlens the batch must be 1 and every sequence starts from a zero
    state: S <- exp(g) S;  S <- S + k (beta (v - k.S));  o = scale q.S."""
    assert cu_seqlens is not None and q.shape[0] == 1, "fla's varlen mode takes batch 1"
    assert cu_seqlens.dtype == torch.long and cu_seqlens[0] == 0 and cu_seqlens[-1] == q.shape[1]
    assert initial_state is None and not output_final_state
    CALLS["delta_rule"] += 1
    groups = v.shape[2] // q.shape[2]
    q, k = (t[0].float().repeat_interleave(groups, dim=1) for t in (q, k))
    if use_qk_l2norm_in_kernel:
        q, k = (t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-6) for t in (q, k))
    q = q * (scale or q.shape[-1] ** -0.5)
    v, g, beta = v[0].float(), g[0].float(), beta[0].float()
    out = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        state = q.new_zeros(v.shape[1], q.shape[-1], v.shape[-1])  # (HV, K, V)
        for t in range(start, end):
            state = state * g[t].exp()[:, None, None]
            delta = beta[t][:, None] * (v[t] - torch.einsum("hk,hkv->hv", k[t], state))
            state = state + k[t][:, :, None] * delta[:, None, :]
            out.append(torch.einsum("hk,hkv->hv", q[t], state))
    return torch.stack(out)[None].to(v.dtype), None


def ignoring_seq_idx(x, weight, bias=None, seq_idx=None, **kwargs):
    return reference_conv(x, weight, bias, seq_idx=torch.zeros_like(seq_idx), **kwargs)


def ignoring_cu_seqlens(q, k, v, g, beta, cu_seqlens=None, **kwargs):
    whole = torch.tensor([0, q.shape[1]])
    return reference_delta_rule(q, k, v, g, beta, cu_seqlens=whole, **kwargs)


@pytest.mark.parametrize(
    "conv, delta_rule",
    [(reference_conv, reference_delta_rule), (reference_conv, None), (None, reference_delta_rule)],
    ids=["both", "causal-conv1d only", "fla only"],
)
def test_kernel_path_is_exact_with_one_call_per_layer(setup, conv, delta_rule):
    """The flattening, seq_idx and cu_seqlens handed to the kernels, over two rows with padding."""
    model, _, parts, alone = setup
    model = copy.deepcopy(model)
    isolate_linear_attention(model, Kernels(conv, delta_rule, device_types=("cpu",)))
    batch, where = packed(model, [parts[1:], parts[:1]])
    CALLS.update(conv=0, delta_rule=0)
    with torch.no_grad():
        model(**batch)
    assert CALLS == {"conv": LINEAR_LAYERS * bool(conv), "delta_rule": LINEAR_LAYERS * bool(delta_rule)}
    check_each_sample(model, batch, where, [*parts[1:], parts[0]], [*alone[1:], alone[0]])


@pytest.mark.parametrize(
    "conv, delta_rule", [(ignoring_seq_idx, None), (None, ignoring_cu_seqlens)], ids=["conv", "delta rule"]
)
def test_a_kernel_ignoring_boundaries_fails_the_check(setup, conv, delta_rule):
    """Either half alone leaks: the kernel-path check can fail."""
    model, _, parts, alone = setup
    model = copy.deepcopy(model)
    isolate_linear_attention(model, Kernels(conv, delta_rule, device_types=("cpu",)))
    batch, where = packed(model, [parts])
    assert wrong_logits(model, batch, where, alone)[1] > 1e-4
    with pytest.raises(AssertionError, match="sample 1 logits"):
        check_each_sample(model, batch, where, parts, alone)


@pytest.mark.gpu
def test_real_kernels_on_gpu(setup):
    """flash-linear-attention (and causal-conv1d where installed) on CUDA against each sample alone,
    where the stock layers run the same kernels one sample at a time."""
    kernels = installed_kernels()
    if kernels.delta_rule is None:
        pytest.skip("flash-linear-attention is not installed")
    model = copy.deepcopy(setup[0]).cuda()
    parts = samples()  # fresh ones: these move to the GPU

    def cuda(inputs: dict) -> dict:
        return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    alone = []
    for s in parts:
        model.zero_grad()
        logits = model(**cuda(s.inputs())).logits[0]
        loss = sample_loss(logits, s.ids.cuda())
        loss.backward()
        alone.append((logits.detach(), loss.detach(), grads(model)))
    isolate_linear_attention(model)
    batch, where = packed(model, [parts[1:], parts[:1]])
    for s in parts:
        s.ids = s.ids.cuda()
    # Triton's fp32 dots run in TF32: agreement to TF32 rounding, not to 1e-5.
    check_each_sample(model, cuda(batch), where, [*parts[1:], parts[0]], [*alone[1:], alone[0]], atol=1e-3)


# -- the collator ------------------------------------------------------------------------------


def encoded(n: int) -> Encoded:
    return Encoded(list(range(1, n + 1)), list(range(1, n + 1)), [0] * n, None, None)


def test_collator_numbers_the_samples_of_each_row():
    rows = [
        [(e, torch.arange(len(e.input_ids)).expand(3, -1)) for e in (encoded(3), encoded(2))],
        [(e, torch.arange(len(e.input_ids)).expand(3, -1)) for e in (encoded(2),)],
    ]
    batch = PackingCollator(pad_token_id=0)(rows)
    assert batch["sample_index"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]  # row 2: a pad sample
    assert batch["input_ids"].tolist() == [[1, 2, 3, 1, 2], [1, 2, 0, 0, 0]]


LINEAR_STATE = by_architecture(
    [n for n, f in FAMILIES.items() if f.packing_isolation == "positions+linear_state"]
)


@pytest.mark.parametrize("name", LINEAR_STATE)
def test_packed_dataset_and_collator_end_to_end(name, tiny_model):
    """Real encoded samples through PackedDataset and PackingCollator, on the family's tiny model."""
    family = get_family(name)
    path = str(tiny_model(name))
    processor = family.load_processor(path)
    red = Image.new("RGB", (64, 48), (200, 30, 30))
    blue = Image.new("RGB", (40, 72), (20, 40, 220))

    def chat(question, answer, images=()):
        user = [*(Segment("image", im) for im in images), Segment("text", question)]
        turns = [Turn("user", user), Turn("assistant", [Segment("text", answer)])]
        return encode(Conversation(question, turns), processor, list(images), "all_assistant")

    encs = [
        chat("Compare them.", "The first is red, the second blue.", (red, blue)),
        chat("Say hello in French.", "Bonjour !"),
        chat("What colour?", "Blue.", (blue,)),
    ]

    class Encodings(list):  # what PackedDataset reads of an SFTDataset
        def lengths(self):
            return [len(e.input_ids) for e in self]

    config = AutoConfig.from_pretrained(path)
    rows = PackedDataset(Encodings(encs), sum(Encodings(encs).lengths()), 0, family, config)
    assert len(rows) == 1
    batch = PackingCollator(processor.tokenizer.pad_token_id)([rows[0]])
    order = [next(i for i, e in enumerate(encs) if e is enc) for enc, _ in rows[0]]
    batch.pop("labels")
    stock = family.load_model(path, dtype=torch.float32).eval()
    isolated = family.load_model(path, dtype=torch.float32).eval()
    family.isolate_packed_samples(isolated)
    with torch.no_grad():
        got, leaked = isolated(**batch).logits[0], stock(**batch).logits[0]
        start = 0
        for i in order:
            single = PaddingCollator(pad_token_id=0, pad_to_multiple_of=None)([encs[i]])
            single.pop("labels")
            alone = stock(**single, use_cache=False).logits[0]
            span = slice(start, start + len(encs[i].input_ids))
            torch.testing.assert_close(got[span], alone, atol=2e-5, rtol=1e-4)
            if start:  # after a boundary the stock layers leak
                assert (leaked[span] - alone).abs().max() > 1e-4
            start = span.stop
