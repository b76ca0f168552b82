"""Fine-tuning: a resolved recipe in, a self-describing output directory out.

    qwenvl-ft train recipes/tiny/qwen2_5_vl_lora.yaml train.max_steps=50
    torchrun --nproc_per_node 8 -m qwenvl_ft train recipes/qwen2_5_vl/7b_lora.yaml

`train(cfg)` reads top to bottom: check the data (before the model is loaded, so a data error
costs seconds), build the model for the mode, run the Hugging Face Trainer, save. `train.method`
other than sft branches off once the processor is set up, to a function that reads the same way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, TrainingArguments, set_seed

from .config import RecipeConfig
from .data.check import format_report
from .data.collate import PaddingCollator
from .data.dataset import SFTDataset, build_dataset
from .data.packing import PackedDataset, PackingCollator
from .data.sources import Source
from .models import resolve_family
from .models.capabilities import check_capabilities
from .runs import checkpoint_meta, describe, metadata
from .training.data_wait import summary as data_wait_summary
from .training.modules import trainable_table
from .training.outputs import DescribeCheckpoints, plot_loss, prepare_output_dir
from .training.setup import (
    adapt,
    check_compatible,
    load_model,
    resolve_is_base,
    upcast_trainable,
)
from .training.task_eval import TaskEval
from .training.trainer import VLTrainer

log = logging.getLogger("qwenvl_ft")


@dataclass
class TrainResult:
    output_dir: Path
    model: torch.nn.Module
    """The trained model as it is in memory (a PeftModel for LoRA / Q-LoRA)."""
    log_history: list[dict]


def train(cfg: RecipeConfig) -> TrainResult:
    """Run the recipe: check data, build the model, train, save."""
    family = resolve_family(cfg.model.path, cfg.model.family)
    check_capabilities(family, cfg)  # what the recipe needs, the family declares: refused here, by name
    check_compatible(cfg, checkpoint_meta(cfg.model.path))
    out, resume = prepare_output_dir(cfg)
    processor = family.load_processor(cfg.model.path, cfg.model.min_pixels, cfg.model.max_pixels)
    processor.video_config = cfg.data.video
    processor.thinking = cfg.data.thinking
    processor.image_decode = cfg.data.image_decode
    processor.special_text = cfg.data.special_text
    # First: under torchrun this starts the process group, so that one rank per node checks the data
    # while the others wait for its cached result; and with ZeRO-3 in the arguments, from_pretrained
    # partitions while loading (zero.Init) instead of every rank holding the whole checkpoint.
    args = training_arguments(cfg, out)
    if cfg.train.method == "dpo":  # chosen / rejected answer pairs: training/dpo.py
        from .training.dpo import run_dpo

        return run_dpo(cfg, family, processor, out, resume, args)
    if cfg.train.method == "grpo":  # answers sampled and scored by rewards: training/grpo.py
        from .training.grpo import train_grpo

        return train_grpo(cfg, family, processor, out, resume, args)

    with args.main_process_first(local=True, desc="data check"):
        dataset, report = build_dataset(cfg.data, processor, cfg.train.seed, progress=is_main_process())
        eval_set = None
        if cfg.data.eval:  # checked the same way: an eval error must not surface at the first evaluation
            eval_set, eval_report = build_dataset(
                cfg.data, processor, cfg.train.seed, progress=False, split="eval"
            )
    if cfg.data.eval:
        log.info("eval data check:\n" + format_report(eval_report, cfg.data.max_length, limit=10))
    log.info("data check:\n" + format_report(report, cfg.data.max_length, limit=10))
    samples = dataset  # packing wraps it; the count of samples that failed to load stays here
    collator = PaddingCollator(processor.tokenizer.pad_token_id)
    if cfg.data.packing:
        dataset, eval_set = pack(cfg, family, dataset), eval_set and pack(cfg, family, eval_set)
        collator = PackingCollator(processor.tokenizer.pad_token_id)

    is_base = resolve_is_base(cfg)
    set_seed(cfg.train.seed)  # LoRA and new weights initialise from train.seed, not from whatever ran before
    model = adapt(load_model(cfg, family), cfg, family, is_base)
    if cfg.model.dtype != "fp32" and not cfg.train.deepspeed:
        upcast_trainable(model)  # DeepSpeed keeps its own fp32 master weights
    log.info(
        f"{family.title}, mode {cfg.train.mode}, trainable parameters:\n"
        + trainable_table(model, family.paths)
    )

    meta = metadata(cfg, family.name, is_base)
    trainer = VLTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_set,
        data_collator=collator,
        family=family,
        vision_lr=cfg.train.vision_lr,
        merger_lr=cfg.train.merger_lr,
        group_by_length=cfg.data.group_by_length and not cfg.data.packing,
        loss="liger" if cfg.train.liger and cfg.train.loss == "chunked" else cfg.train.loss,
        media_kinds=report.plan.media_kinds(),
        task_eval=TaskEval(cfg.eval, [Source(s) for s in cfg.data.eval], processor, family)
        if cfg.eval.generate
        else None,
        callbacks=[DescribeCheckpoints(meta, cfg, processor)],
    )
    if resume:
        log.info(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wait = trainer.data_wait.run_share()
    if wait is not None and trainer.is_world_process_zero():
        log.info(
            data_wait_summary(wait, cfg.data.num_workers, cfg.data.image_decode, trainer.data_wait.run_wait())
        )
    if samples.skipped():  # data.on_load_error: skip; each was logged when it failed
        log.warning(
            f"{samples.skipped()} sample(s) failed to load and were skipped (data.on_load_error: skip)"
        )

    trainer.save_model(str(out))  # the adapter (LoRA) or the full weights, gathered under ZeRO-3
    trainer.save_state()
    if trainer.is_world_process_zero():
        describe(out, meta, cfg, processor)
        curve = plot_loss(trainer.state.log_history, out / "loss.png")
        log.info(f"done: outputs in {out.resolve()}" + (f", loss curve {curve}" if curve else ""))
    return TrainResult(out, trainer.model, trainer.state.log_history)


def pack(cfg: RecipeConfig, family, samples: SFTDataset) -> PackedDataset:
    """The samples packed into rows of `data.pack_length` tokens (bins from the checked lengths)."""
    length = cfg.data.pack_length or cfg.data.max_length
    packed = PackedDataset(
        samples, length, cfg.train.seed, family, AutoConfig.from_pretrained(cfg.model.path)
    )
    log.info(
        f"packing: {len(samples)} samples into {len(packed)} rows of {length} tokens, "
        f"{packed.efficiency():.1%} of each row filled on average"
    )
    return packed


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
    )


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # torchrun sets RANK; a plain run is rank 0
