"""Packed rows stay exact through Gated DeltaNet (linear-attention) layers.

A packed row keeps attention inside each sample through positions that restart at 0 (see
`qwenvl_ft.data.packing`). Gated DeltaNet layers never see positions: their short causal
convolution and their recurrent delta-rule state run along the row, from one sample into the next.
What transformers 5.24's `Qwen3_5GatedDeltaNet.forward` (and the MoE copy) does on each path:

- nothing said about boundaries (a plain packed batch): on every path, CPU torch fallback and GPU
  kernels alike, the conv and the state cross samples. Silently wrong: on the tiny models of
  tests/unit/training/test_linear_packing.py every position after the first boundary has wrong
  logits (max difference 0.063 dense, 0.070 MoE; 2.5e-7 once isolated).
- `cu_seq_lens_q` in the kwargs: only the delta rule gets it (as `cu_seqlens`). Without
  flash-linear-attention the wrapper raises "can't keep packed sequences apart"; with it, fla's
  varlen mode needs batch 1 and raises for more rows. The conv never gets it: the kwargs reaching
  `causal_conv1d_fn` are filtered to its parameters, and only `seq_idx`, which transformers never
  builds, keeps samples apart there (and raises without causal-conv1d). So even with both
  libraries installed the conv crosses samples.

`isolate_linear_attention(model)` gives every such layer a forward that takes `sample_index`
(rows, tokens): which sample of its row each token belongs to, written by `PackingCollator` into
every packed batch. It travels in the model's forward kwargs down to the layer (the vision tower
and the full-attention layers receive and ignore it), so activation checkpointing, which re-runs
the decoder layer with the same kwargs, replays it too. Without `sample_index` (unpacked batches,
generation with a cache) the stock forward runs untouched; a row holding a single sample does too.

Paths, each exact by construction (every sample computes what it computes alone):
- conv, causal-conv1d installed and tensors on CUDA: one `causal_conv1d_fn` call over the rows
  flattened to one sequence in the channel-last layout the kernel requires for `seq_idx`, with
  `seq_idx` = the segment number of each token: the kernel drops every tap from another segment,
  which is the zero left padding the sample gets alone.
- conv, otherwise: one `F.conv1d` over the flattened tokens with kernel-1 zero columns inserted
  before every segment, so each sample sees exactly the zero padding of its own run; no loop.
- delta rule, flash-linear-attention installed and tensors on CUDA: one `chunk_gated_delta_rule`
  call with the rows flattened to batch 1 (fla's varlen mode) and `cu_seqlens` over the
  segments: the state starts from zero at every boundary.
- delta rule, otherwise: transformers' torch implementation once per segment, the very call the
  sample gets alone. This loop exists only where the torch fallback (itself a slow loop) runs.
- partial installs: the conv and the delta rule choose independently, so the library that is
  there is used with boundaries and the missing one falls back to its exact torch path.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.integrations.accelerate import force_accelerate_hooks

log = logging.getLogger("qwenvl_ft")


@dataclass(frozen=True)
class Kernels:
    """Varlen kernels for the packed path, used for tensors on `device_types`; None: the torch path."""

    conv: Callable | None = None
    """causal-conv1d's `causal_conv1d_fn(x, weight, bias=None, seq_idx=None, ..., activation=None)`."""
    delta_rule: Callable | None = None
    """flash-linear-attention's `chunk_gated_delta_rule(q, k, v, g, beta, ..., cu_seqlens=None)`."""
    device_types: tuple[str, ...] = ("cuda",)


def installed_kernels() -> Kernels:
    """The kernels that import here (both libraries are GPU-only; importing fails without them)."""
    conv = delta_rule = None
    try:
        from causal_conv1d import causal_conv1d_fn as conv
    except Exception:  # not installed, or its CUDA extension does not load on this machine
        conv = None
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as delta_rule
    except Exception:
        delta_rule = None
    return Kernels(conv=conv, delta_rule=delta_rule)


def isolate_linear_attention(model: nn.Module, kernels: Kernels | None = None) -> int:
    """Make every Gated DeltaNet layer of `model` honour `sample_index`; returns how many layers.

    Idempotent; `kernels` (default: what is installed) is how tests substitute reference kernels.
    """
    kernels = installed_kernels() if kernels is None else kernels
    classes = _layer_classes()
    count = 0
    for module in model.modules():
        if isinstance(module, classes):
            if not isinstance(module, SampleBoundaries):
                module.__class__ = _isolated_class(type(module))
            module.packing_kernels = kernels
            count += 1
    if not count:
        raise ValueError(
            f"{type(model).__name__} has no Gated DeltaNet layers: nothing to isolate "
            "(isolate_linear_attention is for Qwen3.5 models)"
        )
    log.info(
        f"packed rows: {count} linear-attention layers restart at every sample; on "
        f"{'/'.join(kernels.device_types)} the conv runs "
        f"{'causal-conv1d with seq_idx' if kernels.conv else 'in torch'} and the delta rule "
        f"{'fla with cu_seqlens' if kernels.delta_rule else 'in torch, once per sample'}"
    )
    return count


