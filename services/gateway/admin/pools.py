"""``GET /v1/admin/pools`` (platform admin): the worker pools as the autoscaler sees them.

The scheduler's autoscaler writes each pool's bounds, demand, current and desired worker
counts and its last decisions to ``worker_pools`` on every pass; the live workers (fresh
heartbeats) and their running jobs are read here, at request time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from services.gateway.deps import PrincipalDep, SessionDep
from services.gateway.routing import feature_router
from services.gateway.tenants.audit import audit
from shared.db.models import Worker, WorkerPool
from shared.jobs.pools import POOLS, heartbeat_fresh, running_per_worker

router = feature_router(
    prefix="/v1/admin/pools",
    tag="admin",
    errors={403: "not the admin key", 503: "the database is unavailable"},
)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")


@router.get("")
async def list_pools(principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    """Per pool (``cpu``, ``cuda``): the autoscaler's bounds, demand (queued and running
    jobs; ``held_jobs`` wait but are not demand), current and desired workers, its recent
    decisions, and the live workers."""
    principal.require_admin()
    now = await session.scalar(select(func.now()))
    assert now is not None
    stored = {p.pool: p for p in (await session.scalars(select(WorkerPool))).all()}
    running = await running_per_worker(session=session)
    workers = (
        await session.scalars(
            select(Worker).where(heartbeat_fresh(now)).order_by(Worker.started_at, Worker.id)
        )
    ).all()
    items = []
    for pool in POOLS:
        mine = [w for w in workers if w.device == pool]
        item: dict[str, Any] = {
            "pool": pool,
            "autoscaling": pool in stored,
            "live_workers": sum(not w.stopping for w in mine),
            "workers": [
                {
                    "id": w.id,
                    "concurrency": w.concurrency,
                    "running_jobs": running.get(w.id, 0),
                    "stopping": w.stopping,
                    "started_at": _iso(w.started_at),
                    "heartbeat_at": _iso(w.heartbeat_at),
                }
                for w in mine
            ],
        }
        if pool in stored:
            item |= _autoscaler_view(stored[pool])
        items.append(item)
    await audit(session=session, actor=principal.actor, action="pools.read")
    return {"items": items}


def _autoscaler_view(p: WorkerPool) -> dict[str, Any]:
    return {
        "backend": p.backend,
        "min_workers": p.min_workers,
        "max_workers": p.max_workers,
        "target_jobs_per_worker": p.target_jobs_per_worker,
        "cooldown_s": p.cooldown_s,
        "current_workers": p.current_workers,
        "desired_workers": p.desired_workers,
        "queued_jobs": p.queued_jobs,
        "running_jobs": p.running_jobs,
        "held_jobs": p.held_jobs,
        "over_provisioned_since": _iso(p.over_provisioned_since),
        "decisions": list(reversed(p.decisions)),  # newest first
        "updated_at": _iso(p.updated_at),
    }
