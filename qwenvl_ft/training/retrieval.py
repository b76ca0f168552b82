"""What `train.method: embedding` and `reranker` share: the checked retrieval data as batches of model
inputs, the forward that reads the last token, the gather of documents across ranks, the trainer.

A sample becomes its model inputs (`data.retrieval.sequences`): embedding: the query, the positive,
its hard negatives; reranker: (query, positive), then (query, negative) for each negative. A batch is
all of them, left-padded (each input ends at the last column, where both models read it), with the
layout the loss needs: `group_sizes`, the inputs each sample gave, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..config import ConfigError
from ..data.checking import check_split, error_message
from ..data.encode import Encoded
from ..data.plan import Plan
from ..data.readers import DataError
from ..data.retrieval import (
    Kind,
    RetrievalRules,
    encode_input,
    lengths_of,
    pick_negatives,
    sequences,
)
from ..infer import left_padded
from ..models.qwen3_vl_retrieval import MAX_PIXELS, MIN_PIXELS
from ..retrieval import forward_last
from .lifecycle import Run, is_main_process
from .trainer import VLTrainer


class RetrievalDataset:
    """Checked samples in `order`, each as its encoded model inputs (a load failure stops the run, by
    file:line, as for pairs)."""

    def __init__(
        self, sources, plan: Plan, order: np.ndarray, processor, kind: Kind, negatives, seed, allow_urls
    ):
        self.sources, self.plan, self.order = sources, plan, order
        self.processor, self.kind, self.negatives = processor, kind, negatives
        self.seed, self.allow_urls = seed, allow_urls

    def __len__(self) -> int:
        return len(self.order)

    def lengths(self) -> np.ndarray:
        return lengths_of(self.plan.rows[self.order])

    def skipped(self) -> int:
        return 0

    def __getitem__(self, i: int) -> list[Encoded]:
        from ..data.dataset import SampleLoadError

        item = self.plan[int(self.order[i])]
        try:
            sample = self.sources[item.source].sample(item.index)
        except DataError as e:
            raise SampleLoadError(str(e)) from None
        negatives = pick_negatives(sample, self.negatives, self.seed, int(self.order[i]))
        try:
            encoded = [
                encode_input(c, self.processor, self.allow_urls)
                for c in sequences(sample, self.kind, negatives)
            ]
        except Exception as e:
            raise SampleLoadError(f"{sample.id}: {error_message(e)}") from None
        longest = max(len(e.input_ids) for e in encoded)
        if longest > item.length:
            raise SampleLoadError(
                f"{sample.id}: encoded {longest} tokens but the check counted at most {item.length}; "
                "the data changed since it was checked"
            )
        return encoded


@dataclass
class RetrievalCollator:
    """Samples' inputs as one left-padded batch, in sample order, and `group_sizes`."""

    pad_token_id: int

    def __call__(self, samples: list[list[Encoded]]) -> dict[str, torch.Tensor]:
        batch = left_padded([e for s in samples for e in s], self.pad_token_id)
        batch["group_sizes"] = torch.tensor([len(s) for s in samples])
        return batch


def require_retrieval(run: Run) -> None:
    if not run.family.retrieval:
        raise ConfigError(
            f"'train.method: {run.cfg.train.method}': {run.family.title} ({run.family.name}) has no embedding "
            "or reranker models (Qwen3-VL-Embedding and -Reranker are Qwen3-VL checkpoints)"
        )


def build_retrieval_dataset(run: Run, kind: Kind, negatives: int | None, split: str = "train"):
    """Check `data.train` (or `data.eval`) with the retrieval rules; refuse on errors; the usable
    samples, mixed. The processor takes the official pixel budget unless the recipe set one."""
    cfg, processor = run.cfg, run.processor
    if cfg.model.min_pixels is None and cfg.model.max_pixels is None:
        processor.set_pixel_range(MIN_PIXELS, MAX_PIXELS)
    rules = RetrievalRules(cfg.data.max_length, kind, cfg.data.allow_urls)
    from ..data.dataset import CACHE_DIR

    sources, report, order = check_split(
        rules, cfg.data, processor, cfg.train.seed, split, f"{kind} data check", CACHE_DIR,
        progress=is_main_process() and split == "train",
    )  # fmt: skip
    dataset = RetrievalDataset(
        sources, report.plan, order, processor, kind, negatives, cfg.train.seed, cfg.data.allow_urls
    )
    return dataset, report


class _Gather(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's rows (all_reduce) and
    returns them: each document then gets the gradient of every rank's queries, as in one process."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.zeros_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_documents(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows and where this rank's start; gradients reach each rank's own rows from every
    rank's loss (`_Gather`), so the averaged gradient is the one process's of the whole batch.
    Ranks may hold different counts."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local, 0
    rank = dist.get_rank()
    count = torch.tensor([local.shape[0]], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    return _Gather.apply(local, sizes, rank), sum(sizes[:rank])


class RetrievalTrainer(VLTrainer):
    """VLTrainer (optimizer groups, vision keepalive, logging) reading the last token of each input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # a mean over queries: the Trainer divides by accumulation

    def forward_inputs(self, model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states, last logits) of the batch's inputs, vision kept alive under ZeRO-3."""
        self._tokens += inputs["attention_mask"].sum()
        missing = self.media_kinds - ("pixel_values" in inputs) - ("pixel_values_videos" in inputs)
        self.keepalive.expect(missing)
        return forward_last(model, inputs)

    def finish(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], model, return_outputs: bool):
        gathered = {
            k: self.accelerator.gather_for_metrics(v.detach().reshape(1)).mean() for k, v in metrics.items()
        }
        self.record(gathered, "train" if model.training else "eval")
        return (loss, {"scores": loss.detach().reshape(1)}) if return_outputs else loss
