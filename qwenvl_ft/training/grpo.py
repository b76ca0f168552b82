"""GRPO (`train.method: grpo`): sample a group of answers per prompt, score them, train on the advantage.

    qwenvl-ft train recipes/qwen2_5_vl/7b_grpo_lora.yaml

One optimizer step, from `GRPOTrainer.compute_loss`:
1. rollout: each prompt of the micro-batch (encoded by `data.prompts`, as inference encodes them)
   is repeated `grpo.num_generations` times and the policy samples an answer for each with its own
   `generate()` (temperature / top_p / top_k), stopping at the family's stop tokens (never the
   image / video span tokens, which the forward would take for visual features);
   the stop token belongs to the answer (the policy learns to stop, as SFT teaches it); a prompt's
   media are encoded once (the dataset item) and the vision tower runs once per prompt in every
   forward, sampling and scoring (`vision_once`, "each" layout);
2. rewards: the answers, split from their reasoning as `predict` splits them, are scored by the
   recipe's rewards (rewards.py); their weighted sum gives each answer its reward, and the
   advantage is the reward minus its group's mean, divided by the group's std (`scale_rewards`);
3. loss: per answer token, -min(r A, clip(r, 1 - eps, 1 + eps_high) A) with r the probability ratio
   to the policy that sampled (1 unless `num_iterations` > 1, when each generated batch is trained
   on that many times and the ratio moves), plus beta times the k3 estimate of KL to the reference
   (the starting model: with LoRA the same model with its adapter switched off, so no second copy;
   with full fine-tuning a frozen copy); averaged as `loss_type` says.

The formulas are TRL's GRPOTrainer (`_compute_loss`, `_generate_and_score_completions`), whose
log-probability helper (`selective_log_softmax`) is used as it is. TRL's trainer itself is not: it
tokenizes raw prompts with a transformers processor's chat template, which would replace our
templates, box conventions and token budgets, and the first-generation Qwen-VL has no processor.

Logged every `train.logging_steps`: reward (weighted sum) and reward/<name> means, their spread
within groups (`*_group_std`), the share of groups whose answers all scored the same
(`frac_reward_zero_std`: no signal), completion_length, kl (beta > 0) and clip_ratio.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from ..config.schema import GRPOConfig
from ..data.checking import check_split, format_report
from ..data.dataset import CACHE_DIR
from ..data.sources import Source
from ..infer import Predictor
from .drift import DriftWatch
from .grpo_data import PromptDataset, as_list, prompt_rules
from .lifecycle import Run, TrainResult, build_policy, fit, frozen_copy, is_main_process, trainer_kwargs
from .logprobs import token_logps
from .methods import Method
from .rewards import Reward, load_rewards
from .samplers import RepeatBlocks
from .task_eval import TaskEval
from .trainer import VLTrainer
from .vision_once import vision_once

log = logging.getLogger("qwenvl_ft")

PIXEL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def group_advantages(rewards: torch.Tensor, group: int, scale: str = "group") -> torch.Tensor:
    """(reward - its group's mean), divided (TRL's `scale_rewards`) by the group's std ("group"), by the
    std of all of `rewards` ("batch") or by nothing ("none"); stds Bessel-corrected, + 1e-4.

    rewards: (prompts x group,), each prompt's group consecutive."""
    grouped = rewards.view(-1, group)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (rewards.std() + 1e-4)
    elif scale != "none":
        raise ValueError(f"unknown scale_rewards {scale!r}")
    return advantages.reshape(-1)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float,
    epsilon_high: float,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    loss_type: str = "bnpo",
    max_new_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped GRPO objective over answer tokens, and its statistics (kl, clip_ratio).

    logps, old_logps, ref_logps, mask: (answers, tokens); advantages: (answers,).
    """
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    stats: dict[str, float] = {}
    n_tokens = mask.sum().clamp(min=1.0)
    if beta:
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1  # k3: unbiased, always >= 0
        per_token = per_token + beta * kl
        stats["kl"] = ((kl * mask).sum() / n_tokens).item()
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / n_tokens
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (per_token.size(0) * max_new_tokens)
    else:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}")
    # TRL's clip ratio: tokens where the clipped term is the one taken (the gradient is cut).
    cut = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
    stats["clip_ratio"] = ((cut.float() * mask).sum() / n_tokens).item()
    return loss, stats


@dataclass
class Rollout:
    """One micro-batch's sampled answers, ready for the loss (rows: prompt-major, group-minor)."""

    inputs: dict[str, torch.Tensor]
    """Model inputs of prompt + answer: input_ids, attention_mask, mm_token_type_ids, pixel tensors."""
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None


