"""Ulysses sequence parallelism for the Qwen vision-language generations: one sample spread over the
N ranks of a group, each holding 1/N of its tokens, exact against one process.

Why not DeepSpeed's `ulysses_sp` as it ships (0.19): its data-loader adapter shards `input_ids`
before the model runs, so the vision features of a rank's image tokens would be computed from a
shard that may not hold the image's other tokens, and the mRoPE positions from a shard; its
attention wrapper drops attention masks (packed rows would attend across samples on sdpa) and knows
nothing of Gated DeltaNet layers. What is taken from it is the layout: all-to-all from sequence
shards to head shards around the core attention and back. Everything runs on `torch.distributed`
primitives (all_to_all, all_gather, all_reduce), so any engine that sees the ranks as data parallel
(DDP, DeepSpeed ZeRO-2/3) composes with it.

Where the sample is split (`install`):

- the whole batch reaches every rank of the group; the model's own forward computes the vision
  features, merges them into the embeddings and computes the positions (mRoPE, Qwen3-VL's
  timestamps) on the whole sample, exactly as on one process;
- the vision tower's work is spread over the group by frame (an image is one frame): each rank
  encodes a contiguous share of the frames, balanced by patches, and the features are gathered
  (`SpreadVision`);
- a forward pre-hook on the language model, the first module called with the merged embeddings,
  pads the sequence to a multiple of N and keeps this rank's contiguous shard of the embeddings,
  positions and DeepStack features; the whole-sample facts the layers need (which sample each token
  belongs to, which tokens are padding) travel as `sp_batch` in the layers' kwargs, so activation
  checkpointing replays them;
- attention: `ulysses` all-to-alls q, k, v from (tokens/N, heads) to (tokens, heads/N), runs the
  core attention (sdpa, eager or flash-attention) over the whole sample with its own block-causal
  mask, and all-to-alls back;
- Qwen3.5's Gated DeltaNet layers are sharded by heads the same way (models/qwen3_5/packing.py);
- sparse-expert routers' load-balancing loss is computed from the group's summed statistics.

The loss over the group (training/sequence_parallel.py) sums each rank's token losses and divides by
the whole sample's supervised-token count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import router

ATTENTION = "qwenvl_ulysses"


@dataclass(frozen=True)
class SPGroup:
    """This rank's sequence-parallel group: `size` consecutive global ranks, this one `rank` in it."""

    group: dist.ProcessGroup | None
    size: int
    rank: int

    @property
    def data_parallel(self) -> tuple[int, int]:
        """(this rank's data-parallel index, the data-parallel size): groups read distinct batches."""
        return dist.get_rank() // self.size, dist.get_world_size() // self.size