def _layer_classes() -> tuple[type[nn.Module], ...]:
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeGatedDeltaNet

    return Qwen3_5GatedDeltaNet, Qwen3_5MoeGatedDeltaNet


_ISOLATED: dict[type, type] = {}


def _isolated_class(cls: type[nn.Module]) -> type[nn.Module]:
    """`cls` with the packed forward in front (one subclass per layer class, so isinstance holds)."""
    if cls not in _ISOLATED:
        # `_stock`: the layer's transformers module, for its own helpers and torch delta rule.
        attrs = {"_stock": sys.modules[cls.__module__]}
        _ISOLATED[cls] = type(f"Packed{cls.__name__}", (SampleBoundaries, cls), attrs)
    return _ISOLATED[cls]


class SampleBoundaries:
    """Mixin placed before a GatedDeltaNet class: the packed forward when `sample_index` is given."""

    packing_kernels: Kernels

    def forward(
        self, hidden_states, cache=None, attention_mask=None, sample_index=None, sp_batch=None, **kwargs
    ):
        if sp_batch is not None:  # a sequence-parallel shard (models/ulysses.py)
            return _sharded_forward(self, hidden_states, sp_batch)
        if sample_index is None:
            return super().forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        if cache is not None:
            raise ValueError(
                "a packed batch (sample_index) cannot run with a cache: its samples would share "
                "one recurrent state; pass use_cache=False (PackingCollator does)"
            )
        if sample_index.shape != hidden_states.shape[:2]:
            raise ValueError(
                f"sample_index has shape {tuple(sample_index.shape)}, the hidden states "
                f"{tuple(hidden_states.shape[:2])} (rows, tokens)"
            )
        starts = torch.ones_like(sample_index, dtype=torch.bool)
        starts[:, 1:] = sample_index[:, 1:] != sample_index[:, :-1]
        if not bool(starts[:, 1:].any()):  # one sample per row: nothing to keep apart
            return super().forward(hidden_states, cache=None, attention_mask=attention_mask, **kwargs)
        return _packed_forward(self, hidden_states, attention_mask, starts.flatten())


@force_accelerate_hooks("conv1d")  # conv1d's weight is read directly, as in the stock forward
def _packed_forward(layer, hidden_states: torch.Tensor, attention_mask, starts: torch.Tensor):
    """The stock forward without a cache, with the conv and the delta rule restarting at `starts`.

    starts: (rows * tokens,) bool, True where a segment (one sample of a row) begins.
    """
    hidden_states = layer._stock.apply_mask_to_padding_states(hidden_states, attention_mask)
    rows, length, _ = hidden_states.shape
    segment = starts.cumsum(0) - 1  # segment number of each flattened token
    cu_seqlens = F.pad(starts.nonzero().flatten(), (0, 1), value=starts.numel())

    mixed_qkv = _conv(layer, layer.in_proj_qkv(hidden_states), segment)
    z = layer.in_proj_z(hidden_states).reshape(rows, length, -1, layer.head_v_dim)
    b = layer.in_proj_b(hidden_states)
    a = layer.in_proj_a(hidden_states)
    query, key, value = torch.split(mixed_qkv, [layer.key_dim, layer.key_dim, layer.value_dim], dim=-1)
    query = query.reshape(rows, length, -1, layer.head_k_dim)
    key = key.reshape(rows, length, -1, layer.head_k_dim)
    value = value.reshape(rows, length, -1, layer.head_v_dim)
    beta = b.sigmoid()
    g = -layer.A_log.float().exp() * F.softplus(a.float() + layer.dt_bias)  # fp32, as stock

    out = _delta_rule(layer, (query, key, value, g, beta), cu_seqlens)
    out = layer.norm(out.reshape(-1, layer.head_v_dim), z.reshape(-1, layer.head_v_dim))
    return layer.out_proj(out.reshape(rows, length, -1))


