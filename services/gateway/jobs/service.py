"""Job use cases for the gateway. Functions take ``session`` as a keyword and never commit;
submission, the hot path, writes through the group-commit ``JobWriter`` instead (see
``services.gateway.jobs.writer``) and reads on plain asyncpg."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, TextClause, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.jobs import admission, arrays, cancel, elements
from services.gateway.jobs.schemas import JobOut, JobSubmit, NotifySpec
from services.gateway.jobs.writer import FROM_REQUEST, JobWriter, NewJob
from services.gateway.webhooks.service import check_notify
from services.gateway.workflows.depends import write_dependent
from shared.db.models import Job
from shared.errors import Conflict, Invalid
from shared.events import utcnow
from shared.idempotency import check_replay, request_hash
from shared.jobs.arrays import new_array_id
from shared.jobs.deps import WAITING
from shared.jobs.row import Columns, stored
from shared.jobs.states import JobState
from shared.jobs.store import ADMIT_REASON
from shared.kernels import KernelSpec, get_spec
from shared.pagination import keyset_page
from shared.settings import WebhookSettings


@dataclass(frozen=True)
class Submitted:
    job: JobOut
    replayed: bool


def _check_io(kind: str, given: dict[str, str], expected: tuple[str, ...]) -> None:
    missing = sorted(set(expected) - set(given))
    unknown = sorted(set(given) - set(expected))
    errors = [{"loc": ["body", kind, n], "msg": f"{kind[:-1]} is required"} for n in missing]
    errors += [{"loc": ["body", kind, n], "msg": f"unknown {kind[:-1]}"} for n in unknown]
    if errors:
        raise Invalid(f"{kind} do not match the kernel", errors=errors)


class SubmitDb(Protocol):
    """What a submission needs from the database: a guarded plain asyncpg connection for its
    few reads (``deps.raw_db``), a session only for what is shared with other routes (the
    datasets of its inputs), and the group-commit writer for the insert."""

    def raw(self) -> AbstractAsyncContextManager[Any]: ...

    def session(self) -> AbstractAsyncContextManager[AsyncSession]: ...

    @property
    def writer(self) -> JobWriter: ...


async def submit_job(
    *,
    db: SubmitDb,
    tenant_id: uuid.UUID,
    data: JobSubmit,
    idempotency_key: str | None,
    default_timeout_s: int,
    default_max_retries: int,
    idempotency_window_s: int,
    max_queued_jobs: int,
    limits: admission.Limits,
    tiers: Collection[str] = ("local",),
    array_max_size: int = 100_000,
    webhooks: WebhookSettings | None = None,
) -> Submitted:
    """Validate, answer a replay, then insert through the writer (group commit), which
    takes the job's place in the tenant's queue (``max_queued_jobs``) in the same statement;
    an array (``data.array``) takes one place per element, in a statement of its own.
    No session is opened unless the job names datasets."""
    spec = get_spec(data.kernel)
    params = _checked_params(data, spec, tiers)
    await check_notify(
        db=db, tenant_id=tenant_id, notify=data.notify, settings=webhooks or WebhookSettings()
    )
    plan = None
    if data.array is None:
        await admission.admit(
            db=db, tenant_id=tenant_id, data=data, spec=spec, params=params, limits=limits
        )
    else:
        plan = arrays.check_array(data, spec, max_size=array_max_size)
        await admission.admit_array(
            db=db, tenant_id=tenant_id, data=data, spec=spec, plan=plan, limits=limits
        )
    fingerprint = None if idempotency_key is None else request_hash(data)

    async def holder() -> JobOut | None:
        """The job that already holds ``idempotency_key``."""
        if idempotency_key is None or fingerprint is None:
            return None
        return await _find_idempotent(
            db=db,
            tenant_id=tenant_id,
            key=idempotency_key,
            fingerprint=fingerprint,
            window_s=idempotency_window_s,
        )

    existing = await holder()
    if existing is not None:
        return Submitted(existing, replayed=True)
    job = _new_job(
        tenant_id=tenant_id,
        data=data,
        max_queued=max_queued_jobs,
        kernel=spec.name,
        params=params,
        timeout_s=data.timeout_s or default_timeout_s,
        max_retries=data.max_retries if data.max_retries is not None else default_max_retries,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        job_id=None if plan is None else new_array_id(),
        notify=None if data.notify is None else data.notify.model_dump(),
    )
    if plan is not None:
        job.row["is_array"] = True
    if data.depends_on:  # a transaction of its own, with the dependencies locked
        array = None if plan is None else plan.array
        written = await write_dependent(db=db, job=job, array=array, depends_on=data.depends_on)
    elif plan is None:
        written = await db.writer.write(job)
    else:
        written = await db.writer.write_array(job, plan.array)
    if written:
        return Submitted(_created(job, plan), replayed=False)
    # A concurrent request with the same key won the race: answer with its job.
    existing = await holder()
    if existing is None:
        raise Conflict("a request with this Idempotency-Key is in progress; retry")
    return Submitted(existing, replayed=True)


def _checked_params(data: JobSubmit, spec: KernelSpec, tiers: Collection[str]) -> dict[str, Any]:
    """The kernel's params validated (an array's are its elements', checked by
    ``arrays.check_array``: they are stored as given); 422 for a tier, device, input or
    output that the configuration or the kernel does not know."""
    if data.output_tier not in tiers:
        raise Invalid(
            f"unknown output tier {data.output_tier!r}",
            errors=[{"loc": ["body", "output_tier"], "msg": f"one of {sorted(tiers)}"}],
        )
    if data.array is None:
        arrays.check_no_index(data)
        params = spec.validate_params(data.params)
    else:
        params = dict(data.params)
    if data.device != "any" and data.device not in spec.devices:
        raise Invalid(
            f"kernel {spec.name!r} does not run on {data.device!r}",
            errors=[{"loc": ["body", "device"], "msg": "unsupported device"}],
        )
    _check_io("inputs", data.inputs, spec.inputs)
    _check_io("outputs", data.outputs, spec.outputs)
    return params


def _new_job(
    *,
    tenant_id: uuid.UUID,
    data: JobSubmit,
    max_queued: int,
    job_id: uuid.UUID | None = None,
    **columns: Any,
) -> NewJob:
    """The row a submission writes (``WRITTEN``): the request's fields as they come,
    ``columns`` (what the gateway works out) over them, a job created now (``job_id``, else a
    new one).

    A single job without inputs is stored QUEUED, as admission would make it at once (it has
    nothing to stage in): the scheduler's dispatch takes it without a PENDING -> QUEUED
    step. A job with inputs stays PENDING for admission and its stage-in; an array's own
    row is PENDING, its state then being its elements'."""
    job_id = job_id or uuid.uuid4()
    now = utcnow()
    row = {name: getattr(data, name) for name in FROM_REQUEST}
    row.update(columns)
    queued = not data.inputs and data.array is None and not data.depends_on
    row.update(
        id=job_id,
        tenant_id=tenant_id,
        state=(JobState.QUEUED if queued else JobState.PENDING).value,
        attempts=0,
        checkpoints=0,
        preemptions=0,
        created_at=now,
        updated_at=now,
        queued_at=now if queued else None,
        state_reason=ADMIT_REASON if queued else (WAITING if data.depends_on else None),
    )
    return NewJob(row, max_queued=max_queued)


