"""Training samplers that hold an epoch's order in 4 bytes a sample and resume into it exactly.

`EpochOrder` yields a permutation drawn from a generator seeded with `seed + epoch`: the order
accelerate's `SeedableRandomSampler` gives the Trainer's random sampler (the same `torch.randperm`
draw), so an unpacked, ungrouped run sees its samples in the same order as before, but held as int32
instead of torch's list of Python ints (36 bytes a sample: 360 MB for 10M samples in the training
process). With `lengths`, samples of similar length are grouped into batches as transformers'
`LengthGroupedSampler` groups them (a random permutation cut into megabatches of up to 50 batches,
each sorted by length, longest first, the longest sample of all first), but from the same seeded
draw instead of the global random state, which a resumed run restores as it was at the checkpoint,
not at the start of the epoch: so a resumed run gets the epoch's order it left, and accelerate's
`SkipBatchSampler` skips its first batches without loading a sample.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def length_grouped(perm: np.ndarray, lengths: np.ndarray, batch_size: int) -> np.ndarray:
    """transformers' `get_length_grouped_indices` on a given permutation, in numpy."""
    n = len(perm)
    mult = min(n // (batch_size * 4), 50) or 1
    size = mult * batch_size
    out = np.empty(n, dtype=np.int32)
    maxima = []
    for start in range(0, n, size):
        mega = perm[start : start + size]
        mega = mega[np.argsort(-lengths[mega], kind="stable")]  # as sorted(reverse=True): stable
        out[start : start + len(mega)] = mega
        maxima.append(lengths[mega[0]])
    k = int(np.argmax(maxima)) * size  # the first megabatch whose first sample is the longest
    out[0], out[k] = out[k], out[0]
    return out


class EpochOrder(Sampler[int]):
    """A seeded order per epoch (module docstring); `lengths` and `batch_size` group by length."""

    def __init__(self, size: int, seed: int, lengths: np.ndarray | None = None, batch_size: int = 1):
        self.size, self.seed, self.batch_size = size, seed, batch_size
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.epoch = 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate's loader) at the start of each epoch."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """This epoch's order as int32."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.size, generator=g).to(torch.int32).numpy()
        return perm if self.lengths is None else length_grouped(perm, self.lengths, self.batch_size)

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        for start in range(0, len(order), 8192):  # small lists at a time, never the whole epoch's
            yield from order[start : start + 8192].tolist()
        self.epoch += 1  # as SeedableRandomSampler: a loader iterated again gets the next epoch


class RepeatBlocks(EpochOrder):
    """Each block of `block` indices of the epoch's order yielded `repeats` times in a row (GRPO's
    `num_iterations`): the same prompts come back for the same micro-batches, whose rollouts the
    trainer then reuses."""

    def __init__(self, size: int, block: int, repeats: int, seed: int):
        super().__init__(size, seed)
        self.block, self.repeats = block, repeats

    def __len__(self) -> int:
        return self.size * self.repeats

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        for start in range(0, self.size, self.block):
            chunk = order[start : start + self.block].tolist()
            for _ in range(self.repeats):
                yield from chunk
        self.epoch += 1
