"""One run's life, the same for every method: start, build the policy, fit, finish.

    run = start(cfg)                    # family, capabilities, output dir, processor, TrainingArguments
    ... the method checks its data under run.args.main_process_first ...
    policy = build_policy(run, "DPO (sigmoid, beta 0.1)")   # seed, load, adapt, upcast, metadata
    trainer = SomeTrainer(**run.trainer_kwargs(policy, ...))
    return fit(run, policy, trainer, samples, curves)        # resume line, train, summaries, save, describe

A method module (training/sft.py, dpo.py, grpo.py) is the data and the loss between these calls; it
never imports another method (training/methods.py dispatches to it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed

from ..config import RecipeConfig
from ..models import resolve_family
from ..models.base import ModelFamily
from ..models.capabilities import check_capabilities
from ..runs import checkpoint_meta, describe, metadata
from . import expert_parallel, sequence_parallel
from .data_wait import summary as data_wait_summary
from .modules import trainable_table
from .outputs import DescribeCheckpoints, plot_loss, plot_series, prepare_output_dir
from .setup import adapt, check_compatible, load_model, resolve_is_base, upcast_trainable

log = logging.getLogger("qwenvl_ft")


@dataclass
class TrainResult:
    output_dir: Path
    model: torch.nn.Module
    """The trained model as it is in memory (a PeftModel for LoRA / Q-LoRA)."""
    log_history: list[dict]


@dataclass
class Run:
    """What every method starts from."""

    cfg: RecipeConfig
    family: ModelFamily
    processor: Any
    out: Path
    resume: Path | None
    args: TrainingArguments


@dataclass
class Policy:
    model: torch.nn.Module
    is_base: bool
    meta: dict
    """The run's qwenvl_ft.json, written into every checkpoint and the output."""
    sp: sequence_parallel.SPGroup | None = None
    """This rank's sequence-parallel group (`train.sequence_parallel`), None when off."""


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # torchrun sets RANK; a plain run is rank 0


def start(cfg: RecipeConfig) -> Run:
    """Refuse what cannot run (by name, before anything loads), prepare the output dir and processor."""
    family = resolve_family(cfg.model.path, cfg.model.family)
    check_capabilities(family, cfg)  # what the recipe needs, the family declares: refused here, by name
    check_compatible(cfg, checkpoint_meta(cfg.model.path))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    sequence_parallel.check(cfg, family, world)
    expert_parallel.check(cfg, family, world)
    out, resume = prepare_output_dir(cfg)
    processor = family.load_processor(cfg.model.path, cfg.model.min_pixels, cfg.model.max_pixels)
    processor.video_config = cfg.data.video
    processor.thinking = cfg.data.thinking
    processor.reasoning_effort = cfg.data.reasoning_effort
    processor.image_decode = cfg.data.image_decode
    processor.special_text = cfg.data.special_text
    # Before the data check: under torchrun this starts the process group, so that one rank per node
    # checks the data while the others wait for its cached result; and with ZeRO-3 in the arguments,
    # from_pretrained partitions while loading (zero.Init) instead of every rank holding the whole model.
    return Run(cfg, family, processor, out, resume, training_arguments(cfg, out))


def build_policy(run: Run, what: str, reference: str | None = None) -> Policy:
    """The model to train: seeded, loaded, adapted for the mode, trainable weights upcast; logged as
    `what` (the method and its settings) with its reference, if any, and the trainable-parameter table."""
    cfg, family = run.cfg, run.family
    is_base = resolve_is_base(cfg)
    set_seed(cfg.train.seed)  # LoRA and new weights initialise from train.seed, not from whatever ran before
    model = load_model(cfg, family)
    sp = sequence_parallel.setup(cfg, family, model)  # on the base model's modules, before adapters
    # Again: the adapters' initial weights depend on train.seed alone, not on what loading drew
    # (a model sharded while it loads draws differently from one loaded whole).
    set_seed(cfg.train.seed)
    model = adapt(model, cfg, family, is_base)
    if cfg.model.dtype != "fp32" and not cfg.train.deepspeed:
        upcast_trainable(model)  # DeepSpeed keeps its own fp32 master weights
    log.info(
        f"{family.title}, {what}, mode {cfg.train.mode}"
        + (f", reference: {reference}" if reference else "")
        + ", trainable parameters:\n"
        + trainable_table(model, family.paths)
    )
    meta = metadata(cfg, family.name, is_base)
    if family.reasoning_efforts:  # what inference asks by default (README 'Thinking at inference')
        meta["reasoning_effort"] = cfg.data.reasoning_effort or family.reasoning_efforts[0]
    return Policy(model, is_base, meta, sp)