@force_accelerate_hooks("conv1d")
def _sharded_forward(layer, hidden_states: torch.Tensor, batch) -> torch.Tensor:
    """The packed forward of one sequence-parallel shard, sharded by heads in between.

    Projections run on this rank's tokens; one all-to-all trades them for every token of 1/N of
    the heads (q/k heads and their value heads, which `repeat_interleave` pairs contiguously), on
    which the conv and the delta rule run over the whole sample, restarting at every segment; the
    output goes back to this rank's tokens for the gated norm and the out projection.
    """
    from ..ulysses import all_to_all

    sp = batch.sp
    n, r = sp.size, sp.rank
    rows, local, _ = hidden_states.shape
    if batch.masked and rows > 1:  # the stock apply_mask_to_padding_states, on this shard
        hidden_states = (hidden_states * batch.local_valid()[:, :, None]).to(hidden_states.dtype)
    q, k, v = torch.split(
        layer.in_proj_qkv(hidden_states), [layer.key_dim, layer.key_dim, layer.value_dim], -1
    )
    z = layer.in_proj_z(hidden_states).reshape(rows, local, -1, layer.head_v_dim)
    parts = [
        t.reshape(rows, local, n, -1)
        for t in (q, k, v, layer.in_proj_b(hidden_states), layer.in_proj_a(hidden_states))
    ]
    widths = [t.shape[-1] for t in parts]
    mine = all_to_all(torch.cat(parts, -1), sp, scatter=2, gather=1).squeeze(2)  # (rows, S, widths)
    q, k, v, b, a = torch.split(mine, widths, -1)
    kd, vd, hv = layer.key_dim // n, layer.value_dim // n, layer.num_v_heads // n
    channels = torch.cat(
        [
            torch.arange(r * kd, (r + 1) * kd),
            layer.key_dim + torch.arange(r * kd, (r + 1) * kd),
            2 * layer.key_dim + torch.arange(r * vd, (r + 1) * vd),
        ]
    ).to(hidden_states.device)
    bias = layer.conv1d.bias[channels] if layer.conv1d.bias is not None else None
    starts = batch.starts()
    mixed = _conv(layer, torch.cat([q, k, v], -1), starts.cumsum(0) - 1, layer.conv1d.weight[channels], bias)
    q, k, v = torch.split(mixed, [kd, kd, vd], -1)
    length = q.shape[1]
    q = q.reshape(rows, length, -1, layer.head_k_dim)
    k = k.reshape(rows, length, -1, layer.head_k_dim)
    v = v.reshape(rows, length, -1, layer.head_v_dim)
    heads = slice(r * hv, (r + 1) * hv)
    g = -layer.A_log[heads].float().exp() * F.softplus(a.float() + layer.dt_bias[heads])
    cu_seqlens = F.pad(starts.nonzero().flatten(), (0, 1), value=starts.numel())
    out = _delta_rule(layer, (q, k, v, g, b.sigmoid()), cu_seqlens)  # (rows, S, hv, dim)
    out = all_to_all(out.contiguous(), sp, scatter=1, gather=2)  # (rows, S/N, heads, dim)
    out = layer.norm(out.reshape(-1, layer.head_v_dim), z.reshape(-1, layer.head_v_dim))
    return layer.out_proj(out.reshape(rows, local, -1))


def _conv(layer, mixed: torch.Tensor, segment: torch.Tensor, weight=None, bias=None) -> torch.Tensor:
    """Depthwise causal conv + activation of (rows, tokens, channels), restarting at each segment;
    `weight`/`bias`: a slice of the layer's channels (default: all of them)."""
    rows, length, channels = mixed.shape
    if weight is None:
        weight, bias = layer.conv1d.weight, layer.conv1d.bias
    weight = weight.squeeze(1)  # (channels, width)
    width = weight.shape[-1]
    x = mixed.reshape(1, rows * length, channels)
    kernels = layer.packing_kernels
    if kernels.conv is not None and x.device.type in kernels.device_types:
        # (1, channels, tokens) with channels contiguous: the layout seq_idx needs.
        out = kernels.conv(
            x.transpose(1, 2),
            weight,
            bias,
            seq_idx=segment.to(torch.int32)[None],
            activation=layer.activation,
        )
        return out.transpose(1, 2).reshape(rows, length, channels)
    # width-1 zeros before every segment: each token lands `width-1` further per segment before it.
    where = torch.arange(x.shape[1], device=x.device) + (width - 1) * (segment + 1)
    gapped = x.new_zeros(1, int(where[-1]) + 1, channels).index_copy(1, where, x)
    out = F.conv1d(gapped.transpose(1, 2).to(weight.dtype), weight.unsqueeze(1), bias, groups=channels)
    out = out[:, :, where - (width - 1)]  # valid conv: output j ends at input j + width - 1
    if layer.activation is not None:
        out = ACT2FN[layer.activation](out)
    return out.to(mixed.dtype).transpose(1, 2).reshape(rows, length, channels)


def _delta_rule(layer, tensors: tuple[torch.Tensor, ...], cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Gated delta rule over (rows, tokens, heads, dim) inputs with the state reset per segment."""
    rows, length = tensors[0].shape[:2]
    q, k, v, g, beta = (t.reshape(1, rows * length, *t.shape[2:]) for t in tensors)
    kernels = layer.packing_kernels
    if kernels.delta_rule is not None and q.device.type in kernels.device_types:
        out, _ = kernels.delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True, cu_seqlens=cu_seqlens)
    else:
        # The torch function itself (transformers' wrapper would route to fla where installed).
        torch_rule = inspect.unwrap(layer._stock.torch_chunk_gated_delta_rule)
        bounds = cu_seqlens.tolist()
        out = torch.cat(
            [
                torch_rule(
                    q[:, s:e],
                    k[:, s:e],
                    v[:, s:e],
                    g=g[:, s:e],
                    beta=beta[:, s:e],
                    use_qk_l2norm_in_kernel=True,
                )[0]
                for s, e in zip(bounds[:-1], bounds[1:], strict=True)
            ],
            dim=1,
        )
    return out.reshape(rows, length, *out.shape[2:])
