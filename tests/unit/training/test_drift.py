"""The GRPO drift warning: Welch's t by hand, and the runs that must (and must not) be warned about."""

from __future__ import annotations

import math

import pytest

from qwenvl_ft.training.drift import DriftWatch, Window, mean_var, welch_t


def test_welch_t_by_hand():
    # Window means 0.2 and 0.3 with variances 0.01 and 0.03 over 4 steps each:
    # se = sqrt((0.01 + 0.03) / 4) = 0.1, t = (0.3 - 0.2) / 0.1 = 1.
    a, b = Window(1, 4, 0.2, 0.01, None, 20), Window(5, 8, 0.3, 0.03, None, 20)
    assert welch_t(a, b, 4) == pytest.approx(1.0)
    assert welch_t(b, a, 4) == pytest.approx(-1.0)
    flat = Window(1, 4, 0.5, 0.0, None, 20)
    assert welch_t(flat, flat, 4) == 0.0
    assert welch_t(flat, Window(5, 8, 0.6, 0.0, None, 20), 4) == math.inf
    assert mean_var([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, 5 / 3))


def noisy(levels: list[float], phase: int = 0) -> list[float]:
    """Per-step rewards at these levels with +-0.05 of step-to-step noise (what 8 prompts give)."""
    return [v + 0.05 * math.sin(2.4 * k + phase) for k, v in enumerate(levels)]


def feed(watch: DriftWatch, rewards, kls=None, lengths=None) -> list[str]:
    kls = kls or [None] * len(rewards)
    lengths = lengths or [20.0] * len(rewards)
    out = [watch.add(k + 1, r, kl, n) for k, (r, kl, n) in enumerate(zip(rewards, kls, lengths, strict=True))]
    return [w for w in out if w]


GROWING_KL = [0.001 * 1.08**k for k in range(60)]  # 0.001 -> 0.09 over 60 steps


@pytest.mark.parametrize("phase", range(4))
def test_flat_reward_while_the_kl_grows_is_warned(phase):
    """The issue's run: the reward stuck near 0.153 while the KL grows and answers lengthen."""
    lengths = [20 + 4 * k / 59 for k in range(60)]
    warnings = feed(DriftWatch(20), noisy([0.153] * 60, phase), GROWING_KL, lengths)
    assert len(warnings) == 2, warnings  # judged at steps 40 and 60, the first window has no predecessor
    assert warnings[0].startswith("steps 21-40: the mean reward did not rise")
    assert "while the KL to the reference grew" in warnings[0] and "answers lengthened" in warnings[0]
    assert "train.learning_rate" in warnings[0] and "grpo.beta" in warnings[0]


@pytest.mark.parametrize("phase", range(4))
def test_a_reward_that_rises_slowly_is_never_warned_about_however_the_kl_grows(phase):
    """0.15 -> 0.30 over 60 steps (+0.05 per window, the noise's own size per step) is learning."""
    rising = noisy([0.15 + 0.15 * k / 59 for k in range(60)], phase)
    assert feed(DriftWatch(20), rising, GROWING_KL) == []


@pytest.mark.parametrize("phase", range(4))
def test_a_converged_reward_with_a_steady_or_tiny_kl_is_no_drift(phase):
    assert feed(DriftWatch(20), noisy([0.9] * 60, phase), [0.02] * 60) == []
    assert feed(DriftWatch(20), noisy([0.9] * 60, phase), [0.00001 * (k + 1) for k in range(60)]) == []


@pytest.mark.parametrize("phase", range(4))
def test_a_falling_reward_is_warned_about_with_or_without_a_kl(phase):
    """The issue's other run: up to 0.30, then back down to 0.19 within a few steps (beta 0: no KL)."""
    levels = [0.15 + 0.15 * k / 39 for k in range(40)] + [max(0.19, 0.30 - 0.03 * k) for k in range(20)]
    for kls in (None, GROWING_KL):
        warnings = feed(DriftWatch(20), noisy(levels, phase), kls)
        assert len(warnings) == 1 and warnings[0].startswith("steps 41-60: the mean reward fell to"), warnings
        assert "(steps 21-40)" in warnings[0]


def test_window_zero_is_off_and_the_summary_needs_two_spans():
    assert feed(DriftWatch(0), [0.5 - 0.01 * k for k in range(60)], GROWING_KL) == []
    watch = DriftWatch(0)
    feed(watch, [0.1] * 10 + [0.4] * 10)
    assert watch.summary() == "reward 0.100 (mean of the first 10 steps) -> 0.400 (last 10)"
    assert DriftWatch(20).summary() is None


def test_the_trainer_callback_feeds_one_mean_per_step_and_logs_the_warning(caplog):
    """GRPOTrainer's WatchDrift: each optimizer step's micro-batch values averaged into one point;
    steps that reused their rollouts (no rewards) skipped; the warning and the summary logged."""
    from collections import defaultdict
    from types import SimpleNamespace

    from qwenvl_ft.training.grpo import WatchDrift

    trainer = SimpleNamespace(_step_metrics=defaultdict(list), drift=DriftWatch(20))
    callback = WatchDrift(trainer)
    levels = [0.15 + 0.15 * k / 39 for k in range(40)] + [0.19] * 20  # learns, then falls
    with caplog.at_level("INFO", logger="qwenvl_ft"):
        for step, level in enumerate(noisy(levels), start=1):
            trainer._step_metrics["reward"] += [level - 0.01, level + 0.01]  # two micro-batches
            trainer._step_metrics["completion_length"] += [20.0, 20.0]
            callback.on_step_end(None, SimpleNamespace(global_step=step, is_world_process_zero=True), None)
            callback.on_step_end(None, SimpleNamespace(global_step=step, is_world_process_zero=True), None)
        callback.on_train_end(None, SimpleNamespace(is_world_process_zero=True), None)
    assert trainer.drift.rewards == pytest.approx(noisy(levels))  # the second call of a step had nothing
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING" and r.name == "qwenvl_ft"]
    assert len(warnings) == 1 and warnings[0].startswith(
        "GRPO may be drifting: steps 41-60: the mean reward fell"
    )
    assert any(r.message.startswith("GRPO: reward 0.1") for r in caplog.records)
