"""Worker use cases: claim a job under a lease, record an attempt's outcome, heartbeat.

Functions take ``session`` as a keyword and never commit. The worker's hot path claims and
records in group commits on plain asyncpg (``services.worker.batch``) with the set-based
statements of ``shared.jobs.store``; the functions here are the general path for what those
do not match: ``set_job_state`` decides, and a successful attempt's outputs (and a result too
large for its row: ``results``) are published in the same transaction, within the tenant's
``storage_bytes`` quota.
"""

from __future__ import annotations

import platform
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.worker.datasets import SCRATCH_TIER, AttemptFiles
from services.worker.results import result_name, stored_file
from services.worker.runner import Outcome, Status, Usage
from services.worker.stageout import StagedOutput
from shared.db.models import Job, Tenant, Worker
from shared.db.wakeup import FINISHED, notify
from shared.errors import QuotaExceeded
from shared.jobs.proposals import Claimed, Report, Reported
from shared.jobs.states import JobState
from shared.jobs.store import Claim, Finish, set_job_state
from shared.jobs.usage import count_attempt
from shared.settings import QuotaDefaults
from shared.storage.catalog import Published, lock_name, publish_local_file, publish_upload
from shared.storage.names import local_dataset_path
from shared.storage.quota import lock_tenant_storage, replaced_bytes, storage_used
from shared.storage.registry import Storage


async def claim(
    *, session: AsyncSession, job_id: uuid.UUID, worker: str, lease_s: float
) -> Claim | None:
    """QUEUED -> RUNNING under a lease; None when the job is not ours to run (already taken,
    cancelled, finished: a duplicate dispatch)."""
    t = await set_job_state(session, job_id, Claimed(worker, lease_s))
    return Claim.of(t.job) if t.accepted else None


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
    if outcome.status is Status.RELEASED:  # checkpointed on a drain: resumes elsewhere
        return Report(JobState.QUEUED, cpu_seconds=cpu, wall_seconds=wall, handed_back="drained")
    state = {
        Status.SUCCEEDED: JobState.SUCCEEDED,
        Status.TIMED_OUT: JobState.TIMED_OUT,
        Status.FAILED: JobState.FAILED,
        Status.CRASHED: JobState.FAILED,
        Status.CANCELLED: JobState.CANCELLED,
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
    *,
    session: AsyncSession,
    claim: Claim,
    worker: str,
    report: Report,
    device: str | None = None,
) -> bool:
    """Record an attempt's outcome, fenced by attempt number. The attempt's usage row and the
    scheduler's wake-up are written only if the report was accepted, so they count once;
    an attempt stopped because the user cancelled the job (already CANCELLED) still gets
    its usage row."""
    t = await set_job_state(session, claim.job_id, Reported(claim.attempt, worker, report))
    cancelled_first = report.state is JobState.CANCELLED and t.job.attempts == claim.attempt
    if t.accepted or cancelled_first:
        await count_attempt(
            session,
            job_id=claim.job_id,
            tenant_id=claim.tenant_id,
            attempt=claim.attempt,
            worker=worker,
            outcome=report.state.value,
            cpu_seconds=report.cpu_seconds,
            wall_seconds=report.wall_seconds,
            device=device,
            started_at=t.job.started_at,
            error=report.error,
        )
    if not t.accepted:
        return False
    await notify(session, FINISHED)  # a slot is free: the scheduler dispatches again
    return True


@dataclass(frozen=True)
class Recorded:
    accepted: bool
    stale: dict[str, tuple[str, ...]] = field(default_factory=dict)  # output -> tiers to clean


def publishes(claim: Claim, report: Report, files: AttemptFiles) -> bool:
    """Whether recording ``report`` publishes datasets: the outputs, or a large result."""
    return report.state is JobState.SUCCEEDED and bool(
        claim.outputs or stored_file(claim, report, files)
    )