def trained_thinking(family: ModelFamily, plan) -> dict:
    """How a thinking generation's run was trained, for its qwenvl_ft.json; inference defaults to it
    (`infer.run_thinking`, README 'Thinking at inference'). thinking: on when at least half of the
    trained samples show reasoning in a think block (the check's `reasoning` column), off when fewer
    do: a model that learned to answer after the empty block is asked after the empty block."""
    if not family.thinking or not len(plan):
        return {}
    shown, total = int(plan.column("reasoning").sum()), len(plan)
    return {
        "thinking": 2 * shown >= total,
        "thinking_why": f"{shown} of {total} trained samples showed reasoning",
    }


def frozen_copy(cfg: RecipeConfig, family: ModelFamily) -> torch.nn.Module:
    """A reference model: `cfg.model.path` loaded as the policy is, without gradients, in eval mode.
    The trainer places it (`VLTrainer.prepare_reference`)."""
    return load_model(cfg, family).requires_grad_(False).eval()


def trainer_kwargs(run: Run, policy: Policy, media_kinds: frozenset[str], **extra) -> dict:
    """The keyword arguments every method's VLTrainer takes, plus the method's own."""
    cfg = run.cfg
    return dict(
        model=policy.model,
        args=run.args,
        family=run.family,
        vision_lr=cfg.train.vision_lr,
        merger_lr=cfg.train.merger_lr,
        media_kinds=media_kinds,
        sequence_parallel=policy.sp,
        callbacks=[DescribeCheckpoints(policy.meta, cfg, run.processor)],
        **extra,
    )


def fit(
    run: Run,
    policy: Policy,
    trainer,
    samples=None,
    curves: dict[str, tuple[tuple[str, ...], str]] | None = None,
) -> TrainResult:
    """Train (resuming where the output dir says), then the summaries, save, describe and draw.

    samples: the dataset whose `skipped()` counts samples that failed to load (data.on_load_error: skip);
    curves: file name -> (logged keys, title), drawn besides loss.png (e.g. a method's rewards)."""
    cfg, out = run.cfg, run.out
    if run.resume:
        log.info(f"resuming from {run.resume}")
    trainer.train(resume_from_checkpoint=str(run.resume) if run.resume else None)
    wait = trainer.data_wait.run_share()
    if wait is not None and trainer.is_world_process_zero():
        log.info(
            data_wait_summary(wait, cfg.data.num_workers, cfg.data.image_decode, trainer.data_wait.run_wait())
        )
    skipped = samples.skipped() if samples is not None else 0
    if skipped:  # each was logged when it failed
        log.warning(f"{skipped} sample(s) failed to load and were skipped (data.on_load_error: skip)")

    trainer.save_model(str(out))  # the adapter (LoRA) or the full weights, gathered under ZeRO-3
    trainer.save_state()
    if "wandb" in cfg.train.report_to and trainer.is_world_process_zero():
        import wandb

        if wandb.run is not None:  # each train() its own wandb run, complete on disk when it returns
            wandb.finish()
    if trainer.is_world_process_zero():
        describe(out, policy.meta, cfg, run.processor)
        history = trainer.state.log_history
        drawn = [plot_loss(history, out / "loss.png")]
        for name, (keys, title) in (curves or {}).items():
            drawn.append(plot_series(history, keys, out / name, title))
        shown = ", ".join(str(c) for c in drawn if c)
        log.info(f"done: outputs in {out.resolve()}" + (f", curves {shown}" if shown else ""))
    return TrainResult(out, trainer.model, trainer.state.log_history)


def training_arguments(cfg: RecipeConfig, out: Path) -> TrainingArguments:
    t = cfg.train
    evaluate = bool(cfg.data.eval)
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        bf16=cfg.model.dtype == "bf16",
        fp16=cfg.model.dtype == "fp16",
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_steps=t.save_steps,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=(t.eval_steps or t.save_steps) if evaluate else None,
        per_device_eval_batch_size=t.per_device_batch_size,
        prediction_loss_only=True,  # evaluation reports the loss; logits are never gathered
        save_total_limit=t.save_total_limit,  # the best checkpoint (eval.best_metric) is never rotated out
        metric_for_best_model=cfg.eval.best_metric,
        greater_is_better=cfg.eval.greater_is_better if cfg.eval.best_metric else None,
        load_best_model_at_end=bool(cfg.eval.best_metric),
        seed=t.seed,
        data_seed=t.seed,
        deepspeed=t.deepspeed,
        fsdp="full_shard auto_wrap" if t.fsdp else "",
        report_to=list(t.report_to) or "none",
        remove_unused_columns=False,  # the collator's keys are the model's inputs
        dataloader_num_workers=cfg.data.num_workers,
        # Workers decode and resize images ahead of the step; persistent, so no restart each epoch.
        dataloader_prefetch_factor=cfg.data.prefetch_factor if cfg.data.num_workers else None,
        dataloader_persistent_workers=cfg.data.num_workers > 0,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # lets bf16 autocast run on CPU (tests, quickstart)
        optim="adamw_torch",
        # A model sharded while it loads (train.expert_parallel): the Trainer saves its weights only;
        # VLTrainer adds the optimizer and RNG states (expert_parallel.py), so checkpoints resume.
        save_only_model=t.expert_parallel > 1,
    )
