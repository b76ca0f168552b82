"""How much of each training step is spent waiting for data: is the run input-bound?

A step, here, runs from asking the loader for its batches (all the micro-batches of one optimizer
step: the Trainer fetches them together) to `on_step_end`, after the optimizer step. The wait is
the time inside the loader's `next()`: decoding, resizing and collating when the loader workers
are behind (or when there are none), and the copy to the device. Logging, evaluation and
checkpoint saves between steps count in neither, so the share is the loader's cost as the
training step sees it. `VLTrainer` puts the share since the last log line in each line
(`data_wait`, a fraction), and `train()` ends with one line for the whole run, with a hint when
it is above `HINT_ABOVE` and the wait per step above `HINT_MIN_WAIT_S`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from transformers import TrainerCallback

HINT_ABOVE = 0.05
"""A share of step time above which the end-of-run line says what to do about it..."""
HINT_MIN_WAIT_S = 0.02
"""...when each step also waits this long on average: a tiny CPU run that waits 6 ms of a 50 ms step
(12%) has nothing worth fixing; a GPU step of 300 ms that waits 30 ms loses a tenth of its speed."""


class DataWait(TrainerCallback):
    """Clocks the training loader against the steps (VLTrainer wraps the batch fetch with `timed`)."""

    def __init__(self) -> None:
        self._step_start: float | None = None
        self._waited = 0.0  # in the step under way
        self.window = [0.0, 0.0]
        """[wait, step time] since the last log line."""
        self.steps: list[tuple[float, float]] = []
        """(wait, step time) of every optimizer step of the run."""

    def timed(self, iterator: Iterator) -> Iterator:
        """`iterator`, with the time spent in its `next()` counted as waiting."""
        if self._step_start is None:  # the first fetch of a step starts it
            self._step_start = time.perf_counter()
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self._waited += time.perf_counter() - start
            yield item

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_start is not None:
            step = time.perf_counter() - self._step_start
            self.steps.append((self._waited, step))
            self.window[0] += self._waited
            self.window[1] += step
        self._step_start, self._waited = None, 0.0

    def window_share(self) -> float | None:
        """The share of step time spent waiting since the last call; None when no step ended since."""
        wait, total = self.window
        self.window = [0.0, 0.0]
        return wait / total if total > 0 else None

    def _steady(self) -> list[tuple[float, float]]:
        # The first step, which also starts the loader workers, is left out when there are others
        # (a one-off start-up cost, not a steady state).
        return self.steps[1:] if len(self.steps) > 1 else self.steps

    def run_share(self) -> float | None:
        """The share over the run (without its first step)."""
        total = sum(s for _, s in self._steady())
        return sum(w for w, _ in self._steady()) / total if total > 0 else None

    def run_wait(self) -> float:
        """Seconds waited per step on average over the run (without its first step)."""
        steps = self._steady()
        return sum(w for w, _ in steps) / len(steps) if steps else 0.0


def summary(share: float, num_workers: int, image_decode: str, wait_s: float = math.inf) -> str:
    """The end-of-run line: the share, and what lowers it when the share is above `HINT_ABOVE` and
    `wait_s`, the wait per step, above `HINT_MIN_WAIT_S`."""
    line = f"waiting for data: {share:.1%} of the training step time"
    if wait_s < math.inf:
        line += f" ({wait_s * 1000:.0f} ms per step)"
    if share <= HINT_ABOVE or wait_s < HINT_MIN_WAIT_S:
        return line
    hints = [f"raise data.num_workers (now {num_workers}; up to the CPU cores free per GPU)"]
    if image_decode != "draft":
        hints.append("set data.image_decode: draft (large JPEGs decode at reduced scale)")
    hints.append("store images resized to the pixel budget (model.max_pixels) before training")
    return line + ": the run is input-bound; " + ", ".join(hints)