async def record_attempt(
    *,
    session: AsyncSession,
    storage: Storage,
    claim: Claim,
    worker: str,
    report: Report,
    files: AttemptFiles,
    staged: Mapping[str, StagedOutput] | None = None,
    quotas: QuotaDefaults | None = None,
    device: str | None = None,
) -> Recorded:
    """``record``, and for an accepted ``SUCCEEDED`` attempt, publish each output file the
    kernel wrote (``files``) as the tenant's dataset on the scratch tier, in the same
    transaction; for a job whose ``output_tier`` is another one, publish the verified partial
    objects ``staged`` on that tier instead. A result too large for the job's row is
    published as ``results.result_name`` on the scratch tier. Everything published must fit
    the tenant's ``storage_bytes`` quota (``quotas``: the platform defaults), checked before
    anything is published: ``QuotaExceeded`` otherwise, and the caller's rollback leaves
    nothing behind. A refused (fenced, superseded) attempt publishes nothing. The caller
    removes the copies of the older versions (``stale``) after the commit."""
    accepted = await record(
        session=session, claim=claim, worker=worker, report=report, device=device
    )
    if not accepted or report.state is not JobState.SUCCEEDED:
        return Recorded(accepted)
    uploads = (
        {name: (staged or {})[slot] for slot, name in claim.outputs.items()}
        if claim.output_tier != SCRATCH_TIER
        else {}
    )
    local = _local_files(storage, claim, report, files)
    sizes = {name: out.size for name, out in uploads.items()}
    sizes.update({name: path.stat().st_size for name, path in local.items()})
    if sizes:
        await check_outputs_fit(
            session=session,
            tenant_id=claim.tenant_id,
            sizes=sizes,
            defaults=quotas or QuotaDefaults(),
        )
    stale = await _publish(
        session=session, storage=storage, tenant_id=claim.tenant_id, uploads=uploads, files=local
    )
    if claim.outputs:
        await session.execute(_PROVENANCE, {"job": claim.job_id})
    return Recorded(True, stale)


# The receipt was made when the row became SUCCEEDED, before the outputs were published in
# this transaction: their checksums now, and each output dataset produced by the job (the
# datasets' trigger clears ``produced_by`` only when other bytes replace them).
_PROVENANCE = text(
    """
    WITH job AS (
        UPDATE jobs j SET receipt = jsonb_set(j.receipt, '{outputs}', (
            SELECT coalesce(jsonb_object_agg(
                       x.key, jsonb_build_object('dataset', x.value, 'checksum', d.checksum)),
                   '{}'::jsonb)
            FROM jsonb_each_text(j.outputs) x
            LEFT JOIN datasets d ON d.tenant_id = j.tenant_id AND d.name = x.value))
        WHERE j.id = :job AND j.receipt IS NOT NULL
        RETURNING j.id, j.tenant_id, j.outputs
    )
    UPDATE datasets d SET produced_by = job.id
    FROM job, jsonb_each_text(job.outputs) o
    WHERE d.tenant_id = job.tenant_id AND d.name = o.value
    """
)


async def _publish(
    *,
    session: AsyncSession,
    storage: Storage,
    tenant_id: uuid.UUID,
    uploads: Mapping[str, StagedOutput],
    files: Mapping[str, Path],
) -> dict[str, tuple[str, ...]]:
    """Publish each staged object and each file under its dataset name; the tiers that held
    each one's older version."""
    steps: list[tuple[str, Callable[..., Awaitable[Published]]]] = [
        (
            name,
            partial(
                publish_upload,
                tier=out.tier,
                upload=out.upload,
                etags=out.etags,
                size=out.size,
                checksum=out.checksum,
            ),
        )
        for name, out in uploads.items()
    ]
    steps += [
        (name, partial(publish_local_file, path=path, tier=SCRATCH_TIER))
        for name, path in files.items()
    ]
    stale: dict[str, tuple[str, ...]] = {}
    for name, publish in steps:
        published = await publish(session=session, storage=storage, tenant_id=tenant_id, name=name)
        stale[name] = published.stale_tiers
    return stale


