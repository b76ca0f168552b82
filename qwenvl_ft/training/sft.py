"""SFT (`train.method: sft`, the default): supervised answers, padded or packed, the model's own loss
on the assistant tokens (computed inside lm_head unless `train.loss: standard`).

Reads top to bottom: check the data (before the model loads, so a data error costs seconds), build
the policy, train, finish (lifecycle.py).
"""

from __future__ import annotations

import logging

from transformers import AutoConfig

from ..data.check import format_report
from ..data.collate import PaddingCollator
from ..data.dataset import SFTDataset, build_dataset
from ..data.packing import PackedDataset, PackingCollator
from ..data.sources import Source
from .lifecycle import Run, TrainResult, build_policy, fit, is_main_process, trained_thinking, trainer_kwargs
from .methods import Method
from .task_eval import TaskEval
from .trainer import VLTrainer

log = logging.getLogger("qwenvl_ft")


def run_sft(run: Run) -> TrainResult:
    cfg, processor = run.cfg, run.processor
    with run.args.main_process_first(local=True, desc="data check"):  # one rank per node checks
        dataset, report = build_dataset(cfg.data, processor, cfg.train.seed, progress=is_main_process())
        eval_set = eval_report = None
        if cfg.data.eval:  # checked the same way: an eval error must not surface at the first evaluation
            eval_set, eval_report = build_dataset(
                cfg.data, processor, cfg.train.seed, progress=False, split="eval"
            )
    if eval_report is not None:
        log.info("eval data check:\n" + format_report(eval_report, cfg.data.max_length, limit=10))
    log.info("data check:\n" + format_report(report, cfg.data.max_length, limit=10))
    samples = dataset  # packing wraps it; the count of samples that failed to load stays here
    collator = PaddingCollator(processor.tokenizer.pad_token_id)
    if cfg.data.packing:
        dataset, eval_set = pack(run, dataset), eval_set and pack(run, eval_set)
        collator = PackingCollator(processor.tokenizer.pad_token_id)

    policy = build_policy(run, "SFT")
    policy.meta.update(trained_thinking(run.family, report.plan))
    trainer = VLTrainer(
        **trainer_kwargs(run, policy, report.plan.media_kinds()),
        train_dataset=dataset,
        eval_dataset=eval_set,
        data_collator=collator,
        group_by_length=cfg.data.group_by_length and not cfg.data.packing,
        loss="liger" if cfg.train.liger and cfg.train.loss == "chunked" else cfg.train.loss,
        task_eval=TaskEval(
            cfg.eval, [Source(s) for s in cfg.data.eval], processor, run.family, policy.meta.get("thinking")
        )
        if cfg.eval.generate
        else None,
    )
    return fit(run, policy, trainer, samples)


def pack(run: Run, samples: SFTDataset) -> PackedDataset:
    """The samples packed into rows of `data.pack_length` tokens (bins from the checked lengths)."""
    cfg = run.cfg
    length = cfg.data.pack_length or cfg.data.max_length
    packed = PackedDataset(
        samples, length, cfg.train.seed, run.family, AutoConfig.from_pretrained(cfg.model.path)
    )
    log.info(
        f"packing: {len(samples)} samples into {len(packed)} rows of {length} tokens, "
        f"{packed.efficiency():.1%} of each row filled on average"
    )
    return packed


METHOD = Method(
    "sft",
    run_sft,
    honours=(
        "data.overlength",
        "data.supervise",
        "data.on_load_error",
        "data.packing",
        "data.pack_length",
        "data.group_by_length",
        "data.thinking",
        "data.reasoning_effort",
        "train.loss",
        "train.liger",
        "train.sequence_parallel",
        "train.expert_parallel",
        "eval.*",
    ),
    summary="supervised answers",
)
