"""DPO (`train.method: dpo`): preference pairs in, an ordinary run out.

`run_dpo(cfg, ...)` reads like `train()`: check the pairs (data/pairs.py), build the model for the
mode, the reference, the trainer, train, save, plot. One step (`DPOTrainer.compute_loss`):

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

import inspect
import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import set_seed

from ..config import RecipeConfig
from ..config.schema import DPOConfig
from ..data.check import format_report
from ..data.dataset import CACHE_DIR
from ..data.encode import IGNORE
from ..data.pairs import PairCollator, build_pair_dataset
from ..runs import describe, metadata
from .keepalive import VisionKeepalive
from .modules import trainable_table
from .outputs import DescribeCheckpoints, plot_loss, plot_series
from .setup import adapt, load_model, resolve_is_base, upcast_trainable
from .trainer import VLTrainer

log = logging.getLogger("qwenvl_ft")
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins")


def run_dpo(cfg: RecipeConfig, family, processor, out: Path, resume: Path | None, args):
    """Check the pairs, build policy and reference, train with the DPO loss, save like an SFT run."""
    from ..train import TrainResult, is_main_process

    reference_cfg = reference_config(cfg, family)  # a wrong dpo.reference fails before the data check
    with args.main_process_first(local=True, desc="pair check"):  # one rank per node checks
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

    is_base = resolve_is_base(cfg)
    set_seed(cfg.train.seed)  # LoRA initialises from train.seed, as in train()
    model = adapt(load_model(cfg, family), cfg, family, is_base)
    if cfg.model.dtype != "fp32" and not cfg.train.deepspeed:
        upcast_trainable(model)
    reference = None  # LoRA / Q-LoRA without dpo.reference: the policy with its adapter off
    if cfg.train.mode == "full" or cfg.dpo.reference:
        reference = load_model(reference_cfg, family).requires_grad_(False).eval()
    log.info(
        f"{family.title}, DPO ({cfg.dpo.loss_type}, beta {cfg.dpo.beta}), mode {cfg.train.mode}, reference: "
        + (
            f"a frozen copy of {cfg.dpo.reference or cfg.model.path}"
            if reference is not None
            else "the adapter switched off"
        )
        + ", trainable parameters:\n"
        + trainable_table(model, family.paths)
    )

    meta = metadata(cfg, family.name, is_base)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_set,
        data_collator=PairCollator(processor.tokenizer.pad_token_id),
        family=family,
        vision_lr=cfg.train.vision_lr,
        merger_lr=cfg.train.merger_lr,
        group_by_length=cfg.data.group_by_length,
        media_kinds=report.plan.media_kinds(),
        callbacks=[DescribeCheckpoints(meta, cfg, processor)],
        dpo=cfg.dpo,
        reference=reference,
    )
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.save_model(str(out))
    trainer.save_state()
    if trainer.is_world_process_zero():
        describe(out, meta, cfg, processor)
        curve = plot_loss(trainer.state.log_history, out / "loss.png")
        rewards = plot_series(trainer.state.log_history, REWARD_KEYS, out / "rewards.png", "DPO rewards")
        log.info(
            f"done: outputs in {out.resolve()}"
            + (f", loss curve {curve}, reward curves {rewards}" if curve and rewards else "")
        )
    return TrainResult(out, trainer.model, trainer.state.log_history)


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


def answer_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's supervised tokens, their count), one forward.

    Logits are computed only from the first answer token's predecessor on (`logits_to_keep`, where
    the model takes it): the prompt's image and text positions never reach lm_head.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    supervised = labels != IGNORE
    start = int(supervised.float().argmax(dim=1).min())  # earliest answer token of the batch
    keep = labels.shape[1] - start + 1
    if "logits_to_keep" in inspect.signature(_model_class_forward(model)).parameters:
        inputs["logits_to_keep"] = keep
    logits = model(**inputs, use_cache=False).logits[:, -keep:-1]
    targets = labels[:, start:]
    mask = targets != IGNORE
    logps = torch.zeros(labels.shape[0], device=logits.device, dtype=torch.float32)
    rows = mask.nonzero(as_tuple=True)[0]
    # Only the supervised positions go through log_softmax (in fp32): B answers, not B x L x vocab.
    picked = logits[mask].float().log_softmax(-1).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    return logps.index_add(0, rows, picked), mask.sum(dim=1)


@contextmanager
def vision_once(visual: torch.nn.Module) -> Iterator[None]:
    """Within: the vision tower runs once per pair, not once per row.

    A pair batch holds each pair's media twice, for its chosen row and again for its rejected row
    (PairCollator), because the model matches image tokens to features row by row. A call of `visual`
    whose grids are two equal halves runs the tower on the first half and repeats its output (and
    so its gradient, when the tower trains, adds up from both rows exactly as two calls would).
    Other calls (the keepalive's dummy image) pass through. Generations whose tower takes `grid_thw`;
    the first-generation Qwen-VL's (fixed 448 px images, no grids) still runs per row.
    """
    original = visual.forward

    def forward(pixel_values, *args, **kwargs):
        grid_thw = kwargs["grid_thw"] if "grid_thw" in kwargs else (args[0] if args else None)
        n = grid_thw.shape[0] // 2 if isinstance(grid_thw, torch.Tensor) else 0
        if not (
            n
            and torch.equal(grid_thw[:n], grid_thw[n:])
            and pixel_values.shape[0] == 2 * int(grid_thw[:n].prod(-1).sum())
        ):
            return original(pixel_values, *args, **kwargs)  # a tower without grids; a dummy image
        if "grid_thw" in kwargs:
            kwargs["grid_thw"] = grid_thw[:n]
        else:
            args = (grid_thw[:n], *args[1:])
        return _twice(original(pixel_values[: pixel_values.shape[0] // 2], *args, **kwargs))

    visual.forward = forward
    try:
        yield
    finally:
        del visual.forward  # the class's forward again


def _twice(out):
    """A vision output repeated along its first (token) dimension: tensors, lists of them, ModelOutputs."""
    if isinstance(out, torch.Tensor):
        return torch.cat([out, out])
    if isinstance(out, dict):  # transformers' ModelOutput is an OrderedDict
        for key in list(out.keys()):
            out[key] = _twice(out[key])
        return out
    if isinstance(out, (list, tuple)):
        return type(out)(_twice(x) for x in out)
    return out


def reference_logps(policy, reference, batch: dict[str, torch.Tensor], unwrap=None) -> torch.Tensor:
    """Answer log-probs under the reference, without gradients: `reference` when there is a frozen
    copy (full fine-tuning), else the policy with its LoRA adapter switched off."""
    with torch.no_grad():
        if reference is not None:
            return answer_logps(reference, batch)[0]
        with (unwrap(policy) if unwrap else policy).disable_adapter():
            return answer_logps(policy, batch)[0]


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


def _model_class_forward(model):
    """The forward of the transformers model inside DDP / DeepSpeed / PEFT wrappers (which pass
    keyword arguments through)."""
    while hasattr(model, "module"):  # DDP / DeepSpeed engine
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model.forward


class DPOTrainer(VLTrainer):
    """VLTrainer (optimizer groups, vision keepalive, logging) with the DPO loss of pair batches."""

    def __init__(self, *args, dpo: DPOConfig, reference: torch.nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dpo = dpo
        self.model_accepts_loss_kwargs = False  # a mean over pairs: the Trainer divides by accumulation
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self.reference = reference
        if reference is not None:
            self.reference_keepalive = VisionKeepalive(self.family, reference)
            self.reference = self._prepare_reference(reference)

    def _prepare_reference(self, reference: torch.nn.Module) -> torch.nn.Module:
        """The frozen copy placed like the policy: sharded under ZeRO-3 / FSDP as TRL does, else on device."""
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(reference, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            return prepare_fsdp(reference, self.accelerator)
        return self.accelerator.prepare_model(reference, evaluation_mode=True)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._tokens += inputs["attention_mask"].sum()
        missing = self.media_kinds - ("pixel_values" in inputs) - ("pixel_values_videos" in inputs)
        self.keepalive.expect(missing)
        with vision_once(self._base_model(model).get_submodule(self.family.paths.vision)):
            policy, counts = answer_logps(model, inputs)
        (self.keepalive if self.reference is None else self.reference_keepalive).expect(missing)
        visual = self.family.paths.vision
        reference_visual = self._base_model(model if self.reference is None else self.reference)
        with vision_once(reference_visual.get_submodule(visual)):
            reference = reference_logps(model, self.reference, inputs, self.accelerator.unwrap_model)
        loss, metrics = dpo_loss(policy, reference, counts, self.dpo)
        mode = "train" if model.training else "eval"
        for key, value in metrics.items():
            self._metrics[mode][key].append(self.accelerator.gather_for_metrics(value).mean())
        return (loss, {"logps": policy.detach()}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode, prefix = ("train", "") if "loss" in logs else ("eval", "eval_")
        if mode == "train" or "eval_loss" in logs:
            for key, values in self._metrics[mode].items():
                logs[prefix + key] = round(torch.stack(values).mean().item(), 6)
            self._metrics[mode].clear()
        super().log(logs, start_time)
