"""The Hugging Face `Trainer` with what vision-language fine-tuning needs on top:

- optimizer groups with separate learning rates for vision tower, merger and language model;
- a compact seeded sampler (samplers.py): 4 bytes a sample, exact mid-epoch resume, length groups;
- the vision tower runs on every rank every step, as many times as the data has media kinds
  (images, videos): a zero-weighted dummy image stands in for each kind a batch lacks, run
  inside the forward where a real call would be (keepalive.py), so every rank makes the same
  sequence of ZeRO-3 / FSDP gathers and none waits forever on batches that mix images, videos
  and text;
- tokens per second and peak memory in every log line, and a sparse-expert router's
  load-balancing loss (`aux_loss`, already inside the loss) averaged since the last line (through
  the metrics buffer below);
- `get_batch_samples` (the Trainer's fetch of one optimizer step's micro-batches) timed, so each
  log line carries `data_wait`, the share of step time spent waiting for the loader (data_wait.py);
- one metrics buffer for what a method's loss measures (`record`; TRL's `_metrics[mode]`): each log
  line carries the means since the last one, of training or of an evaluation;
- `prepare_reference`: a frozen reference model placed like the policy (DPO, GRPO);
- with `train.sequence_parallel`, the loss of this rank's shard of every sample (sequence_parallel.py);
- with `train.expert_parallel` (a model sharded while it loads), checkpoints that resume: the
  optimizer, scheduler and RNG states the Trainer does not save for such a model (expert_parallel.py).
"""

from __future__ import annotations

import resource
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..models.base import ModelFamily
from ..models.ulysses import SPGroup
from . import expert_parallel
from .data_wait import DataWait
from .keepalive import VisionKeepalive
from .loss import loss_in_head
from .modules import param_groups
from .samplers import EpochOrder
from .sequence_parallel import group_loaders, shard_labels, token_loss_sum
from .task_eval import TaskEval