def _created(job: NewJob, plan: arrays.ArrayPlan | None = None) -> JobOut:
    """The answer for a job just inserted: what its row holds (the columns a submission does
    not write are still empty), without reading it back; an array's elements all pending."""
    row = job.row
    values: dict[str, Any] = {name: row.get(name) for name in JobOut.model_fields}
    values["id"] = str(row["id"])
    if row.get("notify") is not None:
        values["notify"] = NotifySpec.model_validate(row["notify"])
    if plan is not None:
        values["array"] = arrays.created_array(plan.array)
    return JobOut.model_construct(**values)


# What a replay answers, and the fingerprint it checks.
_REPLAYED = Columns(stored((*JobOut.model_fields, "request_hash")))
_FIND_BY_KEY = f"""
SELECT {_REPLAYED.select()}, is_array FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2
"""  # noqa: S608 (column names of the model only)
_RELEASE_KEY = "UPDATE jobs SET idempotency_key = NULL WHERE id = $1"


async def _find_idempotent(
    *, db: SubmitDb, tenant_id: uuid.UUID, key: str, fingerprint: str, window_s: int
) -> JobOut | None:
    """The job that ``key`` names within its window, or None; 422 if it was submitted with
    another body."""
    async with db.raw() as conn:
        row = await conn.fetchrow(_FIND_BY_KEY, tenant_id, key)
        if row is None:
            return None
        if row["created_at"] < utcnow() - timedelta(seconds=window_s):
            # The key expired: release it so that this request creates a new job.
            await conn.execute(_RELEASE_KEY, row["id"])
            return None
        array = await conn.fetchrow(arrays.ARRAY_OF, row["id"]) if row["is_array"] else None
    check_replay(stored=row["request_hash"], given=fingerprint)
    job = JobOut.model_validate(_REPLAYED.decode(row))
    if array is not None:
        job.array = arrays.array_out(array)
    return job


async def get_job(*, session: AsyncSession, tenant_id: uuid.UUID, job_id: str) -> JobOut:
    """A job, an array or an element (``job_id``: a UUID or ``"{array_id}:{index}"``)."""
    return await elements.read_job(session=session, tenant_id=tenant_id, text=job_id)


@dataclass(frozen=True)
class JobFilter:
    """What ``GET /v1/jobs`` narrows the list to; every condition given must hold."""

    state: JobState | None = None
    kernel: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None


# With the list's ``array_id IS NULL``, the predicate of the partial index
# ``ix_jobs_labelled``, as a literal so that the planner can use that index for a label
# filter.
_LABELLED = text("jobs.labels <> '{}'::jsonb")


def _conditions(where: JobFilter) -> list[ColumnElement[bool] | TextClause]:
    conditions: list[ColumnElement[bool] | TextClause] = []
    if where.state is not None:
        conditions.append(Job.state == where.state.value)
    if where.kernel is not None:
        conditions.append(Job.kernel == where.kernel)
    if where.labels:
        conditions.append(_LABELLED)
        conditions += [Job.labels.contains({key: value}) for key, value in where.labels]
    if where.created_after is not None:
        conditions.append(Job.created_at > where.created_after)
    if where.created_before is not None:
        conditions.append(Job.created_at < where.created_before)
    return conditions


async def list_jobs(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    where: JobFilter,
    limit: int,
    cursor: str | None,
) -> tuple[list[JobOut], str | None]:
    """A page of the tenant's jobs and arrays, newest first; an array's elements are not
    listed (its counts are shown with it)."""
    query = select(Job).where(
        Job.tenant_id == tenant_id, Job.array_id.is_(None), *_conditions(where)
    )
    rows, next_cursor = await keyset_page(
        session, query, created=Job.created_at, key=Job.id, limit=limit, cursor=cursor
    )
    arrays = await elements.arrays_of(session, rows)
    return [elements.job_out(j, arrays.get(j.id)) for j in rows], next_cursor


async def cancel_job(*, session: AsyncSession, tenant_id: uuid.UUID, job_id: str) -> JobOut:
    """Cancel a job, an array (every element not final) or an element."""
    return await cancel.cancel(session=session, tenant_id=tenant_id, text_id=job_id)
