"""The job state machine: every allowed and every forbidden transition."""

from __future__ import annotations

import itertools

import pytest

from shared.jobs.states import ALLOWED, FINAL, JobState, RetryPolicy, decide

S = JobState
ALL = list(JobState)

EXPECTED_ALLOWED = {
    (S.PENDING, S.QUEUED), (S.PENDING, S.FAILED), (S.PENDING, S.CANCELLED),
    (S.QUEUED, S.RUNNING), (S.QUEUED, S.CANCELLED), (S.QUEUED, S.FAILED),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.TIMED_OUT), (S.RUNNING, S.QUEUED),
}  # fmt: skip


def test_table_is_exactly_the_documented_one() -> None:
    table = {(a, b) for a, targets in ALLOWED.items() for b in targets}
    assert table == EXPECTED_ALLOWED


@pytest.mark.parametrize(("current", "proposed"), list(itertools.product(ALL, ALL)))
def test_every_pair(current: JobState, proposed: JobState) -> None:
    # With retries to spare and a failure that is not retryable, the decision is the table.
    d = decide(current, proposed, attempts=1, max_retries=0, retryable=False)
    if current in FINAL:
        assert not d.accepted
        assert "already" in d.reason
    elif (current, proposed) in EXPECTED_ALLOWED:
        expected = S.FAILED if (current, proposed) == (S.RUNNING, S.QUEUED) else proposed
        assert d.state is expected
    else:
        assert not d.accepted
        assert "not allowed" in d.reason


@pytest.mark.parametrize("final", sorted(FINAL))
def test_final_states_never_change(final: JobState) -> None:
    for proposed in ALL:
        assert decide(final, proposed, attempts=0, max_retries=99).state is None


def test_failed_attempt_with_retries_left_goes_back_to_queued() -> None:
    d = decide(S.RUNNING, S.FAILED, attempts=1, max_retries=3)
    assert d.state is S.QUEUED
    assert "retry" in d.reason


def test_failed_attempt_on_last_retry_is_final() -> None:
    assert decide(S.RUNNING, S.FAILED, attempts=4, max_retries=3).state is S.FAILED
    assert decide(S.RUNNING, S.FAILED, attempts=3, max_retries=3).state is S.QUEUED


def test_non_retryable_failure_is_final_even_with_retries_left() -> None:
    assert decide(S.RUNNING, S.FAILED, attempts=1, max_retries=3, retryable=False).state is S.FAILED


def test_lost_worker_requeues_until_retries_run_out() -> None:
    assert decide(S.RUNNING, S.QUEUED, attempts=2, max_retries=3).state is S.QUEUED
    d = decide(S.RUNNING, S.QUEUED, attempts=4, max_retries=3)
    assert d.state is S.FAILED
    assert "no retries" in d.reason


def test_timeout_and_cancel_are_not_retried() -> None:
    assert decide(S.RUNNING, S.TIMED_OUT, attempts=1, max_retries=3).state is S.TIMED_OUT
    assert decide(S.RUNNING, S.CANCELLED, attempts=1, max_retries=3).state is S.CANCELLED


def test_retry_policy_backs_off_and_caps() -> None:
    p = RetryPolicy(initial_s=1, multiplier=2, maximum_s=10)
    assert [p.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]


def test_retry_policy_jitter_spreads_within_bounds() -> None:
    p = RetryPolicy(initial_s=1, multiplier=2, maximum_s=10, jitter=0.2)
    assert p.delay(3, rand=0.0) == pytest.approx(3.2)
    assert p.delay(3, rand=0.5) == pytest.approx(4.0)
    assert p.delay(6, rand=0.999999) == pytest.approx(12.0, rel=1e-5)  # the cap, then jitter
    spread = {round(p.delay(2), 6) for _ in range(50)}
    assert len(spread) > 1
    assert all(1.6 <= d <= 2.4 for d in spread)
