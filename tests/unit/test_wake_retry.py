"""The wake listener's tries to listen again back off while the database stays away: the
first at once after ``retry_s``, then doubling up to a cap, never below ``retry_s``."""

from __future__ import annotations

from shared.db.wakeup import MAX_RETRY_S, retry_delay


def test_the_first_tries_follow_retry_s_then_double() -> None:
    assert [retry_delay(n, 1.0) for n in (0, 1, 2, 3, 4)] == [1.0, 1.0, 2.0, 4.0, 8.0]


def test_the_delay_stops_at_the_cap() -> None:
    assert retry_delay(50, 1.0) == MAX_RETRY_S
    assert retry_delay(3, 1.0, cap_s=3.0) == 3.0


def test_a_retry_s_above_the_cap_is_kept() -> None:
    assert retry_delay(5, 20.0) == 20.0
