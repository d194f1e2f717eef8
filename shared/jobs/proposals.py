"""What happened to a job, as the code that saw it proposes it to ``set_job_state``: one value
per kind of event, holding what that event changes. ``states.decide`` rules on the state
each proposes; ``shared.jobs.store`` applies the decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from shared.jobs.states import JobState


@dataclass(frozen=True)
class Report:
    """An attempt's outcome as its worker reports it, with the resources it used (QUEUED: the
    worker hands the job back unfinished)."""

    state: JobState
    result: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = True
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    # QUEUED from a checkpoint: ``"preempted"`` or ``"drained"`` (the job's ``state_reason``;
    # it uses no retry and waits no backoff)
    handed_back: str | None = None


@dataclass(frozen=True)
class Claimed:
    """A worker starts an attempt: QUEUED -> RUNNING, under a lease of ``lease_s``."""

    worker: str
    lease_s: float
    state: ClassVar[JobState] = JobState.RUNNING


@dataclass(frozen=True)
class Reported:
    """The worker of attempt ``attempt`` reports how it ended."""

    attempt: int
    worker: str
    report: Report

    @property
    def state(self) -> JobState:
        return self.report.state


@dataclass(frozen=True)
class Lost:
    """The lease of attempt ``attempt`` expired (its worker is lost): back to the queue, or
    FAILED when no retries are left."""

    attempt: int
    state: ClassVar[JobState] = JobState.QUEUED


@dataclass(frozen=True)
class Cancelled:
    """The user cancels the job."""

    state: ClassVar[JobState] = JobState.CANCELLED


@dataclass(frozen=True)
class Failed:
    """The platform fails the job for a reason of its own (an input gone, a failed
    stage-in): not retried."""

    error: str
    state: ClassVar[JobState] = JobState.FAILED


Proposal = Claimed | Reported | Lost | Cancelled | Failed


def reason_and_error(proposal: Proposal) -> tuple[str | None, str | None]:
    """What the job's ``state_reason`` and ``error`` say after the change."""
    match proposal:
        case Claimed():
            return None, None
        case Reported(report=report):
            return report.handed_back, report.error
        case Lost():
            return "the worker's lease expired (worker lost)", "worker lost while running the job"
        case Cancelled():
            return "cancelled by the user", None
        case Failed(error=error):
            return None, error


def retryable(proposal: Proposal) -> bool:
    """Whether a failure may be retried: a worker says so; the platform's own never is."""
    if isinstance(proposal, Reported):
        return proposal.report.retryable
    return not isinstance(proposal, Failed)