class GRPOTrainer(VLTrainer):
    """VLTrainer whose loss is GRPO's over answers sampled inside the step (module docstring)."""

    def __init__(
        self,
        *args,
        grpo: GRPOConfig,
        rewards: list[Reward],
        predictor: Predictor,
        ref_model: torch.nn.Module | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.grpo, self.rewards, self.predictor = grpo, rewards, predictor
        self.ref_model = ref_model and self.prepare_reference(ref_model)
        self.epsilon_high = grpo.epsilon_high if grpo.epsilon_high is not None else grpo.epsilon
        self._rollouts: dict[tuple[int, ...], Rollout] = {}
        self._step_metrics: dict[str, list[float]] = defaultdict(list)  # this optimizer step's, for the watch
        self.drift = DriftWatch(grpo.drift_window)
        self.add_callback(WatchDrift(self))

    def _get_train_sampler(self, train_dataset=None):
        if self.grpo.num_iterations == 1:
            return super()._get_train_sampler(train_dataset)
        a = self.args
        block = a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size
        return RepeatBlocks(len(self.train_dataset), block, self.grpo.num_iterations, a.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        key = tuple(item["index"] for item in inputs)
        rollout = self._rollouts.get(key)
        if rollout is None:
            if len(self._rollouts) >= self.args.gradient_accumulation_steps:
                self._rollouts.clear()  # a new block of prompts: the old rollouts are spent
            rollout = self._rollout(model, inputs)
            if self.grpo.num_iterations > 1:
                self._rollouts[key] = rollout
        self._tokens += rollout.inputs["attention_mask"].sum()
        self.keepalive.expect(
            self.media_kinds - ("pixel_values" in rollout.inputs) - ("pixel_values_videos" in rollout.inputs)
        )
        logps = self._logps(model, rollout)
        old = rollout.old_logps if rollout.old_logps is not None else logps.detach()
        loss, stats = grpo_loss(
            logps,
            old,
            rollout.advantages,
            rollout.completion_mask,
            self.grpo.epsilon,
            self.epsilon_high,
            self.grpo.beta,
            rollout.ref_logps,
            self.grpo.loss_type,
            self.grpo.max_new_tokens,
        )
        self.record(stats, "train")
        for name, value in stats.items():
            self._step_metrics[name].append(value)
        return (loss, None) if return_outputs else loss

    # -- rollout -------------------------------------------------------------------------------
    @torch.no_grad()
    def _rollout(self, model, items: list[dict]) -> Rollout:
        g = self.grpo
        policy = self.accelerator.unwrap_model(model)
        prompts = [item["prompt"] for item in items for _ in range(g.num_generations)]
        batch = self.predictor.batch(prompts, policy)
        was_training = policy.training
        policy.eval()
        try:
            from transformers.integrations import is_deepspeed_zero3_enabled

            with self._vision_once(model):
                out = policy.generate(
                    **batch,
                    do_sample=True,
                    temperature=g.temperature,
                    top_p=g.top_p,
                    top_k=g.top_k,
                    max_new_tokens=g.max_new_tokens,
                    eos_token_id=self.predictor.stop_ids(),
                    pad_token_id=self.predictor.processor.tokenizer.pad_token_id,
                    use_cache=True,
                    synced_gpus=is_deepspeed_zero3_enabled(),
                    suppress_tokens=self._media_ids(),
                )
        finally:
            policy.train(was_training)
        completion = out[:, batch["input_ids"].shape[1] :]
        mask = completion_mask(completion, self.predictor.stop_ids())
        texts = [self.predictor.decode(row) for row in completion.tolist()]
        advantages = self._score(items, texts, mask)
        inputs = {
            "input_ids": torch.cat([batch["input_ids"], completion], dim=1),
            "attention_mask": torch.cat([batch["attention_mask"], mask.long()], dim=1),
            "mm_token_type_ids": torch.cat([batch["mm_token_type_ids"], torch.zeros_like(completion)], dim=1),
            **{k: batch[k] for k in PIXEL_KEYS if k in batch},
        }
        rollout = Rollout(inputs, completion, mask.to(torch.float32), advantages.to(completion.device))
        if g.num_iterations > 1:  # the sampling policy's log-probabilities, before this batch's updates
            rollout.old_logps = self._logps(model, rollout)
        if g.beta:
            rollout.ref_logps = self._ref_logps(policy, rollout)
        return rollout

    def _media_ids(self) -> list[int]:
        """Image / video span tokens, never sampled: the forward would take one in an answer for a
        visual feature that does not exist (features and image tokens would not match)."""
        chat = self.family.chat
        tokens = [t for t in (chat.image_open, chat.image_pad, chat.image_close, chat.video_pad) if t]
        return self.predictor.processor.tokenizer.convert_tokens_to_ids(tokens)

    def _score(self, items: list[dict], texts: list[str], mask: torch.Tensor) -> torch.Tensor:
        """Rewards of the answers (logged per reward and in sum), as group-relative advantages."""
        g = self.grpo.num_generations
        opened = self.family.thinking and self.family.generation_prompt(self.predictor.thinking).endswith(
            self.family.chat.think.open + "\n"
        )
        answers = [self.predictor.split(t) for t in texts]
        samples = [
            dict(items[k // g]["sample"], reasoning=a.reasoning, raw=t, think_opened=bool(opened))
            for k, (a, t) in enumerate(zip(answers, texts, strict=True))
        ]
        refs = [s["reference"] for s in samples]
        scores = torch.tensor(
            [reward([a.text for a in answers], refs, samples) for reward in self.rewards], dtype=torch.float32
        ).T  # (answers, rewards)
        weights = torch.tensor([r.weight for r in self.rewards], dtype=torch.float32)
        total = scores @ weights
        metrics = {}
        for j, reward in enumerate(self.rewards):
            metrics[f"reward/{reward.name}"] = scores[:, j].mean().item()
            metrics[f"reward/{reward.name}_group_std"] = scores[:, j].view(-1, g).std(1).mean().item()
        std = total.view(-1, g).std(1)
        metrics["reward"] = total.mean().item()
        metrics["reward_group_std"] = std.mean().item()
        metrics["frac_reward_zero_std"] = (std < 1e-6).float().mean().item()
        metrics["completion_length"] = mask.sum(1).float().mean().item()
        self.record(metrics, "train")
        self._step_metrics["reward"].append(total.mean().item())
        self._step_metrics["completion_length"].append(mask.sum(1).float().mean().item())
        return group_advantages(total, g, self.grpo.scale_rewards)

    def _logps(self, model, rollout: Rollout) -> torch.Tensor:
        with self._vision_once(model):
            return token_logps(model, rollout.inputs, rollout.completion_ids, self.grpo.temperature)

    def _vision_once(self, model):
        """The rows repeat each prompt's media once per sampled answer: the tower runs once per prompt."""
        visual = self._base_model(model).get_submodule(self.family.paths.vision)
        return vision_once(visual, self.grpo.num_generations, "each")

    def _ref_logps(self, policy, rollout: Rollout) -> torch.Tensor:
        if self.ref_model is not None:
            return self._logps(self.ref_model, rollout)
        with policy.disable_adapter():  # LoRA / Q-LoRA: the base model is the reference
            return self._logps(policy, rollout)

    # -- evaluation and logs ---------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Task metrics of generated answers on `data.eval` (GRPO has no eval loss)."""
        from transformers.integrations import is_deepspeed_zero3_enabled

        scores = self.task_eval(self._base_model(self.model), synced_gpus=is_deepspeed_zero3_enabled())
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in scores.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class WatchDrift(TrainerCallback):
    """Feeds each optimizer step's mean reward, KL and answer length to the trainer's `DriftWatch` and
    logs its warning (first rank); the reward's first and last steps at the end of the run."""

    def __init__(self, trainer: GRPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        step, t._step_metrics = t._step_metrics, defaultdict(list)
        if not step.get("reward") or not state.is_world_process_zero:
            return  # a step that reused its rollouts (num_iterations > 1) has no new rewards

        def mean(key: str) -> float | None:
            return sum(step[key]) / len(step[key]) if step.get(key) else None

        warning = t.drift.add(state.global_step, mean("reward"), mean("kl"), mean("completion_length"))
        if warning:
            log.warning(f"GRPO may be drifting: {warning}")

    def on_train_end(self, args, state, control, **kwargs):
        summary = self.trainer.drift.summary()
        if summary and state.is_world_process_zero:
            log.info(f"GRPO: {summary}")


def completion_mask(completion: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1 on each answer's tokens up to and including its first stop token (all of it when none)."""
    is_stop = torch.isin(completion, torch.tensor(stop_ids, device=completion.device))
    first = torch.where(is_stop.any(1), is_stop.int().argmax(1), completion.shape[1] - 1)
    return (torch.arange(completion.shape[1], device=completion.device)[None] <= first[:, None]).long()


def run_grpo(run: Run) -> TrainResult:
    """Check the prompts, build the policy (and a frozen reference for full fine-tuning with beta),
    train on sampled answers, finish like an SFT run."""
    cfg, family, processor = run.cfg, run.family, run.processor
    check_vllm(cfg.grpo)
    rewards = load_rewards(cfg.grpo.rewards)  # a bad 'module:function' fails before the data check
    datasets, reports = {}, {}
    for split in ("train", "eval") if cfg.data.eval else ("train",):
        with run.args.main_process_first(local=True, desc="prompt check"):  # one rank per node checks
            sources, reports[split], order = check_split(
                prompt_rules(cfg),
                cfg.data,
                processor,
                cfg.train.seed,
                split,
                "GRPO prompt check",
                CACHE_DIR,
                progress=is_main_process() and split == "train",
            )
        log.info(
            f"GRPO prompt check ({split}):\n" + format_report(reports[split], cfg.data.max_length, limit=20)
        )
        datasets[split] = PromptDataset(
            sources, reports[split].plan, order, processor, cfg.grpo.thinking, cfg.data.allow_urls
        )

    g = cfg.grpo
    frozen = bool(g.beta) and cfg.train.mode == "full"  # LoRA's reference is the adapter switched off
    policy = build_policy(
        run,
        f"GRPO ({g.num_generations} answers per prompt, rewards "
        f"{', '.join(f'{r.name} x {r.weight:g}' for r in rewards)})",
        "none (beta 0)" if not g.beta else "a frozen copy" if frozen else "the adapter switched off",
    )
    if family.thinking and g.thinking is not None:  # None: the template's default, inference's too
        policy.meta.update(thinking=g.thinking, thinking_why=f"grpo.thinking: {str(g.thinking).lower()}")
    trainer = GRPOTrainer(
        **trainer_kwargs(run, policy, reports["train"].plan.media_kinds()),
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("eval"),
        data_collator=as_list,
        group_by_length=cfg.data.group_by_length,
        task_eval=TaskEval(cfg.eval, [Source(s) for s in cfg.data.eval], processor, family, g.thinking)
        if cfg.data.eval
        else None,
        grpo=g,
        rewards=rewards,
        predictor=Predictor(None, processor, family, g.thinking),
        ref_model=frozen_copy(cfg, family) if frozen else None,
    )
    keys = ("reward", *(f"reward/{r.name}" for r in rewards)) if len(rewards) > 1 else ("reward",)
    return fit(run, policy, trainer, curves={"rewards.png": (keys, "GRPO rewards (mean)")})


def check_vllm(g: GRPOConfig) -> None:
    """`grpo.use_vllm` needs a CUDA GPU and vllm; refused here, before anything loads."""
    if not g.use_vllm:
        return
    if not torch.cuda.is_available():
        raise RuntimeError("'grpo.use_vllm: true' needs a CUDA GPU; on CPU the policy's generate() samples")
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise RuntimeError("'grpo.use_vllm: true' but vllm is not installed: pip install vllm") from None
    raise NotImplementedError(
        "'grpo.use_vllm: true': vLLM rollouts are not wired in this version; set it to false "
        "(the policy's own generate() samples the groups)"
    )


METHOD = Method(
    "grpo",
    run_grpo,
    honours=(
        "data.group_by_length",
        "eval.generate",
        "eval.task",
        "eval.max_new_tokens",
        "eval.limit",
        "eval.batch_size",
        "data.reasoning_effort",
        "grpo.*",
    ),
    summary="answers sampled per prompt, scored by rewards",
)
