"""Random-access sources of conversations, and weighted mixing of several of them.

A source is one `DatasetSpec`. Its `path` is
- one file: a JSON list, a JSONL file (indexed by line offsets, read lazily: data/index.py), or a
  Hugging Face dataset file (.parquet, .arrow);
- a `datasets.save_to_disk` folder;
- several shards as one dataset: a glob (`data/shards/*.jsonl`) or a folder of `.jsonl` / `.parquet`
  files (read in name order). Each sample's location names its shard (`shard.jsonl:12`).

Mixing: a dataset's `weight` scales how often it appears per epoch: 2.0 repeats it twice, 0.5
keeps a seeded random half; the order is then shuffled with the same seed.
"""

from __future__ import annotations

import glob
import random
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DatasetSpec
from .conversation import Conversation
from .index import JsonlIndex, fingerprint
from .readers import DataError, parse_json, read_json_list, to_conversation

SHARD_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")


class Shard:
    """One file of a source (or a `save_to_disk` folder), by index."""

    def __init__(self, path: Path, cache_dir: Path | None):
        self.path = path
        self._jsonl: JsonlIndex | None = None
        self._records: Any = None
        if path.is_dir() or path.suffix in (".parquet", ".arrow"):
            self._records = _load_hf(path)
        elif path.suffix == ".jsonl":
            self._jsonl = JsonlIndex(path, cache_dir)
        elif path.suffix == ".json":
            self._records = read_json_list(path)
        else:
            raise DataError(
                f"unsupported dataset type {path.suffix!r} "
                "(expected .json, .jsonl, .parquet, .arrow, a datasets.save_to_disk folder, a folder of "
                ".jsonl / .parquet shards, or a glob of them)",
                str(path),
            )

    def __len__(self) -> int:
        return len(self._jsonl) if self._jsonl is not None else len(self._records)

    def where(self, i: int) -> str:
        return self._jsonl.where(i) if self._jsonl is not None else f"{self.path}[{i}]"

    def record(self, i: int) -> tuple[Any, str]:
        if self._jsonl is not None:
            return parse_json(self._jsonl.raw(i), self.path, self._jsonl.line(i)), self.where(i)
        return self._records[i], self.where(i)

    def fingerprint(self) -> list:
        files = sorted(p for p in self.path.rglob("*") if p.is_file()) if self.path.is_dir() else [self.path]
        return [fingerprint(p) for p in files]


class Source:
    """Conversations of one dataset (one file, a folder, or shards), by index, each with its location."""

    def __init__(self, spec: DatasetSpec, cache_dir: Path | None = None):
        self.spec = spec
        self.path = Path(spec.path)
        self.shards = [Shard(p, cache_dir) for p in shard_paths(spec.path)]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self._bases = [
            Path(spec.image_root) if spec.image_root else (s.path if s.path.is_dir() else s.path.parent)
            for s in self.shards
        ]

    @property
    def base(self) -> Path:
        """The folder relative media paths resolve against (of the first shard)."""
        return self._bases[0]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return k, i - int(self.starts[k])

    def where(self, i: int) -> str:
        """The i-th sample's location, 'file:line' or 'file[i]' (its shard's), known without reading it."""
        k, j = self._locate(i)
        return self.shards[k].where(j)

    def conversation(self, i: int) -> Conversation:
        """The i-th sample; any failure is a `DataError` whose message starts with its location."""
        record, where = self.record(i)
        return to_conversation(record, where, self.spec.format, self._bases[self._locate(i)[0]])

    def record(self, i: int) -> tuple[Any, str]:
        """The i-th raw record and its location; a `DataError` when it cannot be read."""
        k, j = self._locate(i)
        try:
            return self.shards[k].record(j)
        except DataError:
            raise
        except Exception as e:  # the file changed or vanished since it was indexed; a broken arrow row
            raise DataError(f"cannot read the sample ({type(e).__name__}: {e})", self.where(i)) from None

    def base_of(self, i: int) -> Path:
        return self._bases[self._locate(i)[0]]

    def fingerprint(self) -> list:
        """What identifies this source's content for caching: each file's size, mtime and sampled hash."""
        return [f for s in self.shards for f in s.fingerprint()]


def shard_paths(path: str) -> list[Path]:
    """The files (or the one `save_to_disk` folder) a dataset path names (module docstring)."""
    if any(c in path for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
        if not found:
            raise DataError("no file matches this pattern", path)
        return found
    p = Path(path)
    if not p.exists():
        raise DataError("dataset not found", path)
    if not p.is_dir() or any(
        (p / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")
    ):
        return [p]
    shards = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".jsonl", ".parquet"))
    if not shards:
        raise DataError(
            "a folder that is neither a datasets.save_to_disk folder nor holds .jsonl / .parquet shards", path
        )
    return shards


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


def mix(sources: list[Source], seed: int) -> np.ndarray:
    """One epoch's samples as (source, index) rows: each source repeated or subsampled by its weight,
    then shuffled with `seed` (the order of earlier versions, which mixed Python tuples: the same
    random calls on sample numbers)."""
    rng = random.Random(seed)
    offsets = np.cumsum([0] + [len(s) for s in sources])
    order: list[int] = []
    for s, source in enumerate(sources):
        n, base = len(source), int(offsets[s])
        whole, frac = divmod(source.spec.weight, 1.0)
        for _ in range(int(whole)):
            order += range(base, base + n)
        order += [base + i for i in sorted(rng.sample(range(n), round(frac * n)))]
    rng.shuffle(order)
    ids = np.asarray(order, dtype=np.int64)
    which = np.searchsorted(offsets, ids, side="right") - 1
    return np.stack([which, ids - offsets[which]], axis=1) if len(ids) else np.zeros((0, 2), np.int64)
