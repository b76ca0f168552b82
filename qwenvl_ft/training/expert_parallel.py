"""`train.expert_parallel: N`: the MoE generations on transformers' own FSDP2 + expert-parallel stack.

- The model is sharded while it loads (`from_pretrained(distributed_config=...)`): every MoE layer's
  routed experts are split over groups of N consecutive ranks (each holds num_experts / N of them,
  FSDP-sharded again over the groups), tokens reach their experts by all-to-all, and the dense part
  (attention, shared experts, router, vision tower, embeddings) is FSDP2-sharded over every rank.
  Every rank reads its own batches (data parallel = the process count).
- The Trainer drives such a model itself (`is_distributed_loading_by_transformers`: no DDP or
  second sharding; PEFT adapters, added after sharding, are broadcast and their gradients
  averaged). What it cannot do is checkpoint the optimizer (it refuses unless `save_only_model`),
  so a run saves its optimizer with torch's distributed checkpoint here (`save_state` /
  `load_state`): the smallest adapter that makes a checkpoint resume exactly.
- What cannot run on this stack is refused at start, by name (`check`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoConfig

from ..config import ConfigError, RecipeConfig
from ..models import router
from ..models.base import ModelFamily
from ..models.ulysses import sum_over_ranks

log = logging.getLogger("qwenvl_ft")

OPTIMIZER_DIR = "optimizer_dcp"
"""A checkpoint's optimizer state: one file per rank, written and read by every rank (DCP)."""
SCHEDULER = "scheduler.pt"


def check(cfg: RecipeConfig, family: ModelFamily, world_size: int) -> None:
    """Raise ConfigError, before anything loads, for a combination this stack does not run."""
    n = cfg.train.expert_parallel
    if n == 1:
        return
    where = f"train.expert_parallel: {n}"
    if not family.expert_parallel:
        raise ConfigError(
            f"{where}: {family.title} ({family.name}) has no routed experts to split; it is for "
            "qwen3_vl_moe and qwen3_5_moe (use DeepSpeed ZeRO or FSDP for dense models)"
        )
    t = cfg.train
    if t.deepspeed or t.fsdp:
        raise ConfigError(
            f"{where} brings its own FSDP2 sharding (transformers' distributed stack); remove "
            + ("train.deepspeed" if t.deepspeed else "train.fsdp")
        )
    if t.sequence_parallel > 1:
        raise ConfigError(f"{where} with train.sequence_parallel is not built; use one of them")
    if t.mode == "qlora":
        raise ConfigError(
            f"{where}: 4-bit weights cannot be sharded as DTensors; use train.mode: lora or full"
        )
    if cfg.lora.experts and t.mode == "lora":
        # Checked with PEFT 0.21: its per-expert delta is a plain tensor multiplied with the sharded
        # expert weight ("aten.baddbmm got mixed torch.Tensor and DTensor") on the first forward.
        raise ConfigError(
            f"{where} with lora.experts: PEFT's per-expert LoRA (target_parameters) does not compose "
            "with expert parallelism (its delta meets the sharded expert weights in one matmul); set "
            "lora.experts: false (LoRA on attention, shared experts and router) or train.mode: full"
        )
    if t.liger:
        raise ConfigError(f"{where} is not built with Liger's kernels; set train.liger: false")
    if cfg.eval.best_metric:
        raise ConfigError(
            f"{where}: eval.best_metric reloads the best checkpoint at the end, which this stack "
            "does not do; unset it and pick the checkpoint from the logged metrics"
        )
    if world_size % n:
        raise ConfigError(
            f"{where} needs a process count that it divides; this launch has {world_size} "
            f"(torchrun --nproc_per_node: a multiple of {n})"
        )
    experts = router.routed_experts(AutoConfig.from_pretrained(cfg.model.path))
    if experts % n:
        raise ConfigError(f"{where} must divide the model's {experts} routed experts")


def fsdp_plan(family: ModelFamily) -> dict[str, str]:
    """One FSDP2 unit per decoder layer and per vision block (gathered in turn, freed after use).

    transformers' default plan names the text model's own paths ("model.layers.*"), which match
    nothing inside the vision-language model: the whole model would be one unit, gathered at once."""
    return {
        f"{family.paths.language[0]}.layers.*": "free_full_weight",
        f"{family.paths.vision}.blocks.*": "free_full_weight",
    }


