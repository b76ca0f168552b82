"""The plan a data check leaves for training: one compact row per usable sample.

Rows live in a numpy structured array (20 bytes a sample), not in Python objects: a 10M-sample mix
plans in 200 MB, loads from the check's cache memory-mapped, and loader workers read it without
copy-on-write growth (a list of objects has every page copied by the reference counts a worker
touches). `plan[i]` gives one row as a `PlanItem` / `PairItem` where a person or a test reads it.

`select` maps one epoch's mixed (source, index) order onto plan rows, as uint32 positions (4 bytes a
sample): the dataset's order. With a JSONL source's 8-byte line offsets (data/index.py), a sample
costs 32 bytes in each process.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

SAMPLE_ROW = np.dtype(
    [("source", "<u2"), ("index", "<u4"), ("turns", "<u2"), ("length", "<u4"),
     ("images", "<u2"), ("videos", "u1"), ("video_frames", "<u4"), ("reasoning", "u1")]
)  # fmt: skip
PAIR_ROW = np.dtype(
    [("source", "<u2"), ("index", "<u4"), ("chosen_length", "<u4"), ("rejected_length", "<u4"),
     ("images", "<u2"), ("videos", "u1"), ("video_frames", "<u4"), ("reasoning", "u1")]
)  # fmt: skip

RETRIEVAL_ROW = np.dtype(
    [("source", "<u2"), ("index", "<u4"), ("length", "<u4"), ("items", "<u2"),
     ("images", "<u2"), ("videos", "u1"), ("video_frames", "<u4")]
)  # fmt: skip


@dataclass
class PlanItem:
    """One usable sample: where it is and what its encoding must be."""

    source: int
    index: int
    turns: int
    """Turns kept (fewer than the sample has when it was truncated)."""
    length: int
    """Exact token count, visual tokens included: the encoder must produce exactly this."""
    images: int
    videos: int = 0
    video_frames: int = 0
    reasoning: int = 0
    """1 when an answer's think block shows reasoning (thinking generations; `trained_thinking`)."""


@dataclass
class PairItem:
    """A checked pair: where it is and the exact token counts its encoding must have."""

    source: int
    index: int
    chosen_length: int
    rejected_length: int
    images: int
    videos: int = 0
    video_frames: int = 0
    reasoning: int = 0
    """1 when the chosen answer's think block shows reasoning."""

    @property
    def length(self) -> int:
        """Prompt + the longer answer: the longest row the pair puts in a batch."""
        return max(self.chosen_length, self.rejected_length)


@dataclass
class RetrievalPlanItem:
    """A checked retrieval sample (data/retrieval.py): where it is and its inputs' token counts."""

    source: int
    index: int
    length: int
    """Tokens of its longest model input (query, document, or query + document for the reranker)."""
    items: int
    """Model inputs it makes: 2 + negatives (embedding), 1 + negatives (reranker)."""
    images: int
    videos: int = 0
    video_frames: int = 0


ITEMS = {SAMPLE_ROW: PlanItem, PAIR_ROW: PairItem, RETRIEVAL_ROW: RetrievalPlanItem}


class Plan:
    """Usable samples of a check in (source, index) order, a row each (module docstring)."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows
        self.item_type = ITEMS[rows.dtype]

    @classmethod
    def empty(cls, dtype: np.dtype = SAMPLE_ROW) -> Plan:
        return cls(np.zeros(0, dtype=dtype))

    @classmethod
    def of(cls, items: list, dtype: np.dtype = SAMPLE_ROW) -> Plan:
        """A plan from items (tests, small plans)."""
        names = dtype.names
        return cls(np.array([tuple(getattr(it, n) for n in names) for it in items], dtype=dtype))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        return self.item_type(**{f.name: int(row[f.name]) for f in fields(self.item_type)})

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and np.array_equal(self.rows, other.rows)

    def column(self, name: str) -> np.ndarray:
        return self.rows[name]

    @property
    def lengths(self) -> np.ndarray:
        """Token lengths (uint32, 4 bytes a sample): a pair's is its prompt + longer answer."""
        if "length" in self.rows.dtype.names:
            return np.ascontiguousarray(self.rows["length"])
        return np.maximum(self.rows["chosen_length"], self.rows["rejected_length"])

    def media_kinds(self) -> int:
        """How many kinds of media (images, videos) the plan's samples hold: vision-tower calls per step."""
        return int(bool(len(self) and self.rows["images"].any())) + int(
            bool(len(self) and self.rows["videos"].any())
        )

    def save(self, path: Path) -> None:
        np.save(path, self.rows)

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls(np.load(path, mmap_mode="r"))


def row(dtype: np.dtype, **values: int) -> tuple:
    """One plan row's values in `dtype`'s order, each checked to fit its field."""
    out = []
    for name in dtype.names:
        v, kind = values[name], dtype[name]
        if not 0 <= v <= np.iinfo(kind).max:
            raise ValueError(f"{name} {v} does not fit the plan's {kind} field")
        out.append(v)
    return tuple(out)


def select(plan: Plan, order: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Positions in `plan` of one epoch's (source, index) rows (`sources.mix`), the unusable left out.

    sizes: the number of samples of each source, which makes (source, index) one sortable key."""
    offsets = np.cumsum([0] + list(sizes), dtype=np.int64)
    keys = offsets[plan.rows["source"].astype(np.int64)] + plan.rows["index"]
    wanted = offsets[order[:, 0]] + order[:, 1] if len(order) else np.zeros(0, np.int64)
    pos = np.searchsorted(keys, wanted)
    found = pos < len(keys)
    found[found] = keys[pos[found]] == wanted[found]
    return pos[found].astype(np.uint32)
