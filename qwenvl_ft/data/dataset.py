"""The training dataset: checked samples in mixed order, encoded on access (in loader workers).

`build_dataset` runs the data check first (cached by file fingerprint) and refuses to go on when
any sample has an error, so a run never dies midway on bad data. Each encoded sample must have
exactly the length the check computed; a mismatch (the classic "image features and image tokens
do not match") is caught here, naming the sample, instead of inside the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from .check import CheckReport, PlanItem, check_sources, format_report
from .clips import load_clip, plan_clip
from .encode import Encoded, encode
from .images import load_image
from .readers import DataError
from .sources import Source, mix

if TYPE_CHECKING:
    from ..config import DataConfig
    from ..models.processor import VLProcessor

CACHE_DIR = Path.home() / ".cache" / "qwenvl_ft" / "data-check"


class SFTDataset(Dataset):
    def __init__(
        self,
        sources: list[Source],
        items: list[PlanItem],
        processor: VLProcessor,
        supervise: str,
        allow_urls: bool,
    ):
        self.sources, self.items, self.processor = sources, items, processor
        self.supervise, self.allow_urls = supervise, allow_urls

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        """Token lengths in dataset order, known without encoding (for length grouping and packing)."""
        return [item.length for item in self.items]

    def __getitem__(self, i: int) -> Encoded:
        item = self.items[i]
        conv = self.sources[item.source].conversation(item.index)
        conv.turns = conv.turns[: item.turns]
        segments = [s for t in conv.turns for s in t.segments]
        images = [load_image(s.value, self.allow_urls) for s in segments if s.kind == "image"]
        videos = [
            load_clip(plan_clip(s.value, self.processor), self.processor)
            for s in segments
            if s.kind == "video"
        ]
        enc = encode(conv, self.processor, images, self.supervise, videos)
        if len(enc.input_ids) != item.length:
            raise RuntimeError(
                f"{conv.id}: encoded {len(enc.input_ids)} tokens but the data check counted "
                f"{item.length}; the data changed since it was checked, or this is a bug"
            )
        return enc


def build_dataset(
    data: DataConfig,
    processor: VLProcessor,
    seed: int,
    cache_dir: Path | None = CACHE_DIR,
    progress: bool = True,
    split: str = "train",
) -> tuple[SFTDataset, CheckReport]:
    """Check every sample of `data.train` (or `data.eval`), then the dataset of usable samples in mixed order."""
    sources = [Source(spec) for spec in getattr(data, split)]
    report = check_sources(
        sources,
        processor,
        data.max_length,
        data.overlength,
        data.supervise,
        data.allow_urls,
        cache_dir=cache_dir,
        progress=progress,
    )
    if not report.ok:
        raise DataError(
            f"the data check of data.{split} found {len(report.errors)} error(s); fix them before training "
            f"(qwenvl-ft data check lists them all):\n" + format_report(report, data.max_length, limit=20)
        )
    if not report.plan:
        raise DataError(f"no usable sample in data.{split}: " + format_report(report, data.max_length))
    planned = {(p.source, p.index): p for p in report.plan}
    items = [planned[key] for key in mix(sources, seed) if key in planned]
    return SFTDataset(sources, items, processor, data.supervise, data.allow_urls), report
