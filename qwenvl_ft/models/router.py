"""The router load-balancing loss of the MoE generations, summed over ranks before its ratio.

transformers' `load_balancing_loss_func` (Qwen3.5-MoE, Qwen3-VL-MoE) is num_experts x the sum over
experts of (share of top-k assignments) x (mean routing probability): a product of two per-expert
means, not a mean over tokens. A rank holding part of the batch (a sequence-parallel shard, an
expert-parallel rank's own batch) gets the whole batch's value only when both sums and the token
count are summed over the ranks before the ratios. Sequence parallelism (models/ulysses.py) and
expert parallelism (training/expert_parallel.py) each wrap the function with their own group.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

BALANCED_MODULES = (
    "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe",
    "transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe",
)


def routed_experts(config) -> int:
    """Routed experts per MoE layer of a model config (0 for a dense one): `num_experts`, or
    `num_local_experts` as transformers 5 renames it on some configs."""
    text = config.get_text_config()
    return int(getattr(text, "num_experts", 0) or getattr(text, "num_local_experts", 0) or 0)


def sums(gate_logits: tuple[torch.Tensor, ...], weight: torch.Tensor, num_experts: int, top_k: int):
    """(top-k assignments per expert, routing probability per expert, tokens counted), every layer's
    rows weighted by `weight` (1 a counted token, 0 padding), as transformers accumulates them."""
    device = gate_logits[0].device
    weight = weight.to(device, torch.float32)
    tokens = torch.zeros(num_experts, dtype=torch.float32, device=device)
    probs = torch.zeros(num_experts, dtype=torch.float32, device=device)
    counted = torch.zeros((), dtype=torch.float32, device=device)
    for layer in gate_logits:
        routing = F.softmax(layer.to(device), dim=-1)
        _, chosen = torch.topk(routing, top_k, dim=-1)
        tokens = tokens.scatter_add(0, chosen.reshape(-1), weight.repeat_interleave(top_k))
        probs = probs + (routing.float() * weight[:, None]).sum(0)
        counted = counted + weight.sum()
    return tokens, probs, counted


def value(tokens: torch.Tensor, probs: torch.Tensor, counted: torch.Tensor, num_experts: int) -> torch.Tensor:
    return torch.sum((tokens / counted) * (probs / counted)[None]) * num_experts


def wrap_balance_loss(make: Callable[[Callable], Callable], marker: str) -> None:
    """Replace each MoE module's `load_balancing_loss_func` by `make(original)`, once (`marker`)."""
    for name in BALANCED_MODULES:
        module = importlib.import_module(name)
        if not hasattr(module.load_balancing_loss_func, marker):
            wrapped = make(module.load_balancing_loss_func)
            setattr(wrapped, marker, True)
            module.load_balancing_loss_func = wrapped
