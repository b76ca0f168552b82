"""A warning when reinforcement learning drifts instead of learning.

The worst outcome of a GRPO run is a model that silently gets worse: the policy moves away from its
start (the KL to the reference grows, answers lengthen) while the reward it is trained on does not
rise, typically because the learning rate is too high for the reward's noise or the samples found a
way to game the reward. `DriftWatch` cuts the run into windows of `window` optimizer steps and, at
the end of each window from the second on, compares the per-step mean rewards of this window with
those of the one before (and with the best window so far) by Welch's t-statistic, which copes with
the step-to-step noise of a reward measured on a few prompts:

- "flat while the KL grows": the reward did not rise significantly over the previous window
  (t below 1) while the mean KL grew by half or more and is above 1e-3 (smaller KLs are noise);
- "falling": the reward is significantly below the best earlier window (t below -2), with or
  without a KL term (beta 0 computes none).

It returns the warning's text (the trainer logs it); nothing when the run learns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """One window's steps and the mean and variance of its per-step values."""

    first: int
    last: int
    reward: float
    reward_var: float
    kl: float | None
    length: float


def welch_t(a: Window, b: Window, n: int) -> float:
    """Welch's t-statistic of b's mean reward minus a's, each the mean of n per-step values."""
    se = math.sqrt((a.reward_var + b.reward_var) / n)
    diff = b.reward - a.reward
    if se < 1e-12:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / se


def mean_var(values: list[float]) -> tuple[float, float]:
    """Mean and sample variance (n - 1)."""
    m = sum(values) / len(values)
    return m, sum((v - m) ** 2 for v in values) / max(len(values) - 1, 1)


class DriftWatch:
    """Per-step reward, KL and answer length in; a warning out when the reward stalls or falls while
    the policy drifts (module docstring). `window`: steps per window; 0 switches the watch off."""

    def __init__(self, window: int):
        self.window = window
        self.rewards: list[float] = []
        self.windows: list[Window] = []
        self._steps: list[int] = []
        self._kls: list[float | None] = []
        self._lengths: list[float] = []

    def add(self, step: int, reward: float, kl: float | None, length: float) -> str | None:
        """Record one optimizer step's means; the warning's text when this step closes a window that drifts."""
        self.rewards.append(reward)
        if not self.window:
            return None
        self._steps.append(step)
        self._kls.append(kl)
        self._lengths.append(length)
        if len(self._steps) < self.window:
            return None
        rewards = self.rewards[-self.window :]
        kls = self._kls
        mean, var = mean_var(rewards)
        self.windows.append(
            Window(
                self._steps[0],
                self._steps[-1],
                mean,
                var,
                None if any(k is None for k in kls) else sum(kls) / len(kls),
                sum(self._lengths) / len(self._lengths),
            )
        )
        self._steps, self._kls, self._lengths = [], [], []
        return self.judge()

    def judge(self) -> str | None:
        """The warning for the last closed window against the earlier ones, or None."""
        if len(self.windows) < 2:
            return None
        now, before = self.windows[-1], self.windows[-2]
        best = max(self.windows[:-1], key=lambda w: w.reward)
        where = f"steps {now.first}-{now.last}"
        longer = (
            f"; answers lengthened {before.length:.1f} -> {now.length:.1f} tokens"
            if now.length > 1.05 * before.length
            else ""
        )
        advice = (
            "lower train.learning_rate, raise grpo.beta, or read a few sampled answers "
            "(qwenvl-ft predict on a checkpoint) for a way to game the reward; README 'GRPO'"
        )
        if welch_t(best, now, self.window) < -2:
            return (
                f"{where}: the mean reward fell to {now.reward:.3f} from {best.reward:.3f} (steps "
                f"{best.first}-{best.last}){longer}: the policy is getting worse at what it is rewarded "
                f"for; {advice}"
            )
        kl_grew = now.kl is not None and before.kl is not None and now.kl >= 1.5 * before.kl and now.kl > 1e-3
        if kl_grew and welch_t(before, now, self.window) < 1:
            return (
                f"{where}: the mean reward did not rise ({before.reward:.3f} over steps {before.first}-"
                f"{before.last}, {now.reward:.3f} now) while the KL to the reference grew {before.kl:.4f} "
                f"-> {now.kl:.4f}{longer}: the policy is moving away from its start without gaining "
                f"reward; {advice}"
            )
        return None

    def summary(self, span: int = 10) -> str | None:
        """'reward X (first N steps) -> Y (last N steps)', or None before 2 x span steps."""
        if len(self.rewards) < 2 * span:
            return None
        head = sum(self.rewards[:span]) / span
        tail = sum(self.rewards[-span:]) / span
        return f"reward {head:.3f} (mean of the first {span} steps) -> {tail:.3f} (last {span})"
