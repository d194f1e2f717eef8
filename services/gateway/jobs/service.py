"""Job use cases for the gateway. Functions take ``session`` as a keyword and never commit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta

import orjson
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.jobs.schemas import JobSubmit
from shared.db.models import Job
from shared.db.outbox import add_event
from shared.errors import Conflict, Invalid, NotFound, TooManyRequests
from shared.events import JobCancelled, JobSubmitted, utcnow
from shared.jobs.states import JobState
from shared.jobs.store import lock_job, set_job_state
from shared.kernels import get_spec
from shared.pagination import keyset_page
from shared.storage.catalog import existing_names
from shared.storage.names import name_problem


@dataclass(frozen=True)
class Submitted:
    job: Job
    replayed: bool


def _check_io(kind: str, given: dict[str, str], expected: tuple[str, ...]) -> None:
    missing = sorted(set(expected) - set(given))
    unknown = sorted(set(given) - set(expected))
    errors = [{"loc": ["body", kind, n], "msg": f"{kind[:-1]} is required"} for n in missing]
    errors += [{"loc": ["body", kind, n], "msg": f"unknown {kind[:-1]}"} for n in unknown]
    if errors:
        raise Invalid(f"{kind} do not match the kernel", errors=errors)


async def _check_inputs_exist(
    *, session: AsyncSession, tenant_id: uuid.UUID, inputs: dict[str, str]
) -> None:
    """422 for an input that names no dataset of this tenant (or no valid name at all)."""
    if not inputs:
        return
    valid = {n: name for n, name in inputs.items() if name_problem(name) is None}
    found = await existing_names(session=session, tenant_id=tenant_id, names=list(valid.values()))
    errors = [
        {"loc": ["body", "inputs", n], "msg": f"dataset {name!r} not found"}
        for n, name in sorted(inputs.items())
        if name not in found
    ]
    if errors:
        raise Invalid("input dataset not found", errors=errors)


async def submit_job(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    data: JobSubmit,
    idempotency_key: str | None,
    default_timeout_s: int,
    default_max_retries: int,
    idempotency_window_s: int,
    max_queued_jobs: int,
    queue_quota: QueueQuota,
    tiers: Collection[str] = ("local",),
) -> Submitted:
    spec = get_spec(data.kernel)
    if data.output_tier not in tiers:
        raise Invalid(
            f"unknown output tier {data.output_tier!r}",
            errors=[{"loc": ["body", "output_tier"], "msg": f"one of {sorted(tiers)}"}],
        )
    params = spec.validate_params(data.params)
    if data.device != "any" and data.device not in spec.devices:
        raise Invalid(
            f"kernel {spec.name!r} does not run on {data.device!r}",
            errors=[{"loc": ["body", "device"], "msg": "unsupported device"}],
        )
    _check_io("inputs", data.inputs, spec.inputs)
    _check_io("outputs", data.outputs, spec.outputs)
    await _check_inputs_exist(session=session, tenant_id=tenant_id, inputs=data.inputs)

    if idempotency_key is not None:
        existing = await _find_idempotent(
            session=session,
            tenant_id=tenant_id,
            key=idempotency_key,
            window_s=idempotency_window_s,
        )
        if existing is not None:
            return Submitted(existing, replayed=True)
    await queue_quota.check(session=session, tenant_id=tenant_id, limit=max_queued_jobs)

    job = Job(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        kernel=spec.name,
        device=data.device,
        params=params,
        inputs=data.inputs,
        outputs=data.outputs,
        output_tier=data.output_tier,
        labels=data.labels,
        priority=data.priority,
        timeout_s=data.timeout_s or default_timeout_s,
        max_retries=data.max_retries if data.max_retries is not None else default_max_retries,
        state=JobState.PENDING.value,
        attempts=0,
        idempotency_key=idempotency_key,
        created_at=utcnow(),
    )
    if not await _insert_with_event(session=session, job=job):
        # A concurrent request with the same key won the race: answer with its job.
        assert idempotency_key is not None
        existing = await _find_idempotent(
            session=session,
            tenant_id=tenant_id,
            key=idempotency_key,
            window_s=idempotency_window_s,
        )
        if existing is None:
            raise Conflict("a request with this Idempotency-Key is in progress; retry")
        return Submitted(existing, replayed=True)
    return Submitted(job, replayed=False)


# The job row and its outbox event in one round trip: the event is written only if the job
# was (no idempotency conflict). A fixed text statement: no per-request statement building.
_INSERT_JOB = text(
    """
    WITH job AS (
        INSERT INTO jobs (id, tenant_id, kernel, device, params, inputs, outputs, output_tier,
                          labels, priority, timeout_s, max_retries, state, attempts,
                          idempotency_key, created_at, updated_at)
        VALUES (:id, :tenant_id, :kernel, :device, CAST(:params AS jsonb),
                CAST(:inputs AS jsonb), CAST(:outputs AS jsonb), :output_tier,
                CAST(:labels AS jsonb),
                :priority, :timeout_s, :max_retries, 'PENDING', 0, :idempotency_key,
                :created_at, :created_at)
        ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
        RETURNING id
    )
    INSERT INTO outbox (message_id, routing_key, body)
    SELECT :message_id, :routing_key, :body FROM job
    RETURNING id
    """
)


async def _insert_with_event(*, session: AsyncSession, job: Job) -> bool:
    event = JobSubmitted(
        tenant_id=job.tenant_id,
        job_id=job.id,
        kernel=job.kernel,
        device=job.device,
        priority=job.priority,
    )
    row = await session.execute(
        _INSERT_JOB,
        {
            "id": job.id,
            "tenant_id": job.tenant_id,
            "kernel": job.kernel,
            "device": job.device,
            "params": orjson.dumps(job.params).decode(),
            "inputs": orjson.dumps(job.inputs).decode(),
            "outputs": orjson.dumps(job.outputs).decode(),
            "output_tier": job.output_tier,
            "labels": orjson.dumps(job.labels).decode(),
            "priority": job.priority,
            "timeout_s": job.timeout_s,
            "max_retries": job.max_retries,
            "idempotency_key": job.idempotency_key,
            "created_at": job.created_at,
            "message_id": event.event_id,
            "routing_key": event.routing_key,
            "body": event.to_bytes(),
        },
    )
    if row.first() is None:
        return False
    session.info["outbox"] = True  # the owner of the transaction wakes the relay
    return True


class QueueQuota:
    """``max_queued_jobs``: 429 when a tenant already has that many jobs waiting (PENDING or
    QUEUED). Counting on every submission costs more than the submission itself once queues
    are long, so each gateway keeps a count per tenant for ``ttl_s`` and adds its own
    submissions to it; it asks the database again when the count expires or comes within 10%
    of the limit. Concurrent submissions are not serialised, so a burst may overshoot by the
    number of requests in flight at once; the next submission sees the true count."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._counts: dict[uuid.UUID, tuple[float, int]] = {}

    async def check(self, *, session: AsyncSession, tenant_id: uuid.UUID, limit: int) -> None:
        now = time.monotonic()
        hit = self._counts.get(tenant_id)
        if hit is not None and hit[0] > now and hit[1] + 1 < 0.9 * limit:
            self._counts[tenant_id] = (hit[0], hit[1] + 1)
            return
        waiting = await session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == tenant_id, Job.state.in_(("PENDING", "QUEUED")))
        )
        if (waiting or 0) >= limit:
            raise TooManyRequests(f"max_queued_jobs ({limit}) reached; retry later", retry_after=5)
        if len(self._counts) > 10_000:
            self._counts.clear()
        self._counts[tenant_id] = (now + self.ttl_s, (waiting or 0) + 1)


