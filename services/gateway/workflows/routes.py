"""``/v1/workflows``: parse, call one service function, map the result."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request, Response

from services.gateway.deps import PrincipalDep, SessionDep
from services.gateway.jobs import admission
from services.gateway.routing import PageDep, feature_router
from services.gateway.settings import GatewaySettings
from services.gateway.workflows import service
from services.gateway.workflows.schemas import WorkflowList, WorkflowOut, WorkflowSubmit
from shared.idempotency import IdempotencyKey

router = feature_router(
    prefix="/v1",
    tag="workflows",
    errors={
        403: "key lacks the scope, or tenant suspended",
        404: "no such workflow for this tenant",
        409: "the workflow is already final (cancel)",
        413: "a step's outputs' predicted size is over what is left of the storage_bytes quota",
        422: "validation failed (a step, an unknown step name, a cycle)",
        429: "rate limit or quota exceeded",
        503: "a dependency is down; retry after Retry-After",
    },
)

WorkflowIdPath = Annotated[str, Path(description="a workflow's id")]


@router.post("/workflows", status_code=201)
async def create_workflow(
    body: WorkflowSubmit,
    principal: PrincipalDep,
    response: Response,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> WorkflowOut:
    """A named graph of job and array submissions, created in one transaction: each step
    starts once the steps it ``depends_on`` reach their condition."""
    tenant_id = principal.require_tenant("jobs:write")
    state = request.app.state
    settings: GatewaySettings = state.settings
    rules = service.Rules(
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
    created = await service.create_workflow(
        db=state.submit_db,
        tenant_id=tenant_id,
        data=body,
        idempotency_key=idempotency_key,
        rules=rules,
    )
    response.headers["Location"] = f"/v1/workflows/{created.workflow.id}"
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return created.workflow


@router.get("/workflows/{workflow_id}")
async def get_workflow(
    workflow_id: WorkflowIdPath, principal: PrincipalDep, session: SessionDep
) -> WorkflowOut:
    tenant_id = principal.require_tenant("jobs:read")
    return await service.get_workflow(session=session, tenant_id=tenant_id, workflow_id=workflow_id)


@router.get("/workflows")
async def list_workflows(
    principal: PrincipalDep, session: SessionDep, page: PageDep
) -> WorkflowList:
    tenant_id = principal.require_tenant("jobs:read")
    items, next_cursor = await service.list_workflows(
        session=session, tenant_id=tenant_id, page=page
    )
    return WorkflowList(items=items, next_cursor=next_cursor)


@router.post("/workflows/{workflow_id}/cancel", status_code=202)
async def cancel_workflow(
    workflow_id: WorkflowIdPath, principal: PrincipalDep, session: SessionDep
) -> WorkflowOut:
    """Cancel every step that is not final; 409 when the workflow is final already."""
    tenant_id = principal.require_tenant("jobs:write")
    return await service.cancel_workflow(
        session=session, tenant_id=tenant_id, workflow_id=workflow_id
    )
