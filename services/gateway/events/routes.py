"""``GET /v1/events`` (the tenant's stream of changes, Server-Sent Events) and
``GET /v1/jobs/{id}/events`` (a job's transitions)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Query, Request
from fastapi.responses import StreamingResponse

from services.gateway.auth import Authenticator
from services.gateway.deps import PrincipalDep, SessionDep, raw_db
from services.gateway.events import service
from services.gateway.events.hub import EventHub
from services.gateway.events.schemas import History
from services.gateway.jobs.routes import JobIdPath
from services.gateway.routing import feature_router
from services.gateway.settings import GatewaySettings
from shared.errors import Forbidden, Unauthorized

router = feature_router(
    prefix="/v1",
    tag="events",
    errors={
        403: "key lacks the scope, or tenant suspended",
        404: "no such job for this tenant",
        422: "validation failed",
        429: "rate limit exceeded",
        503: "a dependency is down; retry after Retry-After",
    },
)

STREAM_DOC = {
    200: {
        "description": (
            "`text/event-stream`: `id:` (increasing), `event:` (`job.state`, `job.progress`, "
            "`job.checkpoint`, `migration.state`, `workflow.state`), `data:` JSON; a "
            "`: keep-alive` comment when idle"
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get("/events", response_class=StreamingResponse, responses=STREAM_DOC)  # type: ignore[arg-type]
async def stream_events(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    after: Annotated[
        str | None,
        Query(max_length=19, description="resume after this event id (as Last-Event-ID)"),
    ] = None,
    job: Annotated[
        str | None,
        Query(
            max_length=60,
            description=(
                "only this job's, array's (with its elements), element's or workflow's events"
            ),
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=19, description="resume after this event id"),
    ] = None,
) -> StreamingResponse:
    """The tenant's changes, oldest first, from now (or after ``Last-Event-ID``/``after``,
    the header first): no gap and no duplicate across reconnects and gateways."""
    tenant_id = principal.require_tenant("jobs:read")
    resume = service.position(last_event_id, loc=["header", "Last-Event-ID"])
    if resume is None:
        resume = service.position(after, loc=["query", "after"])
    target = await service.stream_target(session=session, tenant_id=tenant_id, text=job)
    settings: GatewaySettings = request.app.state.settings
    hub: EventHub = request.app.state.events_hub
    res = request.app.state.resources
    if resume is None:  # from now: whatever is not final yet when the answer starts
        resume = await hub.ready()
    auth: Authenticator = request.app.state.authenticator
    authorization = request.headers.get("authorization")

    async def allowed() -> bool:  # the key still valid, its tenant not suspended
        try:
            again = await auth.authenticate(authorization)
            return again.require_tenant("jobs:read") == tenant_id
        except (Unauthorized, Forbidden):
            return False

    stream = service.Stream(
        tenant_id=tenant_id,
        after=resume,
        job=target,
        keep_alive_s=settings.events_keep_alive_s,
        allowed=allowed,
    )
    return StreamingResponse(
        service.events(stream, hub=hub, db=lambda: raw_db(res)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: JobIdPath, principal: PrincipalDep, session: SessionDep) -> History:
    """A job's, an array's or an element's transitions, oldest first."""
    tenant_id = principal.require_tenant("jobs:read")
    return History(items=await service.history(session=session, tenant_id=tenant_id, text=job_id))
