"""The autoscaler's decision rule with a fake clock: the formula, up at once, down after the
cooldown one step at a time, and no oscillation faster than the cooldown under flapping load."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from services.scheduler.pool_policy import PoolPolicy, PoolScaler

POLICY = PoolPolicy(min_workers=1, max_workers=4, target_jobs_per_worker=4, cooldown_s=30)


@pytest.mark.parametrize(
    ("demand", "desired"),
    [(0, 1), (1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (16, 4), (17, 4), (300, 4)],
)
def test_desired_is_ceil_of_demand_over_target_clamped(demand: int, desired: int) -> None:
    assert POLICY.desired(demand) == desired


def test_min_zero_scales_to_zero_and_one_job_asks_for_a_worker() -> None:
    p = PoolPolicy(min_workers=0, max_workers=2, target_jobs_per_worker=4, cooldown_s=10)
    assert p.desired(0) == 0
    assert p.desired(1) == 1
    s = PoolScaler(p)
    assert s.decide(demand=1, current=0, now=0).target == 1
    assert s.decide(demand=0, current=1, now=1).action == "hold"
    assert s.decide(demand=0, current=1, now=11).target == 0


def test_up_at_once_to_the_desired_count() -> None:
    s = PoolScaler(POLICY)
    d = s.decide(demand=300, current=1, now=0)
    assert (d.action, d.target) == ("up", 4)


def test_down_only_after_the_cooldown_then_one_step_per_pass() -> None:
    s = PoolScaler(POLICY)
    assert s.decide(demand=0, current=4, now=100).action == "hold"
    assert s.decide(demand=0, current=4, now=129.9).action == "hold"
    d = s.decide(demand=0, current=4, now=130)
    assert (d.action, d.target) == ("down", 3)
    assert s.decide(demand=0, current=3, now=131).target == 2
    assert s.decide(demand=0, current=2, now=132).target == 1
    assert s.decide(demand=0, current=1, now=133).action == "hold"


def test_a_busy_moment_restarts_the_cooldown() -> None:
    s = PoolScaler(POLICY)
    s.decide(demand=0, current=4, now=0)
    assert s.decide(demand=16, current=4, now=20).action == "hold"  # sized: not over
    assert s.decide(demand=0, current=4, now=40).action == "hold"  # cooldown from 40
    assert s.decide(demand=0, current=4, now=69).action == "hold"
    assert s.decide(demand=0, current=4, now=70).action == "down"


def test_bounds_apply_at_once() -> None:
    s = PoolScaler(POLICY)
    assert s.decide(demand=0, current=0, now=0).target == 1  # below min (a worker gave up)
    assert s.decide(demand=0, current=6, now=1).target == 4  # above a lowered max


def simulate(
    demand_at: Callable[[float], int], *, policy: PoolPolicy, seconds: int, start: int = 1
) -> list[tuple[float, int, int]]:
    """A pool driven every second by ``demand_at``; the backend does what it is told.
    Returns (time, from, to) of every change."""
    s, current, changes = PoolScaler(policy), start, []
    for t in range(seconds):
        d = s.decide(demand=demand_at(t), current=current, now=float(t))
        if d.target != current:
            changes.append((float(t), current, d.target))
            current = d.target
    return changes


@pytest.mark.parametrize("period", [2, 10, 20, 29])
def test_flapping_faster_than_the_cooldown_never_scales_down(period: int) -> None:
    def square(t: float) -> int:
        return 300 if (t // (period / 2)) % 2 == 0 else 0

    changes = simulate(square, policy=POLICY, seconds=600)
    assert changes == [(0.0, 1, 4)]  # up once, then held at the top


@pytest.mark.parametrize("period", [40, 61, 90, 200])
def test_slow_flapping_never_shrinks_sooner_than_the_cooldown_after_load(period: int) -> None:
    """Any change is either an up (at once) or a down that comes at least a cooldown after the
    last second the pool was not over-provisioned."""

    def square(t: float) -> int:
        return 300 if (t // (period / 2)) % 2 == 0 else 0

    changes = simulate(square, policy=POLICY, seconds=2000)
    downs = [c for c in changes if c[2] < c[1]]
    ups = [c for c in changes if c[2] > c[1]]
    assert ups
    for t, before, after in downs:
        assert after == before - 1  # one step at a time
        busy = [s for s in range(int(t) + 1) if POLICY.desired(square(s)) >= before]
        assert t - max(busy) >= POLICY.cooldown_s, (t, busy[-3:])
    cycles = len(ups)
    assert cycles <= math.ceil(2000 / period) + 1  # at most one scale-up per load period
    if period / 2 <= POLICY.cooldown_s:
        assert not downs