class VLTrainer(Trainer):
    def __init__(
        self,
        *args,
        family: ModelFamily,
        vision_lr: float | None,
        merger_lr: float | None,
        group_by_length: bool = False,
        loss: str = "standard",
        task_eval: TaskEval | None = None,
        media_kinds: int = 1,
        sequence_parallel: SPGroup | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.sp = sequence_parallel
        if self.sp is not None:  # the N ranks of a group read the same batches
            group_loaders(self.accelerator, self.sp)
        if self.is_distributed_loading_by_transformers:
            # Expert parallelism: every rank reads its own batch, so the loss is normalised by the
            # whole step's supervised-token count (the Trainer's, over ranks and accumulation), as
            # one process computes it; transformers turns this count off for the MoE models, which
            # then average each rank's own mean (expert_parallel.py).
            self.model_accepts_loss_kwargs = True
        self._order: EpochOrder | None = None
        """The training sampler (`_get_train_sampler`), whose epoch `_run_epoch` sets."""
        self.media_kinds = max(1, media_kinds)
        """Vision-tower calls per step on every rank: 2 when the data has both images and videos."""
        self.family, self.group_by_length, self.loss_impl = family, group_by_length, loss
        self.task_eval = task_eval
        self.vision_lr, self.merger_lr = vision_lr, merger_lr
        self._tokens = 0
        self._metrics: dict[str, dict[str, list]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._last_log = time.perf_counter()
        self.keepalive = VisionKeepalive(family, self._base_model(self.model))
        self.data_wait = DataWait()
        self.add_callback(self.data_wait)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = param_groups(
                self.model,
                self.family.paths,
                self.args.learning_rate,
                self.args.weight_decay,
                self.vision_lr,
                self.merger_lr,
            )
            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            kwargs.pop("lr", None)  # each group carries its own
            self.optimizer = cls(groups, lr=self.args.learning_rate, **kwargs)
        return self.optimizer

    # -- checkpoints of a model sharded while it loads (train.expert_parallel) -------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)  # the weights, gathered (save_only_model)
        if self.is_distributed_loading_by_transformers:
            out = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            expert_parallel.save_state(
                self.model, self.optimizer, self.lr_scheduler, out, self.args.should_save
            )
            self._save_rng_state(str(out))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.is_distributed_loading_by_transformers and not hasattr(self.model, "peft_config"):
            expert_parallel.load_full_weights(self.model, Path(resume_from_checkpoint))
        else:  # an adapter: its LoRA weights are plain tensors, replicated on every rank
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is not None and self.is_distributed_loading_by_transformers:
            expert_parallel.load_state(self.model, self.optimizer, self.lr_scheduler, Path(checkpoint))
        else:
            super()._load_optimizer_and_scheduler(checkpoint)

    def _get_train_sampler(self, train_dataset=None):
        """A seeded order per epoch in 4 bytes a sample that a resumed run skips into exactly (samplers.py);
        with `group_by_length`, batches of similar length from the data check's lengths (nothing is
        encoded to sort), the order still random."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if not self.group_by_length:
            self._order = EpochOrder(len(dataset), seed)
        else:
            self._order = EpochOrder(len(dataset), seed, dataset.lengths(), self.args.train_batch_size)
        return self._order

    def _run_epoch(self, *args, **kwargs):
        # The epoch's order, set here: a run resumed mid-epoch on several processes iterates a
        # SkipBatchSampler around accelerate's BatchSamplerShard, through which neither accelerate's
        # set_epoch nor the Trainer's reaches the sampler, which would replay epoch 0's order.
        if self._order is not None:
            self._order.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        return super().get_batch_samples(self.data_wait.timed(epoch_iterator), num_batches, device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # A tensor: no device sync on every step. Packed rows have no padding to leave out.
        mask = inputs.get("attention_mask")
        tokens = mask.sum() if mask is not None else inputs["input_ids"].numel()
        self._tokens += tokens / self.sp.size if self.sp is not None else tokens  # a group shares its batch
        # Evaluation too: its forwards gather parameters the same way.
        self.keepalive.expect(
            self.media_kinds - ("pixel_values" in inputs) - ("pixel_values_videos" in inputs)
        )
        if self.sp is not None and "labels" in inputs:
            loss, outputs = self._shard_loss(model, inputs, num_items_in_batch)
        elif self.loss_impl == "standard" or "labels" not in inputs:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        else:
            loss, outputs = self._head_loss(model, inputs, num_items_in_batch)
        if getattr(outputs, "aux_loss", None) is not None and model.training:
            # Under expert parallelism each rank's aux_loss is the whole batch's / the rank count.
            scale = self.accelerator.num_processes if self.is_distributed_loading_by_transformers else 1
            self.record({"aux_loss": outputs.aux_loss.detach() * scale}, "train")
        return (loss, outputs) if return_outputs else loss

    def _head_loss(self, model, inputs, num_items_in_batch):
        """The loss computed inside lm_head (chunked or Liger): the full logits never exist.

        Normalised like the model's own loss: by the Trainer's token count over gradient
        accumulation when the model takes loss kwargs, else the mean of this micro-batch.
        """
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        count = num_items_in_batch if self.model_accepts_loss_kwargs else None
        base = self._base_model(model)
        with loss_in_head(base.get_output_embeddings(), labels, count, self.loss_impl):
            outputs = model(**inputs)
        loss = outputs.logits.reshape(())
        if getattr(outputs, "aux_loss", None) is not None:  # MoE router balance, as the model adds it
            loss = loss + base.config.get_text_config().router_aux_loss_coef * outputs.aux_loss
        if self.args.average_tokens_across_devices and count is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: DDP averages it back
        return loss, outputs

    def _shard_loss(self, model, inputs, num_items_in_batch):
        """The loss of this rank's shard of the batch, scaled so that the engine's average over all
        ranks gives one process's gradient (sequence_parallel.py).

        Normalised like the other paths (the Trainer's count over gradient accumulation, which
        counts each group's batch N times when averaged across devices, or this batch's count), and
        times N: a group's N partial gradients add up to the batch's. The router balance loss is
        already the group's (models/ulysses.py): each rank adds it whole, and the gradients through
        its summed statistics add up N times, which the averaged count's scale undoes.
        """
        inputs = dict(inputs)
        targets, total = shard_labels(inputs.pop("labels"), self.sp)
        trainer_count = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        count = num_items_in_batch if trainer_count else total
        base = self._base_model(model)
        if self.loss_impl == "standard":
            outputs = model(**inputs)
            loss = token_loss_sum(outputs.logits, targets) / count
        else:
            with loss_in_head(base.get_output_embeddings(), targets, count, self.loss_impl, shifted=True):
                outputs = model(**inputs)
            loss = outputs.logits.reshape(())
        loss = loss * self.sp.size
        averaged = self.args.average_tokens_across_devices and trainer_count
        if getattr(outputs, "aux_loss", None) is not None:
            coef = base.config.get_text_config().router_aux_loss_coef
            loss = loss + coef * outputs.aux_loss / (self.sp.size if averaged else 1)
        if averaged:
            loss = loss * self.accelerator.num_processes
        return loss, outputs

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """The eval loss, and with `eval.generate` the task metrics of generated answers."""
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.task_eval is not None:
            from transformers.integrations import is_deepspeed_zero3_enabled

            scores = self.task_eval(self._base_model(self.model), synced_gpus=is_deepspeed_zero3_enabled())
            extra = {f"{metric_key_prefix}_{name}": value for name, value in scores.items()}
            self.log(extra)
            metrics.update(extra)  # what metric_for_best_model is read from
        return metrics

    def record(self, metrics: dict[str, float | torch.Tensor], mode: str | None = None) -> None:
        """Add values to the means of the next log line (`mode`: train or eval; default: the model's).
        Tensors are kept as they are (no device sync per step) until the line is written."""
        mode = mode or ("train" if self.model.training else "eval")
        for key, value in metrics.items():
            self._metrics[mode][key].append(
                value.detach().float().reshape(()) if torch.is_tensor(value) else value
            )

    def prepare_reference(self, reference: torch.nn.Module) -> torch.nn.Module:
        """A frozen copy placed like the policy, as TRL places its reference: sharded under ZeRO-3 / FSDP
        (`trl.models.prepare_deepspeed` / `prepare_fsdp`), else on the device."""
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(reference, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            return prepare_fsdp(reference, self.accelerator)
        return self.accelerator.prepare_model(reference, evaluation_mode=True)

    def _base_model(self, model):
        model = self.accelerator.unwrap_model(model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode, prefix = ("train", "") if "loss" in logs else ("eval", "eval_")
        if mode == "train" or any(k.startswith("eval_") for k in logs):
            for key, values in self._metrics[mode].items():
                if values:
                    mean = torch.stack([torch.as_tensor(v, dtype=torch.float32).cpu() for v in values]).mean()
                    logs[prefix + key] = round(mean.item(), 6)
            self._metrics[mode].clear()
        if "loss" in logs:
            now = time.perf_counter()
            logs["tokens_per_s"] = round(
                float(self._tokens) * self.args.world_size / max(now - self._last_log, 1e-9), 1
            )
            logs["peak_mem_gb"] = round(peak_memory_gb(), 3)
            wait = self.data_wait.window_share()
            if wait is not None:
                logs["data_wait"] = round(wait, 3)
            self._tokens, self._last_log = 0, now
        super().log(logs, start_time)


def peak_memory_gb() -> float:
    """Peak GPU memory allocated on this rank, or the process's peak resident memory on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