def distributed_config(cfg: RecipeConfig, family: ModelFamily):
    """The `DistributedConfig` the model loads with, or None when expert parallelism is off."""
    n = cfg.train.expert_parallel
    if n == 1:
        return None
    from transformers.distributed import DistributedConfig

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistributedConfig(
        ep_size=n, fsdp_size=world, fsdp_plan=fsdp_plan(family), ep_implementation="all_to_all"
    )


def log_layout(model: torch.nn.Module, n: int) -> None:
    world = dist.get_world_size()
    experts = router.routed_experts(model.config)
    if dist.get_rank() == 0:
        log.info(
            f"expert parallel: {n} ranks split each layer's {experts} experts ({experts // n} each, "
            f"{world // n} sharded copies); the dense part FSDP2-sharded over all {world} ranks"
        )


def check_sharded(model: torch.nn.Module, family: ModelFamily, n: int) -> None:
    """Fail loudly unless every MoE layer's experts were split and every planned unit exists."""
    from torch.distributed.tensor import DTensor

    names = {name for name, _ in model.named_modules()}
    for rule in fsdp_plan(family):
        prefix = rule.removesuffix(".*")
        if not any(name.startswith(prefix + ".") for name in names):
            raise RuntimeError(
                f"expert parallel: the FSDP2 rule {rule!r} matches no module of {family.title}"
            )
    experts = [m for name, m in model.named_modules() if name.endswith("mlp.experts")]
    if not experts:
        raise RuntimeError(f"expert parallel: no 'mlp.experts' module in {family.title}")
    for module in experts:
        weight = next(module.parameters())
        local = weight.to_local() if isinstance(weight, DTensor) else weight
        total = weight.shape[0]
        if local.shape[0] * n > total:
            raise RuntimeError(
                f"expert parallel: {family.title}'s experts were not split over {n} ranks "
                f"(a rank holds {local.shape[0]} of {total})"
            )


# -- the router's load-balancing loss over the whole batch -------------------------------------------


def balance_over_ranks(original):
    """transformers' `load_balancing_loss_func` over every rank's tokens (models/router.py), divided
    by the rank count: the Trainer multiplies each rank's loss by it and FSDP averages the gradients,
    so the update is then one process's. `VLTrainer` logs it times the rank count: the batch's value."""

    def loss(gate_logits, num_experts=None, top_k=2, attention_mask=None):
        if not isinstance(gate_logits, tuple) or not dist.is_initialized():
            return original(gate_logits, num_experts, top_k, attention_mask)
        rows = gate_logits[0].shape[0]
        weight = attention_mask.reshape(-1) if attention_mask is not None else torch.ones(rows)
        tokens, probs, counted = router.sums(gate_logits, weight, num_experts, top_k)
        stats = torch.cat([tokens, counted[None]])
        dist.all_reduce(stats)  # counts: no gradient
        probs = sum_over_ranks(probs)  # its backward sums the ranks' gradients
        return router.value(stats[:-1], probs, stats[-1], num_experts) / dist.get_world_size()

    return loss


def balance_router_over_ranks() -> None:
    router.wrap_balance_loss(balance_over_ranks, "_ep_balance")


def load_full_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """A saved (consolidated) checkpoint's weights into the sharded model: each rank takes its shards."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state: dict[str, torch.Tensor] = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        state.update(load_file(str(file)))
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:  # a checkpoint of another model, or saved some other way: never resume half-loaded
        raise ValueError(
            f"{checkpoint}: {len(missing)} weight(s) of the model are not in its safetensors files "
            f"(first: {missing[:3]}); resume from a checkpoint this run saved"
        )
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def save_state(model, optimizer, scheduler, checkpoint: Path, is_main: bool) -> None:
    """The optimizer (every rank its shards) and the scheduler, beside the saved weights."""
    from transformers.distributed.checkpoint import save_optimizer_distributed

    save_optimizer_distributed(model, optimizer, str(checkpoint / OPTIMIZER_DIR))
    if is_main:
        torch.save(scheduler.state_dict(), checkpoint / SCHEDULER)


def load_state(model, optimizer, scheduler, checkpoint: Path) -> None:
    from transformers.distributed.checkpoint import load_optimizer_distributed

    if not (checkpoint / OPTIMIZER_DIR).is_dir():
        raise FileNotFoundError(
            f"{checkpoint} has no {OPTIMIZER_DIR}/: it was not saved by an expert-parallel run, so its "
            "optimizer state cannot be restored"
        )
    load_optimizer_distributed(model, optimizer, str(checkpoint / OPTIMIZER_DIR))
    scheduler.load_state_dict(torch.load(checkpoint / SCHEDULER, weights_only=True))
