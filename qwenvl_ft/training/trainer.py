"""The Hugging Face `Trainer` with what vision-language fine-tuning needs on top:

- optimizer groups with separate learning rates for vision tower, merger and language model;
- the vision tower runs on every rank every step (a zero-weighted dummy image when a batch has
  none), so ZeRO-3 / FSDP never hang on batches that mix samples with and without images;
- tokens per second and peak memory in every log line.
"""

from __future__ import annotations

import resource
import time

import torch
from transformers import Trainer

from ..models.base import ModelFamily
from .modules import param_groups


class VLTrainer(Trainer):
    def __init__(
        self, *args, family: ModelFamily, vision_lr: float | None, merger_lr: float | None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.family = family
        self.vision_lr, self.merger_lr = vision_lr, merger_lr
        self._tokens = 0
        self._last_log = time.perf_counter()

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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._tokens += inputs["attention_mask"].sum()  # a tensor: no device sync on every step
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training and "pixel_values" not in inputs:
            loss = loss + self.family.vision_keepalive(self._base_model(model))
        return (loss, outputs) if return_outputs else loss

    def _base_model(self, model):
        model = self.accelerator.unwrap_model(model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now = time.perf_counter()
            logs["tokens_per_s"] = round(
                float(self._tokens) * self.args.world_size / max(now - self._last_log, 1e-9), 1
            )
            logs["peak_mem_gb"] = round(peak_memory_gb(), 3)
            self._tokens, self._last_log = 0, now
        super().log(logs, start_time)


def peak_memory_gb() -> float:
    """Peak GPU memory allocated on this rank, or the process's peak resident memory on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
