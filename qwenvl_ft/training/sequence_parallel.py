"""`train.sequence_parallel: N`: the training side of Ulysses sequence parallelism (the model side is
models/ulysses.py).

- Groups of N consecutive ranks train one batch together; the data loader gives every rank of a
  group the same batches (data parallel = world / N), and each rank computes the loss of its 1/N of
  the tokens.
- Loss: the labels are shifted on the whole sample before it is split (the target of a shard's last
  token is the next shard's first), each rank sums its tokens' losses and divides by the whole
  batch's supervised-token count, times N: the engine (DDP, DeepSpeed) averages gradients over all
  world ranks, so the N partial gradients of a group add up to the batch's gradient, exactly as one
  process computes it.
- What cannot be spread is refused at start, by name (`check`).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..config import ConfigError, RecipeConfig
from ..models.base import ModelFamily
from ..models.ulysses import SPGroup, check_heads, install, new_group, padded_length
from .loss import IGNORE_INDEX

log = logging.getLogger("qwenvl_ft")


def check(cfg: RecipeConfig, family: ModelFamily, world_size: int) -> None:
    """Raise ConfigError, before anything loads, for a combination that is not built."""
    n = cfg.train.sequence_parallel
    if n == 1:
        return
    where = f"train.sequence_parallel: {n}"
    if not family.sequence_parallel:
        raise ConfigError(f"{where}: {family.title} ({family.name}) {family.no_sequence_parallel_reason}")
    if cfg.train.fsdp:
        raise ConfigError(f"{where} runs with DDP or DeepSpeed ZeRO-2/3; set train.fsdp: false")
    if cfg.eval.generate:
        raise ConfigError(
            f"{where}: eval.generate decodes with a KV cache, which runs on whole samples; set "
            "eval.generate: false and evaluate the saved run with qwenvl-ft eval"
        )
    if cfg.train.liger:
        raise ConfigError(f"{where} is not built with Liger's kernels; set train.liger: false")
    if world_size % n:
        raise ConfigError(
            f"{where} needs a process count that it divides; this launch has {world_size} "
            f"(torchrun --nproc_per_node: a multiple of {n})"
        )


def setup(cfg: RecipeConfig, family: ModelFamily, model: torch.nn.Module) -> SPGroup | None:
    """Make the group and spread `model`'s forwards over it; None when sequence parallelism is off."""
    n = cfg.train.sequence_parallel
    if n == 1:
        return None
    try:
        check_heads(model.config, n)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    sp = new_group(n)
    install(model, family, sp)
    dp_rank, dp_size = sp.data_parallel
    if dist.get_rank() == 0:
        log.info(
            f"sequence parallel: {n} ranks a sample, {dp_size} data-parallel group(s); each rank holds "
            "1/N of every sample's tokens and of the attention heads in between"
        )
    return sp


def shard_labels(labels: torch.Tensor, sp: SPGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's targets, aligned with its positions; the batch's supervised-token count).

    The logit at position t predicts labels[t + 1], so the shift happens on the whole sample; the
    sample is then padded to a multiple of N with ignored targets, as the model pads its tokens."""
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    full = padded_length(shifted.shape[-1], sp.size)
    shifted = F.pad(shifted, (0, full - shifted.shape[-1]), value=IGNORE_INDEX)
    local = full // sp.size
    return shifted[:, sp.rank * local : (sp.rank + 1) * local], (shifted != IGNORE_INDEX).sum()


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over this shard's supervised tokens, in fp32 (as transformers)."""
    return F.cross_entropy(
        logits.float().flatten(0, 1),
        targets.to(logits.device).flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def prepare_group_loader(
    accelerator, sp: SPGroup, data_loader, device_placement=None, slice_fn_for_dispatch=None
):
    """`Accelerator.prepare_data_loader` with the data-parallel rank and size in place of the world's,
    so the N ranks of a group read the same batches (the arguments as accelerate 1.15 passes them)."""
    from accelerate.data_loader import prepare_data_loader

    if getattr(data_loader, "_is_accelerate_prepared", False):
        return data_loader
    dp_rank, dp_size = sp.data_parallel
    prepared = prepare_data_loader(
        data_loader,
        accelerator.device,
        num_processes=dp_size,
        process_index=dp_rank,
        split_batches=accelerator.split_batches,
        put_on_device=accelerator.device_placement if device_placement is None else device_placement,
        rng_types=accelerator.rng_types.copy(),
        dispatch_batches=accelerator.dispatch_batches,
        even_batches=accelerator.even_batches,
        slice_fn_for_dispatch=slice_fn_for_dispatch,
        use_seedable_sampler=accelerator.use_seedable_sampler,
        data_seed=accelerator.dataloader_config.data_seed,
        non_blocking=accelerator.non_blocking,
        use_stateful_dataloader=accelerator.use_stateful_dataloader,
    )
    accelerator._dataloaders.append(prepared)
    return prepared


def group_loaders(accelerator, sp: SPGroup) -> None:
    """From now on `accelerator` prepares data loaders per data-parallel group."""
    accelerator.prepare_data_loader = functools.partial(prepare_group_loader, accelerator, sp)
