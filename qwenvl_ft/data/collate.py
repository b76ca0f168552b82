"""Batching encoded samples: padded to the longest sample in the batch (not to max_length).

Every sample keeps its own length, so a packing collator can later place samples side by side
with their own position ids without changing the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .encode import IGNORE, Encoded


@dataclass
class PaddingCollator:
    pad_token_id: int
    pad_to_multiple_of: int | None = 8
    """Round the batch length up (tensor-core friendly shapes); None: exactly the longest sample."""

    def __call__(self, samples: list[Encoded]) -> dict[str, torch.Tensor]:
        longest = max(len(s.input_ids) for s in samples)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long),
            "labels": torch.full((len(samples), longest), IGNORE, dtype=torch.long),
            "attention_mask": torch.zeros((len(samples), longest), dtype=torch.long),
            "mm_token_type_ids": torch.zeros((len(samples), longest), dtype=torch.long),
        }
        for row, s in enumerate(samples):
            n = len(s.input_ids)
            batch["input_ids"][row, :n] = torch.tensor(s.input_ids)
            batch["labels"][row, :n] = torch.tensor(s.labels)
            batch["attention_mask"][row, :n] = 1
            batch["mm_token_type_ids"][row, :n] = torch.tensor(s.mm_token_type_ids)
        batch.update(media(samples))
        return batch


def media(samples: list[Encoded]) -> dict[str, torch.Tensor]:
    """Pixels and grids of the samples' images and videos, in sample order (the order of their tokens)."""
    out = {}
    with_images = [s for s in samples if s.pixel_values is not None]
    if with_images:
        out["pixel_values"] = torch.cat([s.pixel_values for s in with_images])
        if with_images[0].image_grid_thw is not None:  # dynamic-resolution generations
            out["image_grid_thw"] = torch.cat([s.image_grid_thw for s in with_images])
    with_videos = [s for s in samples if s.pixel_values_videos is not None]
    if with_videos:
        out["pixel_values_videos"] = torch.cat([s.pixel_values_videos for s in with_videos])
        out["video_grid_thw"] = torch.cat([s.video_grid_thw for s in with_videos])
        if with_videos[0].second_per_grid_ts is not None:
            out["second_per_grid_ts"] = torch.cat([s.second_per_grid_ts for s in with_videos])
    return out


def padding_efficiency(batch: dict[str, torch.Tensor]) -> float:
    """Real tokens / padded tokens of a batch."""
    return float(batch["attention_mask"].sum()) / batch["attention_mask"].numel()
