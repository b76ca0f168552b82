"""The training dataset: checked samples in mixed order, encoded on access (in loader workers).

`build_dataset` runs the data check first (cached by file fingerprint) and refuses to go on when
any sample has an error, so a run never dies midway on bad data. Each encoded sample must have
exactly the length the check computed; a mismatch (the classic "image features and image tokens
do not match") is caught here, naming the sample, instead of inside the model.

A checked sample can still fail to load later (its image deleted or rewritten during a long run).
`data.on_load_error` decides: "stop" ends the run with `file:line (id X): what`; "skip" logs the
sample once and trains on a stand-in of the same token length (else the nearest shorter, else the
nearest longer), so length groups and packed rows stay as planned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .check import CheckReport, SampleRules, error_message
from .checking import check_split
from .clips import load_clip, plan_clip
from .encode import Encoded, encode
from .images import load_for
from .plan import Plan, PlanItem
from .readers import DataError
from .sources import Source

if TYPE_CHECKING:
    from ..config import DataConfig
    from ..models.processor import VLProcessor

CACHE_DIR = Path.home() / ".cache" / "qwenvl_ft" / "data-check"
log = logging.getLogger("qwenvl_ft")


class SampleLoadError(DataError):
    """A checked sample failed to load during training, with data.on_load_error: stop."""

    def __init__(self, message: str):
        # From a loader worker, torch raises this type again in the main process with the worker's
        # whole traceback as the message ("Caught SampleLoadError in DataLoader worker process 0.
        # Original Traceback ... SampleLoadError: <message>"): keep the message a person needs.
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class SFTDataset(Dataset):
    """Checked samples in `order` (positions in the check's `plan`), encoded on access."""

    def __init__(
        self,
        sources: list[Source],
        plan: Plan,
        order: np.ndarray,
        processor: VLProcessor,
        supervise: str,
        allow_urls: bool,
        on_load_error: Literal["stop", "skip"] = "stop",
    ):
        self.sources, self.plan, self.order, self.processor = sources, plan, order, processor
        self.supervise, self.allow_urls, self.on_load_error = supervise, allow_urls, on_load_error
        # Samples that failed to load, in shared memory: loader workers see each other's failures, a
        # failure is logged once per run, and the training process can count them at the end.
        self.failed = torch.zeros(len(order) if on_load_error == "skip" else 0, dtype=torch.uint8)
        self.failed.share_memory_()
        self._by_length: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.order)

    def item(self, i: int) -> PlanItem:
        return self.plan[int(self.order[i])]

    def lengths(self) -> np.ndarray:
        """Token lengths in dataset order, known without encoding (for length grouping and packing)."""
        return self.plan.lengths[self.order]

    def __getitem__(self, i: int) -> Encoded:
        if self.on_load_error == "stop":
            try:
                return self._encode(self.item(i))
            except Exception as e:
                raise SampleLoadError(
                    f"{self._error(self.item(i), e)} (it passed the data check, so the data changed since; "
                    "data.on_load_error: skip trains on without such samples)"
                ) from None
        for j in self._candidates(i):
            if self.failed[j]:
                continue
            try:
                return self._encode(self.item(j))
            except Exception as e:
                self.failed[j] = 1
                log.warning(
                    f"skipped {self._error(self.item(j), e)} (data.on_load_error: skip; "
                    f"{self.skipped()} sample(s) skipped so far)"
                )
        raise SampleLoadError("no sample of the dataset loads (data.on_load_error: skip); see the log")

    def skipped(self) -> int:
        """Samples that failed to load so far, over every loader worker of this process."""
        return int(self.failed.sum())

    def _encode(self, item: PlanItem) -> Encoded:
        conv = self.sources[item.source].conversation(item.index)  # a DataError names the sample
        try:
            conv.turns = conv.turns[: item.turns]
            segments = [s for t in conv.turns for s in t.segments]
            images = [
                load_for(self.processor, s.value, self.allow_urls) for s in segments if s.kind == "image"
            ]
            videos = [
                load_clip(plan_clip(s.value, self.processor), self.processor)
                for s in segments
                if s.kind == "video"
            ]
            enc = encode(conv, self.processor, images, self.supervise, videos)
        except Exception as e:
            raise DataError(error_message(e), conv.id) from None
        if len(enc.input_ids) != item.length:
            raise DataError(
                f"encoded {len(enc.input_ids)} tokens but the data check counted {item.length}; "
                "the data changed since it was checked, or this is a bug",
                conv.id,
            )
        return enc

    def _error(self, item: PlanItem, e: Exception) -> str:
        """'file:line (id X): what' (`_encode` raises DataError with the location; anything else is a bug)."""
        return (
            str(e)
            if isinstance(e, DataError)
            else f"{self.sources[item.source].where(item.index)}: {error_message(e)}"
        )

    def _candidates(self, i: int) -> Iterator[int]:
        """i, then stand-ins: same token length first, then shorter (nearest first: it still fits i's
        packed row), then longer; dataset order among equals, so every worker picks the same one."""
        yield i
        lengths = self.lengths().astype(np.int64)
        if self._by_length is None:
            self._by_length = np.lexsort((np.arange(len(lengths)), lengths))  # by length, then position
        order, n = self._by_length, lengths[i]
        keyed = lengths[order] * len(order) + order  # (length, position) as one sortable number
        pos = int(np.searchsorted(keyed, n * len(order) + i))
        up = pos + 1
        while up < len(order) and lengths[order[up]] == n:
            yield int(order[up])
            up += 1
        yield from (int(order[k]) for k in range(pos - 1, -1, -1))
        yield from (int(order[k]) for k in range(up, len(order)))


def build_dataset(
    data: DataConfig,
    processor: VLProcessor,
    seed: int,
    cache_dir: Path | None = CACHE_DIR,
    progress: bool = True,
    split: str = "train",
) -> tuple[SFTDataset, CheckReport]:
    """Check every sample of `data.train` (or `data.eval`), then the dataset of usable samples in mixed order."""
    rules = SampleRules(data.max_length, data.overlength, data.supervise, data.allow_urls)
    sources, report, order = check_split(
        rules, data, processor, seed, split, "data check", cache_dir, progress
    )
    dataset = SFTDataset(
        sources, report.plan, order, processor, data.supervise, data.allow_urls, data.on_load_error
    )
    return dataset, report
