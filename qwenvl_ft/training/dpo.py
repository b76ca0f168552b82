"""DPO (`train.method: dpo`): preference pairs in, an ordinary run out.

`run_dpo(run)` reads like SFT's: check the pairs (data/pairs.py), build the policy and the reference,
the trainer, fit (lifecycle.py). One step (`DPOTrainer.compute_loss`):

1. one forward of the policy over 2B rows (B chosen answers, then the same B prompts with the
   rejected answers) gives each answer's summed token log-probability, log pi(y | x);
2. the same for the frozen reference, without gradients: with LoRA / Q-LoRA the policy itself with
   its adapter switched off (no second copy in memory); with full fine-tuning a frozen copy, which
   under DeepSpeed / FSDP is prepared like TRL's `DPOTrainer` does it (`trl.models.prepare_deepspeed`,
   `prepare_fsdp`: sharded under ZeRO-3, replicated otherwise); `dpo.reference` names another
   checkpoint as that frozen copy. Only the answer positions reach lm_head (`logits_to_keep`), and
   the vision tower runs once per pair for both forwards (`vision_once`);
3. `dpo_loss`: with r = beta * (log pi - log pi_ref) for each answer, sigmoid: -log sigmoid(r_chosen -
   r_rejected); ipo: the log-ratio margin per answer token, squared distance to 1 / (2 beta); plus
   `dpo.sft_weight` x the chosen answer's mean token cross-entropy. Averaged over the pairs.

Logged each step: rewards/chosen, rewards/rejected (the r above), rewards/margins,
rewards/accuracies (share of pairs whose chosen reward is higher), logps/chosen, logps/rejected;
the same with `eval_` on `data.eval` pairs. `rewards.png` next to `loss.png`.

The loss is ours rather than TRL's: TRL computes it inside `DPOTrainer._compute_loss` on batches it
tokenized itself with the processor's chat template, while our chat templates, masks and box
conventions (and the first-generation Qwen-VL, which has no transformers processor) must stay the
single source of truth. The formulas are TRL's (`loss_type` sigmoid and ipo, the ipo per-token
normalisation, rewards = beta x log-ratio), checked against a hand computation in the tests.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..config import RecipeConfig
from ..config.schema import DPOConfig
from ..data.check import format_report
from ..data.dataset import CACHE_DIR
from ..data.pairs import PairCollator, build_pair_dataset
from .keepalive import VisionKeepalive
from .lifecycle import (
    Run,
    TrainResult,
    build_policy,
    fit,
    frozen_copy,
    is_main_process,
    trained_thinking,
    trainer_kwargs,
)
from .logprobs import sequence_logps
from .methods import Method
from .trainer import VLTrainer
from .vision_once import vision_once

log = logging.getLogger("qwenvl_ft")
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins")


def run_dpo(run: Run) -> TrainResult:
    """Check the pairs, build policy and reference, train with the DPO loss, finish like an SFT run."""
    cfg, family, processor = run.cfg, run.family, run.processor
    reference_cfg = reference_config(cfg, family)  # a wrong dpo.reference fails before the data check
    with run.args.main_process_first(local=True, desc="pair check"):  # one rank per node checks
        dataset, report = build_pair_dataset(
            cfg.data, processor, cfg.train.seed, progress=is_main_process(), cache_dir=CACHE_DIR
        )
        eval_set = eval_report = None
        if cfg.data.eval:
            eval_set, eval_report = build_pair_dataset(
                cfg.data, processor, cfg.train.seed, False, "eval", CACHE_DIR
            )
    if eval_report is not None:
        log.info("eval pair check:\n" + format_report(eval_report, cfg.data.max_length, limit=10))
    log.info("pair check:\n" + format_report(report, cfg.data.max_length, limit=10))

    frozen = cfg.train.mode == "full" or bool(cfg.dpo.reference)  # else the policy with its adapter off
    policy = build_policy(
        run,
        f"DPO ({cfg.dpo.loss_type}, beta {cfg.dpo.beta})",
        f"a frozen copy of {cfg.dpo.reference or cfg.model.path}" if frozen else "the adapter switched off",
    )
    policy.meta.update(trained_thinking(family, report.plan))  # from the chosen answers
    trainer = DPOTrainer(
        **trainer_kwargs(run, policy, report.plan.media_kinds()),
        train_dataset=dataset,
        eval_dataset=eval_set,
        data_collator=PairCollator(processor.tokenizer.pad_token_id),
        group_by_length=cfg.data.group_by_length,
        dpo=cfg.dpo,
        reference=frozen_copy(reference_cfg, family) if frozen else None,
    )
    return fit(run, policy, trainer, curves={"rewards.png": (REWARD_KEYS, "DPO rewards")})


def reference_config(cfg: RecipeConfig, family) -> RecipeConfig:
    """The recipe with `model.path` set to the reference's (`dpo.reference`, else the policy's own)."""
    from dataclasses import replace

    from ..config import ConfigError
    from ..models import resolve_family

    if not cfg.dpo.reference:
        return cfg
    if resolve_family(cfg.dpo.reference, None).name != family.name:
        raise ConfigError(
            f"'dpo.reference': {cfg.dpo.reference} is not a {family.title} checkpoint like model.path"
        )
    return replace(cfg, model=replace(cfg.model, path=cfg.dpo.reference))


def reference_logps(policy, reference, batch: dict[str, torch.Tensor], unwrap=None) -> torch.Tensor:
    """Answer log-probs under the reference, without gradients: `reference` when there is a frozen
    copy (full fine-tuning), else the policy with its LoRA adapter switched off."""
    with torch.no_grad():
        if reference is not None:
            return sequence_logps(reference, batch)[0]
        with (unwrap(policy) if unwrap else policy).disable_adapter():
            return sequence_logps(policy, batch)[0]


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, counts: torch.Tensor, cfg: DPOConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO loss of 2B rows' answer log-probs (chosen rows first) and what is logged of it."""
    chosen, rejected = policy.chunk(2)
    ratio_c, ratio_r = (policy - reference).chunk(2)
    n_c, n_r = counts.clamp(min=1).chunk(2)
    if cfg.loss_type == "ipo":  # TRL's normalisation: the log-ratio per answer token
        losses = (ratio_c / n_c - ratio_r / n_r - 1 / (2 * cfg.beta)) ** 2
    else:
        losses = -F.logsigmoid(cfg.beta * (ratio_c - ratio_r))
    loss = losses.mean()
    if cfg.sft_weight:
        loss = loss + cfg.sft_weight * (-chosen / n_c).mean()
    reward_c, reward_r = cfg.beta * ratio_c.detach(), cfg.beta * ratio_r.detach()
    metrics = {
        "rewards/chosen": reward_c,
        "rewards/rejected": reward_r,
        "rewards/margins": reward_c - reward_r,
        "rewards/accuracies": (reward_c > reward_r).float(),
        "logps/chosen": chosen.detach(),
        "logps/rejected": rejected.detach(),
    }
    return loss, metrics