def new_group(size: int) -> SPGroup:
    """Split the world into groups of `size` consecutive ranks (every rank must call this)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if size < 1 or world % size:
        raise ValueError(f"train.sequence_parallel: {size} does not divide the {world} processes")
    mine = None
    for start in range(0, world, size):
        group = dist.new_group(list(range(start, start + size)))
        if start <= rank < start + size:
            mine = group
    return SPGroup(mine, size, rank % size)


# -- communication with autograd ----------------------------------------------------------------


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sp: SPGroup, scatter: int, gather: int):
        ctx.sp, ctx.dims = sp, (scatter, gather)
        return _all_to_all(x, sp, scatter, gather)

    @staticmethod
    def backward(ctx, grad):
        scatter, gather = ctx.dims
        return _all_to_all(grad.contiguous(), ctx.sp, gather, scatter), None, None, None


def _all_to_all(x: torch.Tensor, sp: SPGroup, scatter: int, gather: int) -> torch.Tensor:
    sends = [c.contiguous() for c in x.chunk(sp.size, dim=scatter)]
    received = [torch.empty_like(c) for c in sends]
    dist.all_to_all(received, sends, group=sp.group)
    return torch.cat(received, dim=gather)


def all_to_all(x: torch.Tensor, sp: SPGroup, scatter: int, gather: int) -> torch.Tensor:
    """Split `x` into N chunks along `scatter`, send chunk j to rank j, concatenate what arrives
    along `gather` in rank order; the gradient goes back the same way."""
    return _AllToAll.apply(x, sp, scatter, gather)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sp: SPGroup, sizes: list[int]):
        ctx.sp, ctx.sizes = sp, sizes
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=sp.group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad):
        # Every rank used the gathered rows; the rows this rank computed get the sum of their grads.
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.sp.group)
        start = sum(ctx.sizes[: ctx.sp.rank])
        return grad[start : start + ctx.sizes[ctx.sp.rank]], None, None


def gather_rows(x: torch.Tensor, sp: SPGroup, sizes: list[int]) -> torch.Tensor:
    """Concatenate the rows of every rank of the group (rank j holds `sizes[j]`), on every rank."""
    return _GatherRows.apply(x, sp, sizes)


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum(x: torch.Tensor, sp: SPGroup) -> torch.Tensor:
    """The group's sum on every rank. Backward sums the gradients too: every rank computes the same
    function of the sum, and data-parallel averaging over the group's N ranks then gives the
    gradient of that one function."""
    return _AllReduce.apply(x, sp.group)


def sum_over_ranks(x: torch.Tensor, group=None) -> torch.Tensor:
    """`all_reduce_sum` over a process group (default: every rank), the same gradient rule."""
    return _AllReduce.apply(x, group)


# -- the sample, whole and sharded ---------------------------------------------------------------


@dataclass
class SPBatch:
    """What the sharded layers need to know about the whole (padded) sample; in the layers' kwargs."""

    sp: SPGroup
    segments: torch.Tensor
    """(rows, S) which sample of its row each token belongs to (a packed row's `sample_index`; 0
    otherwise); the tokens padded on for divisibility form a segment of their own."""
    valid: torch.Tensor
    """(rows, S) bool: real tokens (False: a row's padding and the tokens padded on)."""
    masked: bool
    """Whether the batch came with an attention mask (padding tokens to hide as keys)."""
    text_positions: torch.Tensor
    """(rows, S) per-sample text positions, for flash-attention's packed (varlen) path."""
    length: int
    """The sample's own length, before the tokens padded on for divisibility."""
    core: str = "sdpa"
    """The attention implementation that runs on each head shard (the model's own: sdpa, eager, flash)."""

    @property
    def shard(self) -> slice:
        s = self.segments.shape[1] // self.sp.size
        return slice(self.sp.rank * s, (self.sp.rank + 1) * s)

    def local_valid(self) -> torch.Tensor:
        return self.valid[:, self.shard]

    def counted(self) -> torch.Tensor:
        """(rows, S) bool: the tokens one process counts in the router balance (the mask's real
        tokens; every token of the row when no mask came), never those padded on here."""
        if self.masked:
            return self.valid
        return (torch.arange(self.valid.shape[1], device=self.valid.device) < self.length).expand_as(
            self.valid
        )

    def attention_mask(self) -> torch.Tensor | None:
        """(rows, 1, S, S) bool for sdpa / eager: causal, inside one segment, real keys; every token
        sees itself (so padding rows are never empty). None when plain causal is exact."""
        one_segment = bool((self.segments == self.segments[:, :1]).all())
        if one_segment and bool(self.valid.all()):
            return None
        length = self.segments.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=self.segments.device).tril()
        same = self.segments[:, :, None] == self.segments[:, None, :]
        keys = self.valid[:, None, :] if self.masked else torch.ones_like(same[:, :1])
        eye = torch.eye(length, dtype=torch.bool, device=self.segments.device)
        return ((causal & same & keys) | eye)[:, None]

    def starts(self) -> torch.Tensor:
        """(rows * S,) bool: where a segment begins, rows flattened (linear-attention restarts)."""
        starts = torch.ones_like(self.segments, dtype=torch.bool)
        starts[:, 1:] = self.segments[:, 1:] != self.segments[:, :-1]
        return starts.flatten()


_CURRENT: list[SPBatch | None] = [None]
"""The batch of the forward under way (read by the router balance loss, computed after the layers)."""


