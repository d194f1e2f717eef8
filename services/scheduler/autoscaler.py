"""The autoscaler loop: per worker pool, its demand (``demand.pool_demand``), the decision of
``pool_policy.PoolScaler``, the backend acts, and the outcome goes to ``worker_pools`` (read
by ``GET /v1/admin/pools``) and ``/metrics``.

One scheduler at a time acts: the pass runs under a transaction-scoped advisory lock, so a
second scheduler (or one restarted while the old one still finishes a pass) skips it. The
cooldown's start is stored with the pool, so a restarted scheduler keeps it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import cast, func, literal, select
from sqlalchemy.dialects.postgresql import JSONPATH, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.backends import BackendError, ScalingBackend
from services.scheduler.demand import Demand, live_workers, pool_demand
from services.scheduler.pool_policy import Decision, PoolPolicy, PoolScaler
from services.scheduler.preempt import loss_per_worker
from services.scheduler.settings import AutoscaleSettings
from shared.db import advisory
from shared.db.models import WorkerPool
from shared.jobs.pools import POOLS
from shared.logging import get_logger
from shared.settings import QuotaDefaults
from shared.telemetry import REGISTRY

log = get_logger(__name__)

ADVISORY_LOCK = advisory.AUTOSCALER  # one autoscaler at a time
HISTORY = 50  # decisions kept per pool

WORKERS = Gauge(
    "stratus_pool_workers", "Workers the backend runs per pool", ["pool"], registry=REGISTRY
)
DESIRED = Gauge(
    "stratus_pool_desired_workers", "Workers the demand asks for", ["pool"], registry=REGISTRY
)
LIVE = Gauge(
    "stratus_pool_live_workers", "Workers heartbeating per pool", ["pool"], registry=REGISTRY
)
DEMAND = Gauge(
    "stratus_pool_demand_jobs",
    "Jobs needing a pool's workers",
    ["pool", "state"],
    registry=REGISTRY,
)
BLOCKED = Gauge(
    "stratus_pool_held_jobs",
    "Waiting jobs that are not demand (quota, suspended tenant, retry backoff, stage-in)",
    ["pool"],
    registry=REGISTRY,
)
DECISIONS = Counter(
    "stratus_pool_scaling_decisions_total",
    "Scaling decisions taken (up, down)",
    ["pool", "action"],
    registry=REGISTRY,
)


def policy_of(settings: AutoscaleSettings, pool: str) -> PoolPolicy:
    bounds = settings.cpu if pool == "cpu" else settings.cuda
    return PoolPolicy(
        min_workers=bounds.min_workers,
        max_workers=bounds.max_workers,
        target_jobs_per_worker=bounds.target_jobs_per_worker or settings.target_jobs_per_worker,
        cooldown_s=settings.cooldown_s,
    )


class Autoscaler:
    def __init__(
        self,
        settings: AutoscaleSettings,
        backend: ScalingBackend,
        *,
        worker_ttl_s: float,
        quota_defaults: QuotaDefaults | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.worker_ttl_s = worker_ttl_s
        self.quota_defaults = quota_defaults or QuotaDefaults()  # as the dispatcher's
        self.scalers = {p: PoolScaler(policy_of(settings, p)) for p in POOLS}
        self._restored = False
        # an observing backend: the last advice per pool, so that a standing one is said once
        self._advice: dict[str, tuple[str, int]] = {}

    async def step(self, sessions: async_sessionmaker[AsyncSession]) -> list[Decision]:
        """One pass over every pool; returns the decisions that changed a pool."""
        async with sessions() as session, session.begin():
            locked = await session.scalar(select(func.pg_try_advisory_xact_lock(ADVISORY_LOCK)))
            if not locked:
                return []
            now = await session.scalar(select(func.now()))
            assert now is not None
            if not self._restored:
                await self._restore(session)
            any_pool = "cpu" if self.settings.cpu.max_workers > 0 else "cuda"
            demand = await pool_demand(
                session=session, any_pool=any_pool, now=now, quota_defaults=self.quota_defaults
            )
            live = await live_workers(session=session, now=now, worker_ttl_s=self.worker_ttl_s)
            # a scale-down stops the workers whose jobs lose least (drained through checkpoints)
            busy = await loss_per_worker(session=session)
            acted: list[Decision] = []
            for pool in POOLS:
                try:
                    decision, workers = await self._pool(
                        pool, demand[pool], live.get(pool, 0), busy, now
                    )
                except BackendError as exc:
                    log.warning("autoscale_backend_failed", pool=pool, error=str(exc))
                    continue
                await self._save(session, pool, decision, workers, demand[pool], now)
                LIVE.labels(pool).set(live.get(pool, 0))
                if decision.action != "hold":
                    acted.append(decision)
            return acted

    async def _pool(
        self, pool: str, demand: Demand, live: int, busy: dict[str, int], now: datetime
    ) -> tuple[Decision, int]:
        """The pool's decision, acted on; returns it (a hold when an observing backend's
        advice has not changed) and the workers the pool has after it."""
        backend = self.backend
        current = await backend.current(pool) if backend.acts else live
        decision = self.scalers[pool].decide(
            demand=demand.total, current=current, now=now.timestamp()
        )
        WORKERS.labels(pool).set(current)
        DESIRED.labels(pool).set(decision.desired)
        DEMAND.labels(pool, "queued").set(demand.queued)
        DEMAND.labels(pool, "running").set(demand.running)
        BLOCKED.labels(pool).set(demand.blocked)
        if not backend.acts:
            advice = (decision.action, decision.target)
            if decision.action == "hold" or self._advice.get(pool) == advice:
                self._advice[pool] = advice
                return dataclasses.replace(decision, action="hold"), current
            self._advice[pool] = advice
        if decision.action == "hold":
            return decision, current
        DECISIONS.labels(pool, decision.action).inc()
        log.info(
            "pool_scaled",
            pool=pool,
            action=decision.action,
            workers=current,
            target=decision.target,
            desired=decision.desired,
            demand=demand.total,
            blocked=demand.blocked,
            reason=decision.reason,
            backend=backend.name,
        )
        if not backend.acts:
            return decision, current
        reached = await backend.scale(pool, decision.target, busy=busy)
        WORKERS.labels(pool).set(reached)
        return decision, reached

    async def _restore(self, session: AsyncSession) -> None:
        rows = await session.execute(select(WorkerPool.pool, WorkerPool.over_provisioned_since))
        for pool, since in rows:
            if pool in self.scalers and since is not None:
                self.scalers[pool].over_since = since.timestamp()
        self._restored = True

    async def _save(
        self,
        session: AsyncSession,
        pool: str,
        d: Decision,
        workers: int,
        demand: Demand,
        now: datetime,
    ) -> None:
        scaler = self.scalers[pool]
        p = scaler.policy
        since = scaler.over_since
        values: dict[str, Any] = {
            "backend": self.backend.name,
            "min_workers": p.min_workers,
            "max_workers": p.max_workers,
            "target_jobs_per_worker": p.target_jobs_per_worker,
            "cooldown_s": p.cooldown_s,
            "current_workers": workers,
            "desired_workers": d.desired,
            "queued_jobs": demand.queued,
            "running_jobs": demand.running,
            "held_jobs": demand.blocked,
            "over_provisioned_since": None if since is None else _at(now, since),
            "updated_at": now,
        }
        entries = [] if d.action == "hold" else [_entry(d, demand, now)]
        stmt = insert(WorkerPool).values(pool=pool, decisions=entries, **values)
        history = WorkerPool.__table__.c.decisions
        if entries:
            keep = func.jsonb_path_query_array(
                history.concat(stmt.excluded.decisions),
                cast(literal(f"$[last - {HISTORY - 1} to last]"), JSONPATH),
            )
            values["decisions"] = keep
        await session.execute(stmt.on_conflict_do_update(index_elements=["pool"], set_=values))


def _at(now: datetime, ts: float) -> datetime:
    return now + timedelta(seconds=ts - now.timestamp())


def _entry(d: Decision, demand: Demand, now: datetime) -> dict[str, Any]:
    return {
        "at": now.isoformat(),
        "action": d.action,
        "from": d.current,
        "to": d.target,
        "desired": d.desired,
        "demand": demand.total,
        "reason": d.reason,
    }


def make_backend(settings: AutoscaleSettings) -> ScalingBackend:
    if settings.backend == "local":
        from services.scheduler.backends.local import LocalBackend

        return LocalBackend(settings.local)
    if settings.backend == "docker":
        from services.scheduler.backends.docker import DockerBackend

        return DockerBackend(settings.docker)
    from services.scheduler.backends.external import ObservingBackend

    return ObservingBackend(settings.backend)


def make_autoscale_step(
    sessions: async_sessionmaker[AsyncSession], scaler: Autoscaler
) -> Callable[[], Awaitable[Sequence[Decision]]]:
    async def step() -> Sequence[Decision]:
        return await scaler.step(sessions)

    return step