class DPOTrainer(VLTrainer):
    """VLTrainer (optimizer groups, vision keepalive, logging) with the DPO loss of pair batches."""

    def __init__(self, *args, dpo: DPOConfig, reference: torch.nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dpo = dpo
        self.model_accepts_loss_kwargs = False  # a mean over pairs: the Trainer divides by accumulation
        self.reference = reference
        if reference is not None:
            self.reference_keepalive = VisionKeepalive(self.family, reference)
            self.reference = self.prepare_reference(reference)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._tokens += inputs["attention_mask"].sum()
        missing = self.media_kinds - ("pixel_values" in inputs) - ("pixel_values_videos" in inputs)
        self.keepalive.expect(missing)
        with vision_once(self._base_model(model).get_submodule(self.family.paths.vision)):
            policy, counts = sequence_logps(model, inputs)
        (self.keepalive if self.reference is None else self.reference_keepalive).expect(missing)
        visual = self.family.paths.vision
        reference_visual = self._base_model(model if self.reference is None else self.reference)
        with vision_once(reference_visual.get_submodule(visual)):
            reference = reference_logps(model, self.reference, inputs, self.accelerator.unwrap_model)
        loss, metrics = dpo_loss(policy, reference, counts, self.dpo)
        gathered = {k: self.accelerator.gather_for_metrics(v).mean() for k, v in metrics.items()}
        self.record(gathered, "train" if model.training else "eval")
        return (loss, {"logps": policy.detach()}) if return_outputs else loss


METHOD = Method(
    "dpo",
    run_dpo,
    honours=("data.group_by_length", "data.thinking", "data.reasoning_effort", "dpo.*"),
    summary="chosen / rejected answer pairs",
)
