"""The chaos harness's stall rule, alone (no servers): a wait ends early only when nothing
has progressed for ``stall_s``."""

from __future__ import annotations

from tests.chaos.report import Progress


def test_a_count_that_keeps_rising_never_stalls() -> None:
    p = Progress(stall_s=10)
    assert not any(p.stalled(n, now=p.since + 9 * n) for n in range(100))


def test_a_count_that_stops_rising_stalls_after_stall_s() -> None:
    p = Progress(stall_s=10)
    t0 = p.since
    assert not p.stalled(5, t0)
    assert not p.stalled(5, t0 + 10)
    assert not p.stalled(4, t0 + 10)  # a dip is no progress, and no reset either
    assert p.stalled(5, t0 + 10.5)
    assert not p.stalled(6, t0 + 11)  # progress again: the clock restarts
    assert p.stalled(6, t0 + 21.5)
