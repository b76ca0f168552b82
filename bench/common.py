"""Pieces every benchmark shares: pre-encoded data, a step timer, a quiet Trainer.

Imported as `from common import ...` by the scripts in bench/ (run as `python bench/NAME.py`,
which puts this folder on the import path).
"""

from __future__ import annotations

import time

from torch.utils.data import Dataset
from transformers import TrainerCallback


class ListDataset(Dataset):
    """Pre-encoded samples with their lengths, which is all `PackedDataset` and length grouping read."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]

    def lengths(self) -> list[int]:
        return [len(s.input_ids) for s in self.items]


class StepTimer(TrainerCallback):
    """Seconds per optimizer step (begin -> end) and per loop iteration (end -> end; the first
    iteration counts from its step's begin), one entry per step in both lists."""

    def __init__(self):
        self.step: list[float] = []
        self.loop: list[float] = []
        self._begin = self._end = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.step.append(now - self._begin)
        self.loop.append(now - (self._end if self._end is not None else self._begin))
        self._end = now


def quiet(trainer) -> None:
    """No progress bar or printed logs: the benchmark prints its own JSON."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def planned_peak(recipe, overrides: list[str], measured_gib: float | None) -> dict:
    """The planner's estimate (`qwenvl-ft plan`) for the recipe a side ran, beside its measured peak.

    `allocated_gib` leaves out the planner's overhead terms (CUDA context, allocator margin), which
    `torch.cuda.max_memory_allocated` does not see; `total_gib` is what the planner calls the peak.
    An estimate that cannot be made is recorded as its error, not left out silently.
    """
    from qwenvl_ft.config.loader import load_recipe
    from qwenvl_ft.plan import plan_recipe

    try:
        plan = plan_recipe(load_recipe(recipe, overrides)).plan
    except Exception as e:  # the benchmark's own figures still stand; say why there is no estimate
        return {"error": f"{type(e).__name__}: {e}"}
    overhead = sum(t.gib for t in plan.terms if t.phase == "overhead")
    allocated = plan.total_gib - overhead
    out = {"total_gib": round(plan.total_gib, 2), "allocated_gib": round(allocated, 2)}
    if measured_gib:
        out["measured_allocated_gib"] = round(measured_gib, 2)
        out["ratio_estimate_over_measured"] = round(allocated / measured_gib, 3)
    return out