def _local_files(
    storage: Storage, claim: Claim, report: Report, files: AttemptFiles
) -> dict[str, Path]:
    """Dataset name -> the file to publish on the scratch tier: the outputs (when the job's
    tier is that one) and the large result."""
    found = (
        {name: files.outputs[slot] for slot, name in claim.outputs.items()}
        if claim.output_tier == SCRATCH_TIER
        else {}
    )
    result_file = stored_file(claim, report, files)
    if result_file is not None:
        found[result_name(claim.job_id)] = result_file
    # a file that is gone: an earlier try of this record renamed it into place and then did
    # not commit; publish the file where it is (the rename is then a no-op)
    return {
        name: path
        if path.exists()
        else local_dataset_path(storage.settings, claim.tenant_id, name, tier=SCRATCH_TIER)
        for name, path in found.items()
    }


async def check_outputs_fit(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    sizes: Mapping[str, int],
    defaults: QuotaDefaults,
) -> None:
    """Whether datasets of ``sizes`` (name -> bytes, each replacing the version it
    overwrites) fit the tenant's ``storage_bytes`` quota, counting every reservation of its
    writers in progress; ``QuotaExceeded`` if not. The names, then the tenant, stay locked
    until commit (the order of the uploads' publish), so the answer holds while the
    outputs are published."""
    for name in sorted(sizes):  # one order for every writer of several names
        await lock_name(session=session, tenant_id=tenant_id, name=name)
    stored = await session.scalar(select(Tenant.quotas).where(Tenant.id == tenant_id))
    quota = int(defaults.effective(stored or {})["storage_bytes"])
    await lock_tenant_storage(session=session, tenant_id=tenant_id)
    replacing = 0
    for name in sizes:
        replacing += await replaced_bytes(session=session, tenant_id=tenant_id, name=name)
    left = quota - await storage_used(session=session, tenant_id=tenant_id) + replacing
    need = sum(sizes.values())
    if need > left:
        raise QuotaExceeded(
            f"storage_bytes quota exceeded: outputs need {need} bytes, {max(left, 0)} left"
        )


def _software() -> dict[str, str]:
    """The versions a job's receipt names (the database copies them from the worker's row
    when the job succeeds, migration 0022)."""
    versions = {"python": platform.python_version()}
    for name in ("stratus", "numba", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


SOFTWARE = _software()


async def heartbeat(
    *,
    session: AsyncSession,
    worker: str,
    device: str,
    concurrency: int,
    lease_s: float,
    stopping: bool = False,
    leased: Collection[uuid.UUID] = (),
    run_s: float | None = None,
) -> None:
    """Say this worker is alive (how many jobs it takes, how long its recent ones held a
    slot: ``run_s``) and extend the leases of the
    jobs in ``leased``: the ones it runs or records now. Only those: a job that is RUNNING
    under this worker's name but that no attempt of this process holds (its claim committed
    under a consumer cancelled by a broker restart, a record that gave up) must lose its
    lease so that the reaper returns it, instead of being kept RUNNING, unrun, for as long
    as the worker lives."""
    await session.execute(
        insert(Worker)
        .values(
            id=worker,
            device=device,
            concurrency=concurrency,
            stopping=stopping,
            software=SOFTWARE,
            run_s=run_s,
        )
        .on_conflict_do_update(
            index_elements=[Worker.id],
            set_={
                "heartbeat_at": func.now(),
                "concurrency": concurrency,
                "stopping": stopping,
                "software": SOFTWARE,
                "run_s": run_s,
            },
        )
    )
    if not leased:
        return
    await session.execute(
        update(Job)
        .where(
            Job.id.in_(sorted(leased)),
            Job.worker == worker,
            Job.state == JobState.RUNNING.value,
        )
        .values(lease_expires_at=func.now() + timedelta(seconds=lease_s))
    )
