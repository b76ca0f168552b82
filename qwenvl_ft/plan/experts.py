"""Expert parallelism in the plan (`train.expert_parallel: N`, training/expert_parallel.py), and how it
compares with ZeRO-3 for a mixture-of-experts recipe.

Storage is the same under both: transformers' stack FSDP2-shards the dense part (attention, shared
experts, router, vision, embeddings) over every rank and splits each MoE layer's routed experts over
N ranks, sharded again over the nproc / N groups, so every parameter is stored 1/nproc per rank, as
ZeRO-3 stores it. What differs is what is gathered and what moves:
- ZeRO-3 gathers each layer whole, every expert included, on every rank, in forward, backward and
  the recomputation: a rank receives (n-1)/n of all the 16-bit weights per pass;
- expert parallelism gathers the dense part that way, a rank's own experts only over its nproc / N
  copies (nothing when N = nproc), and moves tokens instead: each MoE layer sends every token's
  hidden state to the ranks of its top-k experts and gets the outputs back (two all-to-alls; (N-1)/N
  of the rows leave the rank), in forward and again in backward.
The peak's gathered weights become two dense blocks plus this rank's experts of one layer; the
all-to-all buffers (received rows and outputs of every MoE layer, or one recomputed layer's) are
kept for backward.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..models.router import routed_experts
from .activations import Precision
from .model import ModelFacts
from .sequence import local_tokens
from .setup import ZERO3, Setup, ep_engine


@dataclass(frozen=True)
class Experts:
    layers: int
    """MoE layers."""
    per_layer: int
    """Routed-expert parameters of one layer."""
    count: int
    """Routed experts per layer."""
    top_k: int
    width: int
    """Hidden size: one token's row."""


def experts_of(facts: ModelFacts) -> Experts | None:
    """The model's routed experts, or None for a dense model."""
    sizes = facts.expert_sizes
    if not sizes:
        return None
    text = facts.config.get_text_config()
    count = routed_experts(facts.config)
    return Experts(len(sizes), max(sizes), count, text.num_experts_per_tok, text.hidden_size)


def _passes(s: Setup) -> int:
    return 3 if s.gradient_checkpointing else 2  # forward, backward (+ the recomputed forward)


def gathered_bytes(facts: ModelFacts, s: Setup, weight_bytes: int) -> float:
    """Weights gathered at a time under expert parallelism: two dense blocks, this rank's experts of
    one layer when they are sharded over copies (nproc / N > 1)."""
    ex = experts_of(facts)
    dense = facts.block_params() - ex.per_layer
    own = ex.per_layer / s.ep if s.nproc // s.ep > 1 else 0
    return max(2 * dense + own, facts.largest_module(skip="mlp.experts")) * weight_bytes


def all_to_all(facts: ModelFacts, s: Setup, p: Precision) -> tuple[float, float]:
    """(bytes one rank sends in one MoE layer's forward, bytes per micro-batch in all)."""
    if s.ep == 1:
        return 0.0, 0.0
    ex = experts_of(facts)
    layer = 2 * local_tokens(s) * ex.top_k * ex.width * p.e * (s.ep - 1) / s.ep  # dispatch + combine
    return layer, layer * ex.layers * _passes(s)


def buffer_bytes(facts: ModelFacts, s: Setup, p: Precision) -> float:
    """The rows each MoE layer received and the outputs it sends back, kept for backward."""
    if s.ep == 1:
        return 0.0
    ex = experts_of(facts)
    layers = 1 if s.gradient_checkpointing else ex.layers
    return 2 * local_tokens(s) * ex.top_k * ex.width * p.e * layers


def moved_bytes(facts: ModelFacts, s: Setup, p: Precision) -> float:
    """Bytes a rank receives per micro-batch: weight gathers (ZeRO-3 / FSDP2), plus tokens (EP)."""
    n, wb = s.nproc, (4 if s.dtype == "fp32" else 2)
    total = sum(facts.by_part.values())
    if n == 1:
        return 0.0
    if s.ep == 1:
        return _passes(s) * total * wb * (n - 1) / n
    ex = experts_of(facts)
    experts = ex.per_layer * ex.layers
    copies = n // s.ep
    gathered = (total - experts) * (n - 1) / n + experts / s.ep * (copies - 1) / copies
    return _passes(s) * gathered * wb + all_to_all(facts, s, p)[1]


@dataclass(frozen=True)
class Option:
    name: str
    setup: Setup
    total_gib: float
    moved_gib: float
    """GiB a rank receives per micro-batch (gathers and all-to-alls)."""


def sizes(facts: ModelFacts, nproc: int) -> list[int]:
    """Expert-parallel sizes this launch allows: divisors of the expert count that divide nproc."""
    ex = experts_of(facts)
    return [n for n in range(2, nproc + 1) if nproc % n == 0 and ex.count % n == 0]


def compare(facts: ModelFacts, s: Setup, estimate, precision) -> list[Option]:
    """ZeRO-3 against expert parallelism (the recipe's N, else the largest this launch allows) for
    `s` on `s.nproc` ranks; [] for a dense model or one rank."""
    if experts_of(facts) is None or s.nproc == 1:
        return []
    allowed = sizes(facts, s.nproc)
    ep = s.ep if s.ep > 1 else (allowed[-1] if allowed else 1)
    options = [("DeepSpeed ZeRO-3", replace(s, engine=ZERO3, ep=1))]
    if ep > 1:
        options.append((f"expert parallel {ep}", replace(s, engine=ep_engine(), ep=ep)))
    out = []
    for name, setup in options:
        total = estimate(facts, setup).total_gib
        out.append(Option(name, setup, total, moved_bytes(facts, setup, precision(setup)) / 2**30))
    return out
