"""Job states and the rules between them. Pure: no I/O, unit-tested exhaustively."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


FINAL: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)

ALLOWED: dict[JobState, frozenset[JobState]] = {
    # admitted; refused at admission; cancelled before admission
    JobState.PENDING: frozenset({JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}),
    # claimed by a worker; cancelled while waiting; failed while waiting (e.g. unrunnable)
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    # an outcome, or back to QUEUED for a retry (failed attempt or lost worker)
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.TIMED_OUT,
            JobState.QUEUED,
        }
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMED_OUT: frozenset(),
}


@dataclass(frozen=True)
class Decision:
    """What applying a proposal does: the resulting state, or why nothing changes."""

    state: JobState | None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.state is not None


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for retried attempts: ``initial * multiplier**(attempt-1)``, capped, then
    spread by ``± jitter`` (a fraction) so that jobs failing together do not return together.
    ``rand`` (in [0, 1)) makes the spread reproducible in tests."""

    initial_s: float = 1.0
    multiplier: float = 2.0
    maximum_s: float = 60.0
    jitter: float = 0.0

    def delay(self, attempt: int, *, rand: float | None = None) -> float:
        base = min(self.initial_s * self.multiplier ** max(attempt - 1, 0), self.maximum_s)
        if not self.jitter:
            return float(base)
        r = random.random() if rand is None else rand
        return float(base * (1 + self.jitter * (2 * r - 1)))


def decide(
    current: JobState,
    proposed: JobState,
    *,
    attempts: int,
    max_retries: int,
    retryable: bool = True,
) -> Decision:
    """Apply the lifecycle rules to a proposed transition.

    - a final state never changes;
    - a transition outside ``ALLOWED`` is refused;
    - ``RUNNING -> FAILED`` with retries left becomes ``RUNNING -> QUEUED`` (a retry), unless
      the failure is not retryable; ``RUNNING -> QUEUED`` (a lost worker) with no retries left
      becomes ``FAILED``. ``attempts`` counts attempts started so far.
    """
    if current in FINAL:
        return Decision(None, f"job is already {current}")
    if proposed not in ALLOWED[current]:
        return Decision(None, f"{current} -> {proposed} is not allowed")
    retries_left = attempts <= max_retries
    if current is JobState.RUNNING and proposed is JobState.FAILED and retryable and retries_left:
        return Decision(JobState.QUEUED, "retrying after a failed attempt")
    if current is JobState.RUNNING and proposed is JobState.QUEUED and not retries_left:
        return Decision(JobState.FAILED, "no retries left")
    return Decision(proposed)