def padded_length(length: int, size: int) -> int:
    return -(-length // size) * size


def _shard_inputs(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of the language model: the merged whole sample in, this rank's shard out."""
    sp: SPGroup = module._sp_group
    if args or kwargs.get("inputs_embeds") is None:
        raise RuntimeError("sequence parallelism expects the language model to get inputs_embeds by name")
    if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
        raise RuntimeError("sequence parallelism runs training forwards only (no KV cache)")
    embeds = kwargs["inputs_embeds"]
    rows, length = embeds.shape[:2]
    full = padded_length(length, sp.size)
    pad = full - length
    mask = kwargs.pop("attention_mask", None)
    sample_index = kwargs.pop("sample_index", None)
    positions = kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(length, device=embeds.device).expand(rows, -1)
    if isinstance(mask, torch.Tensor) and mask.dim() != 2:
        raise RuntimeError("sequence parallelism takes a 2-D (rows, tokens) attention mask")
    segments = (
        sample_index if sample_index is not None else torch.zeros_like(embeds[..., 0], dtype=torch.long)
    )
    valid = mask.bool() if mask is not None else torch.ones_like(segments, dtype=torch.bool)
    text = positions[0] if positions.dim() == 3 else positions
    if pad:
        embeds = F.pad(embeds, (0, 0, 0, pad))
        segments = torch.cat([segments, segments.amax(1, keepdim=True).expand(-1, pad) + 1], 1)
        valid = F.pad(valid, (0, pad), value=False)
        extra = torch.arange(1, pad + 1, device=positions.device)
        positions = torch.cat([positions, positions[..., -1:] + extra], -1)
        text = torch.cat([text, torch.arange(pad, device=text.device).expand(rows, -1)], -1)
    batch = SPBatch(sp, segments, valid, mask is not None, text, length, module._sp_core_attention)
    shard = batch.shard
    kwargs["inputs_embeds"] = embeds[:, shard]
    kwargs["position_ids"] = positions[..., shard]
    kwargs["attention_mask"] = None
    kwargs["sp_batch"] = batch
    visual = kwargs.get("visual_pos_masks")
    if visual is not None:  # Qwen3-VL's DeepStack: this shard's visual tokens and their features
        visual = F.pad(visual, (0, pad), value=False)
        order = visual.flatten().cumsum(0).view_as(visual) - 1  # index of each visual token
        local = visual[:, shard]
        picked = order[:, shard][local]
        kwargs["visual_pos_masks"] = local
        kwargs["deepstack_visual_embeds"] = [e[picked] for e in kwargs["deepstack_visual_embeds"]]
    _CURRENT[0] = batch
    return args, kwargs


def _forget_batch(module, args, output):
    _CURRENT[0] = None


# -- attention -------------------------------------------------------------------------------------


def ulysses_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention-interface function: q, k, v (rows, heads, tokens/N, dim) in, (rows, tokens/N,
    heads, dim) out; the core attention sees every token of the sample and 1/N of the heads."""
    batch: SPBatch = kwargs.pop("sp_batch")
    sp = batch.sp
    if key.shape[1] % sp.size:  # fewer key/value heads than ranks share: one copy per query head
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    q, k, v = (all_to_all(t, sp, scatter=1, gather=2) for t in (query, key, value))
    core = batch.core
    if core.startswith("flash"):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        out, _ = ALL_ATTENTION_FUNCTIONS[core](
            module,
            q,
            k,
            v,
            batch.valid.long() if batch.masked else None,
            scaling=scaling,
            dropout=dropout,
            position_ids=None if batch.masked else batch.text_positions,
            is_causal=True,
        )
    else:
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        mask = batch.attention_mask()
        if core == "eager":
            out = _eager(q, k, v, mask, scaling, dropout if module.training else 0.0)
        else:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout if module.training else 0.0,
                is_causal=mask is None,
                scale=scaling,
            ).transpose(1, 2)
    # (rows, tokens, heads/N, dim) -> (rows, tokens/N, heads, dim)
    return all_to_all(out.contiguous(), sp, scatter=1, gather=2), None


def _eager(q, k, v, mask, scaling, dropout):
    """transformers' eager attention (softmax in fp32) with a boolean mask."""
    weights = torch.matmul(q, k.transpose(2, 3)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    if mask is None:
        length = q.shape[2]
        mask = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    weights = weights.masked_fill(~mask, torch.finfo(weights.dtype).min)
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = F.dropout(weights, p=dropout)
    return torch.matmul(weights, v).transpose(1, 2)


def _no_mask(*args, **kwargs):
    """The mask function of the `ulysses` implementation: the attention builds its own whole-sample
    mask from `sp_batch`; a mask of the local shard would be wrong and is never built."""
    return None


# -- the vision tower, spread by frame -----------------------------------------------------------


class SpreadVision:
    """Mixin before a vision tower class: each rank of the group encodes a contiguous share of the
    frames (balanced by patches) and every rank gets all features, in order. A rank whose share is
    empty encodes a 2x2-patch dummy, weighted zero, so every rank runs the tower once per call (ZeRO-3
    and FSDP gather its parameters on all ranks alike)."""

    _sp_group: SPGroup

    def forward(self, hidden_states, grid_thw=None, **kwargs):
        sp = self._sp_group
        if sp.size == 1 or grid_thw is None:
            return super().forward(hidden_states, grid_thw=grid_thw, **kwargs)
        shares = frame_shares(grid_thw, sp.size)
        mine = shares[sp.rank]
        if mine is None:
            c = self.config
            width = c.in_channels * c.temporal_patch_size * c.patch_size**2
            grid = torch.tensor([[1, 2, 2]], device=grid_thw.device, dtype=grid_thw.dtype)
            out = super().forward(hidden_states.new_zeros(4, width), grid_thw=grid, **kwargs)
            patches, dummy = 4, True
        else:
            rows, grid = mine
            out = super().forward(hidden_states[rows[0] : rows[1]], grid_thw=grid.to(grid_thw), **kwargs)
            patches, dummy = rows[1] - rows[0], False
        counts = [0 if s is None else s[0][1] - s[0][0] for s in shares]
        zero = _zero_of(out) if dummy else None
        return _gather_output(out, sp, counts, patches, dummy, zero)


def frame_shares(grid_thw: torch.Tensor, size: int) -> list[tuple[tuple[int, int], torch.Tensor] | None]:
    """Per rank: ((first, end) pixel rows, the (t, h, w) grids of its frames) or None when empty.

    Frames are cut contiguously where the running patch count crosses k/size of the total, so the
    ranks' rows, concatenated in rank order, are the call's rows in order."""
    frames = []  # (item, patches per frame) per frame, in row order
    for item, (t, h, w) in enumerate(grid_thw.tolist()):
        frames += [(item, h * w)] * t
    total = sum(p for _, p in frames)
    owner, before = [], 0
    for _, p in frames:
        owner.append(min(size - 1, (2 * before + p) * size // (2 * total)))  # by each frame's middle
        before += p
    shares: list = []
    row = 0
    for rank in range(size):
        mine = [f for f, o in zip(frames, owner, strict=True) if o == rank]
        if not mine:
            shares.append(None)
            continue
        grids: list[list[int]] = []
        last = None
        for item, _ in mine:
            if item == last:
                grids[-1][0] += 1
            else:
                grids.append([1, *grid_thw[item, 1:].tolist()])
            last = item
        count = sum(p for _, p in mine)
        shares.append(((row, row + count), torch.tensor(grids)))
        row += count
    return shares


def _zero_of(out) -> torch.Tensor:
    """A zero that depends on every float tensor of a vision output (the empty rank's dummy call)."""
    from .base import _tensors

    return 0.0 * sum(t.float().sum() for t in _tensors(out))


def _gather_output(out, sp: SPGroup, counts: list[int], patches: int, dummy: bool, zero):
    """Every tensor of a vision output, its rows in proportion to patches, gathered over the group."""
    if isinstance(out, torch.Tensor):
        sizes = [c * out.shape[0] // patches for c in counts]  # rows per patch: 1, or 1 / merge**2
        if out.dim() == 0 or any(c * out.shape[0] % patches for c in [*counts, patches]):
            raise ValueError(f"a vision output of {tuple(out.shape)} rows for {patches} patches")
        local = out[:0] if dummy else out
        gathered = gather_rows(local, sp, sizes)
        return gathered + zero.to(gathered.dtype) if zero is not None else gathered
    if isinstance(out, dict):  # transformers' ModelOutput is an OrderedDict
        for key in list(out.keys()):
            out[key] = _gather_output(out[key], sp, counts, patches, dummy, zero)
        return out
    if isinstance(out, (list, tuple)):
        return type(out)(_gather_output(x, sp, counts, patches, dummy, zero) for x in out)
    return out


# -- router balance over the group -------------------------------------------------------------


def _balance_loss(original):
    """transformers' `load_balancing_loss_func` (Qwen3.5-MoE / Qwen3-VL-MoE) over the group's tokens:
    the same per-expert sums and token count, summed over the ranks before the ratio (router.py)."""

    def loss(gate_logits, num_experts=None, top_k=2, attention_mask=None):
        batch = _CURRENT[0]
        if batch is None or not isinstance(gate_logits, tuple):
            return original(gate_logits, num_experts, top_k, attention_mask)
        weight = batch.counted()[:, batch.shard].reshape(-1)
        tokens, probs, rows = router.sums(gate_logits, weight, num_experts, top_k)
        stats = torch.cat([tokens, rows[None]])
        dist.all_reduce(stats, group=batch.sp.group)  # counts: no gradient
        probs = all_reduce_sum(probs, batch.sp)
        return router.value(stats[:-1], probs, stats[-1], num_experts)

    return loss


# -- installing -----------------------------------------------------------------------------------


def install(model: nn.Module, family, sp: SPGroup) -> None:
    """Spread every forward of `model` (a loaded model of `family`) over the group `sp`.

    Refuses what it cannot shard exactly: attention heads (and linear-attention heads) that do not
    divide by N.
    """
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    check_heads(model.config, sp.size)
    ALL_ATTENTION_FUNCTIONS.register(ATTENTION, ulysses_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, _no_mask)
    text = model.config.get_text_config()
    language = model.get_submodule(family.paths.after_vision)
    if text._attn_implementation != ATTENTION:
        language._sp_core_attention = text._attn_implementation or "sdpa"
        text._attn_implementation = ATTENTION
    language._sp_group = sp
    language.register_forward_pre_hook(_shard_inputs, with_kwargs=True)
    model.register_forward_hook(_forget_batch)
    vision = model.get_submodule(family.paths.vision)
    if not isinstance(vision, SpreadVision):
        cls = type(vision)
        vision.__class__ = type(f"Spread{cls.__name__}", (SpreadVision, cls), {})
    vision._sp_group = sp
    if family.packing_isolation != "positions":
        family.isolate_packed_samples(model)  # its layers also take sp_batch
    router.wrap_balance_loss(_balance_loss, "_sp_balance")


def check_heads(config, size: int) -> None:
    """Raise ValueError naming the heads that do not divide by `size`."""
    text = config.get_text_config()
    wanted = {"attention heads": text.num_attention_heads}
    if getattr(text, "num_key_value_heads", None):
        kv = text.num_key_value_heads
        if kv % size and text.num_attention_heads % size == 0:
            kv = text.num_attention_heads  # repeated per query head (ulysses_attention)
        wanted["key/value heads"] = kv
    if "linear_attention" in (getattr(text, "layer_types", None) or ()):
        wanted["linear-attention key heads"] = text.linear_num_key_heads
        wanted["linear-attention value heads"] = text.linear_num_value_heads
    bad = {k: v for k, v in wanted.items() if v % size}
    if bad:
        listed = ", ".join(f"{v} {k}" for k, v in bad.items())
        raise ValueError(
            f"train.sequence_parallel: {size} must divide every head count, and the model has {listed}; "
            f"use a divisor of {math.gcd(*wanted.values())}"
        )