async def _find_idempotent(
    *, session: AsyncSession, tenant_id: uuid.UUID, key: str, window_s: int
) -> Job | None:
    job = (
        await session.execute(
            select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
        )
    ).scalar_one_or_none()
    if job is None:
        return None
    if job.created_at < utcnow() - timedelta(seconds=window_s):
        # The key expired: release it so that this request creates a new job.
        await session.execute(update(Job).where(Job.id == job.id).values(idempotency_key=None))
        return None
    return job


async def get_job(*, session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    job = (
        await session.execute(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    ).scalar_one_or_none()
    if job is None:
        raise NotFound("job not found")
    return job


async def list_jobs(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    state: JobState | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Job], str | None]:
    query = select(Job).where(Job.tenant_id == tenant_id)
    if state is not None:
        query = query.where(Job.state == state.value)
    return await keyset_page(
        session, query, created=Job.created_at, key=Job.id, limit=limit, cursor=cursor
    )


async def cancel_job(*, session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    await lock_job(session, job_id, tenant_id=tenant_id)  # 404 for another tenant's job
    transition = await set_job_state(
        session, job_id, JobState.CANCELLED, tenant_id=tenant_id, reason="cancelled by the user"
    )
    if not transition.accepted:
        raise Conflict(f"job is already {transition.previous}")
    await add_event(
        session,
        JobCancelled(tenant_id=tenant_id, job_id=job_id, worker=transition.job.worker),
    )
    return transition.job
