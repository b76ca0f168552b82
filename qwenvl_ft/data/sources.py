"""Random-access sources of conversations, and weighted mixing of several of them.

A source is one `DatasetSpec`: a JSON list, a JSONL file (indexed by line offsets, read lazily),
or a Hugging Face dataset stored locally (a `save_to_disk` directory, a .parquet or .arrow file).
Mixing: a dataset's `weight` scales how often it appears per epoch: 2.0 repeats it twice, 0.5
keeps a seeded random half; the order is then shuffled with the same seed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ..config import DatasetSpec
from .conversation import Conversation
from .readers import DataError, JsonlIndex, read_json_list, to_conversation


class Source:
    """Conversations of one dataset file, by index, each with its location for messages."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.path = Path(spec.path)
        self.base = (
            Path(spec.image_root)
            if spec.image_root
            else (self.path if self.path.is_dir() else self.path.parent)
        )
        self._jsonl: JsonlIndex | None = None
        self._records: Any = None
        if not self.path.exists():
            raise DataError("dataset not found", str(self.path))
        if self.path.is_dir() or self.path.suffix in (".parquet", ".arrow"):
            self._records = _load_hf(self.path)
        elif self.path.suffix == ".jsonl":
            self._jsonl = JsonlIndex(self.path)
        elif self.path.suffix == ".json":
            self._records = read_json_list(self.path)
        else:
            raise DataError(
                f"unsupported dataset type {self.path.suffix!r} "
                "(expected .json, .jsonl, .parquet, .arrow or a datasets.save_to_disk folder)",
                str(self.path),
            )

    def __len__(self) -> int:
        return len(self._jsonl) if self._jsonl is not None else len(self._records)

    def where(self, i: int) -> str:
        """The i-th sample's location, 'file:line' or 'file[i]', known without reading it."""
        return self._jsonl.where(i) if self._jsonl is not None else f"{self.path}[{i}]"

    def conversation(self, i: int) -> Conversation:
        """The i-th sample; any failure is a `DataError` whose message starts with its location."""
        record, where = self.record(i)
        return to_conversation(record, where, self.spec.format, self.base)

    def record(self, i: int) -> tuple[Any, str]:
        """The i-th raw record and its location; a `DataError` when it cannot be read."""
        try:
            if self._jsonl is not None:
                return self._jsonl.record(i)
            return self._records[i], self.where(i)
        except DataError:
            raise
        except Exception as e:  # the file changed or vanished since it was indexed; a broken arrow row
            raise DataError(f"cannot read the sample ({type(e).__name__}: {e})", self.where(i)) from None

    def fingerprint(self) -> list:
        """What identifies this source's content for caching: paths, sizes and modification times."""
        files = sorted(p for p in self.path.rglob("*") if p.is_file()) if self.path.is_dir() else [self.path]
        return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _load_hf(path: Path):
    """A local Hugging Face dataset with image columns left undecoded (decoding happens per sample)."""
    import datasets

    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"a DatasetDict without a 'train' split ({', '.join(ds)})", str(path))
            ds = ds["train"]
    elif path.suffix == ".parquet":
        ds = datasets.Dataset.from_parquet(str(path))
    else:
        ds = datasets.Dataset.from_file(str(path))
    return ds.cast(_undecoded(ds.features))


def _undecoded(features):
    import datasets

    def walk(f):
        if isinstance(f, datasets.Image):
            return datasets.Image(decode=False)
        if isinstance(f, dict):
            return {k: walk(v) for k, v in f.items()}
        if isinstance(f, list):
            return [walk(v) for v in f]
        if isinstance(f, (datasets.Sequence, datasets.List)):
            return type(f)(walk(f.feature))
        return f

    return datasets.Features({k: walk(v) for k, v in features.items()})


def mix(sources: list[Source], seed: int) -> list[tuple[int, int]]:
    """(source, index) pairs for one epoch: each source repeated or subsampled by its weight, shuffled."""
    rng = random.Random(seed)
    order: list[tuple[int, int]] = []
    for s, source in enumerate(sources):
        n = len(source)
        whole, frac = divmod(source.spec.weight, 1.0)
        for _ in range(int(whole)):
            order += [(s, i) for i in range(n)]
        order += [(s, i) for i in sorted(rng.sample(range(n), round(frac * n)))]
    rng.shuffle(order)
    return order
