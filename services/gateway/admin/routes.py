"""``/v1/admin/dead-letters`` (platform admin): what the consumers gave up on, and re-drive.

Every durable queue dead-letters a message after its delivery limit (or at once when a handler
rejects it) into ``<queue>.dlq``. An operator looks at them here and, once the cause is fixed,
moves them back one at a time (confirmed publish, then ack: never lost, at worst duplicated,
and every consumer tolerates duplicates).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from services.gateway.deps import PrincipalDep, ResourcesDep, SessionDep
from services.gateway.routing import feature_router
from services.gateway.tenants.audit import audit
from shared.errors import NotFound
from shared.messaging.topology import DURABLE_QUEUES

router = feature_router(
    prefix="/v1/admin/dead-letters",
    tag="admin",
    errors={
        403: "not the admin key",
        404: "no such queue, or no dead letter in it",
        503: "the broker is unavailable",
    },
)


def _queues(res: ResourcesDep) -> dict[str, str]:
    names = [res.broker.qname(spec) for spec in DURABLE_QUEUES]
    return {name: f"{name}.dlq" for name in names}


@router.get("")
async def list_dead_letters(
    principal: PrincipalDep,
    res: ResourcesDep,
    session: SessionDep,
    peek: Annotated[int, Query(ge=0, le=100)] = 10,
) -> dict[str, Any]:
    """Per queue: how many dead letters wait, and the oldest ``peek`` of them (left in place)."""
    principal.require_admin()
    items = []
    for queue, dlq in _queues(res).items():
        sample = await res.broker.peek(dlq, limit=peek) if peek else []
        items.append(
            {
                "queue": queue,
                "dead_letter_queue": dlq,
                "messages": await res.broker.depth(dlq),
                "oldest": [
                    {
                        "message_id": d.message_id,
                        "deliveries": d.delivery_count,
                        "body": d.body[:2048].decode("utf-8", "replace"),
                    }
                    for d in sample
                ],
            }
        )
    await audit(session=session, actor=principal.actor, action="dead_letters.read")
    return {"items": items}


@router.post("/{queue}/redrive")
async def redrive_one(
    queue: str, principal: PrincipalDep, res: ResourcesDep, session: SessionDep
) -> dict[str, Any]:
    """Move the oldest dead letter of ``queue`` back onto ``queue``."""
    principal.require_admin()
    dlq = _queues(res).get(queue)
    if dlq is None:
        raise NotFound(f"no durable queue named {queue!r}")
    moved = await res.broker.redrive(dlq, queue)
    if moved is None:
        raise NotFound(f"{dlq} is empty")
    await audit(
        session=session,
        actor=principal.actor,
        action="dead_letter.redriven",
        target=queue,
        details={"message_id": moved.message_id},
    )
    return {"queue": queue, "message_id": moved.message_id}
