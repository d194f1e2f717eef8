"""The pure parts of usage by the hour (``shared.jobs.usage``): a bucket's decay against the
exact per-attempt decay it stands for, and the hours ``cpu_seconds_per_day`` counts."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.jobs.usage import DAY_S, HOUR_S, MAX_HALVINGS, day_from, decayed


def exact(attempts: list[tuple[float, float]], age_s: float, half_life_s: float) -> float:
    """The per-attempt sum a bucket replaces: (CPU seconds, seconds into the hour) each."""
    return sum(cpu * math.pow(0.5, (age_s - at) / half_life_s) for cpu, at in attempts)


def bucket(attempts: list[tuple[float, float]], age_s: float, half_life_s: float) -> float:
    """The same attempts summed as ``usage_hours`` sums them, then decayed."""
    return decayed(
        cpu_s=sum(cpu for cpu, _ in attempts),
        moment_s=sum(cpu * at for cpu, at in attempts),
        age_s=age_s,
        half_life_s=half_life_s,
    )


@pytest.mark.parametrize("at", [0.0, 1234.0, HOUR_S])
def test_one_attempt_decays_exactly(at: float) -> None:
    for age_s in (at, HOUR_S, 5 * HOUR_S):
        assert bucket([(10.0, at)], age_s, 3600.0) == pytest.approx(
            exact([(10.0, at)], age_s, 3600.0), rel=1e-12
        )
    assert bucket([(10.0, at)], at, 3600.0) == pytest.approx(10.0)  # just ended: undecayed


@pytest.mark.parametrize("half_life_s", [3600.0, 7200.0, 86_400.0])
def test_a_bucket_is_under_its_attempts_by_at_most_the_spread_of_an_hour(
    half_life_s: float,
) -> None:
    bound = math.cosh(math.log(2) / (2 * half_life_s / HOUR_S))  # 1.061 for an hour
    spreads = [
        [(5.0, 0.0), (5.0, HOUR_S)],  # the worst: half at each end
        [(1.0, 0.0), (9.0, HOUR_S)],
        [(3.0, 100.0), (2.0, 1800.0), (7.0, 3500.0)],
    ]
    for attempts in spreads:
        for age_s in (HOUR_S, 2 * HOUR_S, 20 * HOUR_S):
            got, want = bucket(attempts, age_s, half_life_s), exact(attempts, age_s, half_life_s)
            assert got <= want * (1 + 1e-12)
            assert got * bound >= want * (1 - 1e-12)
    worst = spreads[0]
    assert exact(worst, HOUR_S, half_life_s) / bucket(worst, HOUR_S, half_life_s) == (
        pytest.approx(bound)
    )


def test_an_empty_or_ancient_bucket_counts_nothing_and_never_underflows() -> None:
    assert decayed(cpu_s=0.0, moment_s=0.0, age_s=10.0, half_life_s=3600.0) == 0.0
    ancient = decayed(cpu_s=1e6, moment_s=0.0, age_s=1e9, half_life_s=1.0)
    assert ancient == 1e6 * 0.5**MAX_HALVINGS
    assert 0.0 < ancient < 1e-290


def test_a_bucket_in_the_future_is_not_grown() -> None:
    # a clock that ran ahead must not make usage count more than it was
    assert decayed(cpu_s=4.0, moment_s=4.0 * 3000, age_s=10.0, half_life_s=3600.0) == 4.0


def test_the_day_starts_at_the_hour_24_h_before_the_current_one() -> None:
    now = datetime(2026, 12, 6, 14, 20, 30, 123, tzinfo=UTC)
    assert day_from(now) == datetime(2026, 12, 5, 14, tzinfo=UTC)
    on_the_hour = datetime(2026, 12, 6, 14, tzinfo=UTC)
    assert day_from(on_the_hour) == datetime(2026, 12, 5, 14, tzinfo=UTC)
    # an offset of half an hour is still cut at UTC hours
    india = now.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert day_from(india) == datetime(2026, 12, 5, 14, tzinfo=UTC)


def test_usage_leaves_the_day_between_24_and_25_h_after_it_ended() -> None:
    ended = datetime(2026, 12, 5, 9, 40, tzinfo=UTC)
    hour = ended.replace(minute=0)
    for after_s in (DAY_S - 1, DAY_S, DAY_S + 20 * 60 - 1):  # its hour is still counted
        assert day_from(ended + timedelta(seconds=after_s)) <= hour
    for after_s in (DAY_S + 20 * 60, DAY_S + HOUR_S):  # the next hour began 24 h ago
        assert day_from(ended + timedelta(seconds=after_s)) > hour
