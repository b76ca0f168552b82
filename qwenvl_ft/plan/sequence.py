"""Sequence parallelism in the plan (`train.sequence_parallel: N`, models/ulysses.py).

Each rank of a group holds 1/N of every sample's tokens: the language model's activations, the
logits and loss, and (spread by frame) the vision tower's are those of seq/N tokens. What the
all-to-alls add: every attention layer keeps its head-sharded q, k, v and output (same size as the
token-sharded ones: (seq/N) x all heads = seq x heads/N), every Gated DeltaNet layer its
head-sharded q, k, v, beta, gate inputs and output. Traffic: each all-to-all sends (N-1)/N of its
tensor; forward and backward each move every one once, a checkpointed layer's forward twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .activations import Precision
from .model import ModelFacts
from .setup import Setup


def local_tokens(s: Setup) -> int:
    """Tokens of a micro-batch held by one rank."""
    return s.seq * s.batch // s.sp


def _widths(facts: ModelFacts) -> tuple[int, int, int, int]:
    """(attention layers, elements a token sends in one, linear layers, elements in one)."""
    b, lin = facts.shapes.text, facts.shapes.linear
    attention = 2 * b.heads * b.head_dim + 2 * b.kv_heads * b.head_dim  # q, k, v out; output back
    linear_layers = lin.layers if lin is not None else 0
    linear = 0
    if lin is not None:
        key, value = lin.key_heads * lin.key_head_dim, lin.value_heads * lin.value_head_dim
        linear = 2 * key + 2 * value + 2 * lin.value_heads  # q, k, v, beta, gate out; output back
    return b.depth - linear_layers, attention, linear_layers, linear


def buffer_bytes(facts: ModelFacts, s: Setup, p: Precision) -> int:
    """The head-sharded copies autograd keeps for backward: every layer's, or one recomputed layer's."""
    if s.sp == 1:
        return 0
    attention_layers, attention, linear_layers, linear = _widths(facts)
    per_layer = [w for n, w in ((attention_layers, attention), (linear_layers, linear)) if n]
    if s.gradient_checkpointing:
        return local_tokens(s) * max(per_layer) * p.e
    return local_tokens(s) * (attention_layers * attention + linear_layers * linear) * p.e


@dataclass(frozen=True)
class Traffic:
    attention_layer: float
    """Bytes one rank sends in one attention layer's forward."""
    linear_layer: float
    """Bytes one rank sends in one Gated DeltaNet layer's forward (0: none)."""
    step: float
    """Bytes one rank sends per micro-batch, forward + backward (+ recompute)."""


def traffic(facts: ModelFacts, s: Setup, p: Precision) -> Traffic:
    share = (s.sp - 1) / s.sp * local_tokens(s) * p.e
    attention_layers, attention, linear_layers, linear = _widths(facts)
    passes = 3 if s.gradient_checkpointing else 2
    step = passes * share * (attention_layers * attention + linear_layers * linear)
    return Traffic(share * attention, share * linear if linear_layers else 0.0, step)


def candidates(facts: ModelFacts, limit: int = 16) -> list[int]:
    """Group sizes the model's heads allow (models.ulysses.check_heads), up to `limit`."""
    from ..models.ulysses import check_heads

    out = []
    for n in range(2, limit + 1):
        try:
            check_heads(facts.config, n)
        except ValueError:
            continue
        out.append(n)
    return out


def smallest_fit(facts: ModelFacts, s: Setup, capacity_gib: float, estimate) -> tuple[int, float] | None:
    """(the smallest N at which `s` fits `capacity_gib` per rank, that total), or None when no N up to
    16 does; N ranks then share each sample (the launch needs a multiple of N processes)."""
    for n in candidates(facts):
        if n <= s.sp:
            continue
        total = estimate(facts, replace(s, sp=n, nproc=max(s.nproc, n))).total_gib
        if total <= capacity_gib:
            return n, total
    return None
