"""``/v1/jobs`` and ``/v1/kernels``: parse, call one service function, map the result."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import Path, Query, Request, Response
from pydantic import TypeAdapter

from services.gateway.deps import PrincipalDep, SessionDep
from services.gateway.jobs import admission, elements, service
from services.gateway.jobs.schemas import JobList, JobOut, JobSubmit, LabelKey, LabelValue
from services.gateway.routing import PageDep, feature_router
from services.gateway.settings import GatewaySettings
from shared import tracing
from shared.errors import Invalid
from shared.idempotency import IdempotencyKey
from shared.jobs.states import JobState
from shared.kernels import CATALOGUE
from shared.logging import get_logger
from shared.pagination import DEFAULT_LIMIT, LimitQuery

log = get_logger(__name__)

router = feature_router(
    prefix="/v1",
    tag="jobs",
    errors={
        403: "key lacks the scope, or tenant suspended",
        404: "no such job for this tenant",
        409: "the job is already final (cancel)",
        413: "the outputs' predicted size is over what is left of the storage_bytes quota",
        422: "validation failed",
        429: "rate limit or quota exceeded",
        503: "a dependency is down; retry after Retry-After",
    },
)


@router.get("/kernels")
async def list_kernels(principal: PrincipalDep) -> list[dict[str, Any]]:
    principal.require_tenant("jobs:read")
    return [spec.describe() for spec in CATALOGUE.values()]


@router.post("/jobs", status_code=201)
async def submit_job(
    body: JobSubmit,
    principal: PrincipalDep,
    response: Response,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    # The hot path: no session dependency (the insert is group-committed by the writer, the
    # reads are plain asyncpg) and the settings read off the app, not through a dependency.
    start_ns = time.time_ns()
    tenant_id = principal.require_tenant("jobs:write")
    state = request.app.state
    settings: GatewaySettings = state.settings
    submitted = await service.submit_job(
        db=state.submit_db,
        tenant_id=tenant_id,
        data=body,
        idempotency_key=idempotency_key,
        default_timeout_s=settings.default_timeout_s,
        default_max_retries=settings.default_max_retries,
        idempotency_window_s=settings.idempotency_window_s,
        max_queued_jobs=int(principal.quotas["max_queued_jobs"]),
        limits=admission.Limits(
            storage=state.storage,
            job_memory_bytes=settings.limits.job_memory_bytes(),
            storage_quota=int(principal.quotas["storage_bytes"]),
            pools=state.closed_pools,
        ),
        tiers=state.tiers,
        array_max_size=settings.array_max_size,
        webhooks=settings.webhooks,
    )
    if not submitted.replayed:
        tracing.submitted(submitted.job.id, start_ns)  # the root of the job's trace, if on
        if tracing.enabled():  # its log line, in that span (tracing off: no line)
            job_id = uuid.UUID(submitted.job.id)
            with tracing.about(job_id, job_id, "submit"):
                log.info("job_submitted", job_id=str(job_id), tenant_id=str(tenant_id))
    response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return submitted.job


# A job's id in a route: a job's or an array's UUID, or an element's "{array_id}:{index}".
# Anything else is no job of the caller's: 404, as another tenant's id (openapi.py gives it
# its pattern in the document).
JobIdPath = Annotated[
    str,
    Path(
        description="a job's or an array's id, or an element's: \"{array_id}:{index}\"",
    ),
]


@router.get("/jobs/{job_id}")
async def get_job(job_id: JobIdPath, principal: PrincipalDep, session: SessionDep) -> JobOut:
    """A job; an array, with its settings and its elements' counts by state; or an element
    (``{array_id}:{index}``), also before it was scheduled (PENDING)."""
    tenant_id = principal.require_tenant("jobs:read")
    return await service.get_job(session=session, tenant_id=tenant_id, job_id=job_id)


@router.get("/jobs/{job_id}/elements")
async def list_elements(
    job_id: JobIdPath,
    principal: PrincipalDep,
    session: SessionDep,
    state: JobState | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(
            max_length=9,
            pattern=r"^[0-9]*$",
            description="the `next_cursor` of the previous page (an element index)",
        ),
    ] = None,
) -> JobList:
    """The elements of an array in index order, from ``cursor`` up; with ``state``, only
    those in that state (an element not scheduled yet is PENDING, or CANCELLED once its
    array is). 404 for a job that is not an array."""
    tenant_id = principal.require_tenant("jobs:read")
    page = await elements.list_elements(
        session=session, tenant_id=tenant_id, text=job_id, state=state, limit=limit, cursor=cursor
    )
    return JobList(items=page.items, next_cursor=page.next_cursor)


LABELS = TypeAdapter(dict[LabelKey, LabelValue])


def label_pairs(given: list[str]) -> tuple[tuple[str, str], ...]:
    """``?label=k:v`` (repeatable) as pairs; a key and value follow the submission's rules."""
    pairs = []
    for i, text in enumerate(given):
        key, colon, value = text.partition(":")
        try:
            if not colon:
                raise ValueError
            LABELS.validate_python({key: value})
        except ValueError:
            raise Invalid(
                f"label filter {i} is not key:value",
                errors=[{"loc": ["query", "label", i], "msg": "expected key:value (a job label)"}],
            ) from None
        pairs.append((key, value))
    return tuple(pairs)


@router.get("/jobs")
async def list_jobs(
    principal: PrincipalDep,
    session: SessionDep,
    page: PageDep,
    state: JobState | None = None,
    kernel: Annotated[
        str | None, Query(min_length=1, max_length=100, description="kernel name")
    ] = None,
    label: Annotated[
        list[str] | None,
        # a job has at most 64 labels: more filters than that cannot all match
        Query(max_length=64, description="`key:value`; repeat it: every one must match"),
    ] = None,
) -> JobList:
    tenant_id = principal.require_tenant("jobs:read")
    where = service.JobFilter(
        state=state,
        kernel=kernel,
        labels=label_pairs(label or []),
        created_after=page.created_after,
        created_before=page.created_before,
    )
    items, next_cursor = await service.list_jobs(
        session=session, tenant_id=tenant_id, where=where, limit=page.limit, cursor=page.cursor
    )
    return JobList(items=items, next_cursor=next_cursor)


@router.post("/jobs/{job_id}/cancel", status_code=202)
async def cancel_job(job_id: JobIdPath, principal: PrincipalDep, session: SessionDep) -> JobOut:
    """Cancel a job or an element (a running one is stopped within 5 s), or an array: every
    element that is not final. 409 when it is final already."""
    tenant_id = principal.require_tenant("jobs:write")
    return await service.cancel_job(session=session, tenant_id=tenant_id, job_id=job_id)
