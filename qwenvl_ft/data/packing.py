"""Padding-free packing: checked samples placed side by side in rows of `pack_length` tokens.

Each sample in a row keeps everything it would have alone:
- attention stays inside the sample: positions restart at 0 for every sample, and transformers
  turns those restarts into a block-causal mask (SDPA / eager) or `cu_seqlens` (flash attention);
- rotary positions are the sample's own, computed by the family's rules (3-D mRoPE for Qwen2-VL
  and later, 1-D for the first generation);
- the first token of each sample gets no target, so no label crosses a boundary, and the loss
  is the mean over the same supervised tokens as an unpacked batch;
- layers whose state runs along the row outside attention (linear attention: a short convolution
  and a recurrent state) learn the boundaries from `sample_index`, which sample of its row each
  token belongs to. Every packed batch carries it; models without such layers ignore it, and
  families with them install its use on the model (`ModelFamily.isolate_packed_samples`).

Bins come from best-fit-decreasing over the token lengths the data check already computed, so
packing reads no image. The bins depend only on the lengths and the seed: a resumed run gets the
same rows and the Trainer's seeded sampler skips the ones already seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from .collate import media
from .encode import IGNORE, Encoded

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from ..models.base import ModelFamily
    from .dataset import SFTDataset


def pack_bins(lengths: list[int], capacity: int, seed: int) -> list[list[int]]:
    """Group sample indices into bins whose total length is at most `capacity`.

    Best-fit decreasing: longest samples first, each into the fullest bin it still fits. Ties
    between equal lengths are broken by a seeded shuffle, so different seeds give different rows.
    """
    # Python ints: the data check's lengths are an unsigned numpy array, whose negation wraps around.
    lengths = [int(n) for n in lengths]
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(
            f"{len(too_long)} sample(s) are longer than the pack length {capacity} "
            f"(sample {too_long[0]}: {lengths[too_long[0]]} tokens)"
        )
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: the shuffle decides among equal lengths
    free = _FreeSpace(capacity)
    bins: list[list[int]] = []
    for i in order:
        b = free.take(lengths[i])  # the bin with the least room that still fits
        if b is None:
            b, room = len(bins), capacity
            bins.append([])
        else:
            room = free.room_of(b)
        bins[b].append(i)
        free.add(b, room - lengths[i])
    return bins


class _FreeSpace:
    """Open bins indexed by the room they have left: smallest room >= n in O(log capacity)."""

    def __init__(self, capacity: int):
        self.size = capacity + 1
        self.tree = [0] * (self.size + 1)  # Fenwick tree of how many bins have each room
        self.by_room: list[list[int]] = [[] for _ in range(self.size)]
        self.room: dict[int, int] = {}

    def _update(self, room: int, delta: int) -> None:
        i = room + 1
        while i <= self.size:
            self.tree[i] += delta
            i += i & -i

    def _prefix(self, room: int) -> int:  # bins with room <= `room`
        i, total = room + 1, 0
        while i > 0:
            total += self.tree[i]
            i -= i & -i
        return total

    def add(self, b: int, room: int) -> None:
        self.room[b] = room
        if room > 0:
            self.by_room[room].append(b)
            self._update(room, 1)

    def room_of(self, b: int) -> int:
        return self.room[b]

    def take(self, n: int) -> int | None:
        """Remove and return a bin with the smallest room >= n (None when none fits)."""
        target = self._prefix(n - 1) + 1  # rank of the first bin with room >= n
        if target > self._prefix(self.size - 1):
            return None
        pos, step = 0, 1 << self.size.bit_length()
        while step:  # Fenwick descent: the largest index whose prefix count is < target
            if pos + step <= self.size and self.tree[pos + step] < target:
                pos += step
                target -= self.tree[pos]
            step >>= 1
        room = pos  # tree index pos + 1 holds room `pos`
        b = self.by_room[room].pop()
        self._update(room, -1)
        return b


class PackedDataset(Dataset):
    """Rows of packed samples over an `SFTDataset`; item i is bin i's samples, encoded, with positions."""

    def __init__(
        self,
        samples: SFTDataset,
        pack_length: int,
        seed: int,
        family: ModelFamily,
        model_config: PretrainedConfig,
    ):
        self.samples, self.pack_length = samples, pack_length
        self.family, self.model_config = family, model_config
        bins = pack_bins(samples.lengths(), pack_length, seed)
        # Held as one array of members and one of row starts: 4 bytes a sample, not a list per row
        # (55 bytes a sample; a million samples pack in about 7 s).
        self.members = np.fromiter((j for b in bins for j in b), dtype=np.uint32, count=sum(map(len, bins)))
        self.starts = np.cumsum([0] + [len(b) for b in bins], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def row(self, i: int) -> list[int]:
        """The samples of row i."""
        return self.members[self.starts[i] : self.starts[i + 1]].tolist()

    def lengths(self) -> np.ndarray:
        sample_lengths = np.asarray(self.samples.lengths(), dtype=np.int64)
        return (
            np.add.reduceat(sample_lengths[self.members], self.starts[:-1])
            if len(self)
            else sample_lengths[:0]
        )

    def efficiency(self) -> float:
        """Real tokens / row capacity over all rows."""
        return float(self.lengths().sum()) / (len(self) * self.pack_length)

    def __getitem__(self, i: int) -> list[tuple[Encoded, torch.Tensor]]:
        out = []
        for j in self.row(i):
            enc = self.samples[j]
            positions = self.family.position_ids(
                self.model_config,
                torch.tensor(enc.input_ids),
                torch.tensor(enc.mm_token_type_ids),
                image_grid_thw=enc.image_grid_thw,
                video_grid_thw=enc.video_grid_thw,
                second_per_grid_ts=enc.second_per_grid_ts,
            )
            out.append((enc, positions))
        return out


@dataclass
class PackingCollator:
    """Rows of packed samples -> model inputs with `position_ids`, `sample_index` and no attention mask.

    position_ids is (4, rows, tokens) for mRoPE generations: the per-sample text positions that
    transformers reads to keep attention inside each sample, then the three mRoPE rows; and
    (rows, tokens) for 1-D rotary. sample_index (rows, tokens) numbers the samples of each row
    from 0. Rows of one batch are padded to the longest with a dummy sample of its own (own
    positions and index, no targets), so padding never joins a real sample.
    """

    pad_token_id: int

    def __call__(self, rows: list[list[tuple[Encoded, torch.Tensor]]]) -> dict[str, torch.Tensor | bool]:
        built = [self._row(row) for row in rows]
        longest = max(r["input_ids"].numel() for r in built)
        keys = ("input_ids", "labels", "mm", "text", "rope", "sample")
        batch: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        for r in built:
            pad = longest - r["input_ids"].numel()
            batch["input_ids"].append(_pad(r["input_ids"], pad, self.pad_token_id))
            batch["labels"].append(_pad(r["labels"], pad, IGNORE))
            batch["mm"].append(_pad(r["mm"], pad, 0))
            batch["text"].append(torch.cat([r["text"], torch.arange(pad)]))
            batch["rope"].append(torch.cat([r["rope"], torch.arange(pad).expand(r["rope"].size(0), -1)], 1))
            batch["sample"].append(_pad(r["sample"], pad, int(r["sample"][-1]) + 1))
        text = torch.stack(batch["text"])
        rope = torch.stack(batch["rope"], dim=1)  # (R, rows, tokens)
        out = {
            "input_ids": torch.stack(batch["input_ids"]),
            "labels": torch.stack(batch["labels"]),
            "mm_token_type_ids": torch.stack(batch["mm"]),
            "position_ids": text if rope.size(0) == 1 else torch.cat([text[None], rope]),
            "sample_index": torch.stack(batch["sample"]),
            # With a KV cache transformers skips the per-sample mask and attention would cross
            # samples; training never needs the cache.
            "use_cache": False,
        }
        out.update(media([enc for row in rows for enc, _ in row]))
        return out

    @staticmethod
    def _row(row: list[tuple[Encoded, torch.Tensor]]) -> dict[str, torch.Tensor]:
        labels = []
        for enc, _ in row:
            sample_labels = torch.tensor(enc.labels)
            sample_labels[0] = IGNORE  # nothing inside the sample predicts its first token
            labels.append(sample_labels)
        return {
            "input_ids": torch.cat([torch.tensor(enc.input_ids) for enc, _ in row]),
            "labels": torch.cat(labels),
            "mm": torch.cat([torch.tensor(enc.mm_token_type_ids) for enc, _ in row]),
            "text": torch.cat([torch.arange(len(enc.input_ids)) for enc, _ in row]),
            "rope": torch.cat([pos for _, pos in row], dim=1),
            "sample": torch.cat([torch.full((len(enc.input_ids),), i) for i, (enc, _) in enumerate(row)]),
        }


def _pad(t: torch.Tensor, n: int, value: int) -> torch.Tensor:
    return torch.cat([t, torch.full((n,), value, dtype=t.dtype)]) if n else t
