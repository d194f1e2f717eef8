"""Worker use cases: claim a job under a lease, record an attempt's outcome, heartbeat.

Functions take ``session`` as a keyword and never commit. The worker's hot path claims and
records in group commits on plain asyncpg (``services.worker.batch``) with the set-based
statements of ``shared.jobs.store``; the functions here run the same statements for one job
inside a session, then ``set_job_state``'s general path for what those do not match, and
publish a successful attempt's outputs in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.worker.runner import Outcome, Status, Usage
from services.worker.stageout import StagedOutput
from shared.db.models import Job, JobAttempt, Worker
from shared.db.outbox import add_event
from shared.events import JobFinished
from shared.jobs.states import JobState
from shared.jobs.store import (
    Claim,
    Finish,
    Report,
    claim_queued,
    finish_attempts,
    session_fetch,
    set_job_state,
)
from shared.storage.catalog import publish_local_file, publish_upload
from shared.storage.names import local_dataset_path
from shared.storage.registry import Storage


async def claim(
    *, session: AsyncSession, job_id: uuid.UUID, worker: str, lease_s: float, fast: bool = True
) -> Claim | None:
    """QUEUED -> RUNNING under a lease; None when the job is not ours to run (already taken,
    cancelled, finished: a duplicate dispatch). ``fast=False``: the caller tried
    ``claim_queued`` already, in a transaction of its own."""
    if fast:
        claimed = await claim_queued(
            session_fetch(session), [job_id], worker=worker, lease_s=lease_s
        )
        if job_id in claimed:
            return claimed[job_id]
    t = await set_job_state(session, job_id, JobState.RUNNING, worker=worker, lease_s=lease_s)
    if not t.accepted:
        return None
    job = t.job
    return Claim(
        job.id,
        job.tenant_id,
        job.attempts,
        job.kernel,
        job.params,
        job.inputs,
        job.outputs,
        job.timeout_s,
        job.output_tier,
    )


def report_for(outcome: Outcome | None, usage: Usage, *, stopping: bool = False) -> Report:
    """The report of an attempt from the runner's outcome; ``None`` when the attempt was
    cancelled: by the user (the job is already CANCELLED) or by the worker shutting down
    (hand the job back)."""
    cpu, wall = usage.cpu_seconds, usage.wall_seconds
    if outcome is None and stopping:
        error = "worker shut down during the attempt"
        return Report(JobState.QUEUED, error=error, cpu_seconds=cpu, wall_seconds=wall)
    if outcome is None:
        error = "cancelled while running"
        return Report(JobState.CANCELLED, error=error, cpu_seconds=cpu, wall_seconds=wall)
    state = {
        Status.SUCCEEDED: JobState.SUCCEEDED,
        Status.TIMED_OUT: JobState.TIMED_OUT,
        Status.FAILED: JobState.FAILED,
        Status.CRASHED: JobState.FAILED,
    }[outcome.status]
    return Report(
        state,
        result=outcome.result,
        error=outcome.error,
        retryable=outcome.retryable,
        cpu_seconds=cpu,
        wall_seconds=wall,
    )


def finish_of(claim: Claim, report: Report) -> Finish:
    return Finish(claim.job_id, claim.tenant_id, claim.attempt, report)


async def record(
    *, session: AsyncSession, claim: Claim, worker: str, report: Report, fast: bool = True
) -> bool:
    """Record an attempt's outcome, fenced by attempt number. The attempt's usage row and the
    ``job.finished`` event are written only if the report was accepted, so they count once;
    an attempt stopped because the user cancelled the job (already CANCELLED) still gets
    its usage row. ``fast=False``: the caller tried ``finish_attempts`` already."""
    finish = finish_of(claim, report)
    fetch = session_fetch(session)
    if fast and finish.without_rules and await finish_attempts(fetch, [finish], worker=worker):
        session.info["outbox"] = True  # the owner of the transaction wakes the relay
        return True
    t = await set_job_state(
        session,
        claim.job_id,
        report.state,
        attempt=claim.attempt,
        worker=worker,
        result=report.result,
        error=report.error,
        retryable=report.retryable,
    )
    if not t.accepted:
        if report.state is JobState.CANCELLED and t.job.attempts == claim.attempt:
            await _usage_row(session, claim, worker, report)
        return False
    await _usage_row(session, claim, worker, report)
    await add_event(
        session,
        JobFinished(
            tenant_id=claim.tenant_id,
            job_id=claim.job_id,
            attempt=claim.attempt,
            state=t.job.state,
            cpu_seconds=report.cpu_seconds,
        ),
    )
    return True


@dataclass(frozen=True)
class Recorded:
    accepted: bool
    stale: dict[str, tuple[str, ...]] = field(default_factory=dict)  # output -> tiers to clean


async def record_attempt(
    *,
    session: AsyncSession,
    storage: Storage,
    claim: Claim,
    worker: str,
    report: Report,
    outputs: Mapping[str, Path],
    staged: Mapping[str, StagedOutput] | None = None,
    tier: str = "local",
    fast: bool = True,
) -> Recorded:
    """``record``, and for an accepted ``SUCCEEDED`` attempt, publish each output file (the
    kernel's temporary files, ``outputs``: slot -> path) as the tenant's dataset on ``tier``,
    in the same transaction; for a job whose ``output_tier`` is not ``local``, publish the
    verified partial objects ``staged`` on that tier instead. A refused (fenced, superseded)
    attempt publishes nothing. The caller removes the copies of the older versions
    (``stale``) after the commit. ``fast``: as for ``record``."""
    accepted = await record(session=session, claim=claim, worker=worker, report=report, fast=fast)
    if not accepted or report.state is not JobState.SUCCEEDED:
        return Recorded(accepted)
    stale: dict[str, tuple[str, ...]] = {}
    if claim.output_tier != tier:
        for slot, name in claim.outputs.items():
            out = (staged or {})[slot]
            published = await publish_upload(
                session=session,
                storage=storage,
                tenant_id=claim.tenant_id,
                name=name,
                tier=out.tier,
                upload=out.upload,
                etags=out.etags,
                size=out.size,
                checksum=out.checksum,
            )
            stale[name] = published.stale_tiers
        return Recorded(True, stale)
    for slot, name in claim.outputs.items():
        path = outputs[slot]
        if not path.exists():
            # an earlier try of this record renamed it into place and then did not commit:
            # publish the file where it is (the rename is then a no-op)
            path = local_dataset_path(storage.settings, claim.tenant_id, name, tier=tier)
        published = await publish_local_file(
            session=session,
            storage=storage,
            tenant_id=claim.tenant_id,
            name=name,
            path=path,
            tier=tier,
        )
        stale[name] = published.stale_tiers
    return Recorded(True, stale)


async def _usage_row(session: AsyncSession, claim: Claim, worker: str, report: Report) -> None:
    await session.execute(
        insert(JobAttempt)
        .values(
            job_id=claim.job_id,
            attempt=claim.attempt,
            tenant_id=claim.tenant_id,
            worker=worker,
            outcome=report.state.value,
            cpu_seconds=report.cpu_seconds,
            wall_seconds=report.wall_seconds,
        )
        .on_conflict_do_nothing()
    )


async def heartbeat(
    *,
    session: AsyncSession,
    worker: str,
    device: str,
    concurrency: int,
    lease_s: float,
    stopping: bool = False,
    held: Collection[uuid.UUID] = (),
) -> None:
    """Say this worker is alive (and how many jobs it takes) and extend the leases of the
    jobs it ``held``: the ones it runs or records now. Only those: a job that is RUNNING
    under this worker's name but that no attempt of this process holds (its claim committed
    under a consumer cancelled by a broker restart, a record that gave up) must lose its
    lease so that the reaper returns it, instead of being kept RUNNING, unrun, for as long
    as the worker lives."""
    await session.execute(
        insert(Worker)
        .values(id=worker, device=device, concurrency=concurrency, stopping=stopping)
        .on_conflict_do_update(
            index_elements=[Worker.id],
            set_={"heartbeat_at": func.now(), "concurrency": concurrency, "stopping": stopping},
        )
    )
    if not held:
        return
    await session.execute(
        update(Job)
        .where(
            Job.id.in_(sorted(held)),
            Job.worker == worker,
            Job.state == JobState.RUNNING.value,
        )
        .values(lease_expires_at=func.now() + timedelta(seconds=lease_s))
    )
