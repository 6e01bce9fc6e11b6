"""The learning-rate curves of trials (Schedule.lr_at) and of pretraining (cosine_lr)."""

from __future__ import annotations

import itertools
import math

import pytest

from spnas.engines import Schedule
from spnas.lr_schedule import cosine_lr


def test_cosine_runs_from_start_to_end_through_the_midpoint() -> None:
    assert cosine_lr(0, 100, 0.1, 0.001) == pytest.approx(0.1)
    assert cosine_lr(50, 100, 0.1, 0.001) == pytest.approx((0.1 + 0.001) / 2)
    assert cosine_lr(25, 100, 0.1, 0.001) == pytest.approx(
        0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi / 4))
    )
    assert cosine_lr(100, 100, 0.1, 0.001) == pytest.approx(0.001)
    assert cosine_lr(150, 100, 0.1, 0.001) == pytest.approx(0.001)  # stays at the end
    values = [cosine_lr(i, 100, 0.1, 0.001) for i in range(101)]
    assert all(a > b for a, b in itertools.pairwise(values))


def test_fast_schedule_warms_up_then_follows_the_cosine() -> None:
    schedule = Schedule.fast(base_lr=0.02, min_lr=1e-4, warmup_iters=10)
    total = 100
    # Linear warm-up over min(warmup_iters, total // 5) = 10 iterations.
    assert schedule.lr_at(0, total) == pytest.approx(cosine_lr(0, total, 0.02, 1e-4) / 10)
    assert schedule.lr_at(4, total) == pytest.approx(cosine_lr(4, total, 0.02, 1e-4) / 2)
    for it in (9, 10, 50, 99):
        assert schedule.lr_at(it, total) == pytest.approx(cosine_lr(it, total, 0.02, 1e-4))
    # A short run warms up over a fifth of it.
    assert schedule.lr_at(0, 20) == pytest.approx(cosine_lr(0, 20, 0.02, 1e-4) / 4)


def test_full_schedule_steps_down_tenfold() -> None:
    schedule = Schedule.full(base_lr=0.02, warmup_iters=0)
    total = 240
    assert schedule.lr_at(0, total) == pytest.approx(0.02)
    assert schedule.lr_at(159, total) == pytest.approx(0.02)
    assert schedule.lr_at(160, total) == pytest.approx(0.002)
    assert schedule.lr_at(220, total) == pytest.approx(0.0002)
