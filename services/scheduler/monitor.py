"""Gauges the alerting rules need that no event counts (``deploy/prometheus``): the age of the
oldest job waiting in each pool, the dead letters waiting in each queue, and each tenant's use
of its job quotas. The scheduler's ``monitor`` loop sets them every ``MONITOR_INTERVAL_S``;
``/metrics`` reads them (with several schedulers, each sets the same values: the rules take
the maximum)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import text

from shared.jobs.usage import IN_FLIGHT, cpu_today_sql, waiting_jobs_sql
from shared.logging import get_logger
from shared.messaging.topology import DURABLE_QUEUES
from shared.runtime import Resources
from shared.settings import QuotaDefaults
from shared.telemetry import REGISTRY

log = get_logger(__name__)

MONITOR_INTERVAL_S = 15.0

OLDEST_QUEUED = Gauge(
    "stratus_pool_oldest_queued_seconds",
    "Age of the oldest job QUEUED per pool (device), 0 when none waits",
    ["pool"],
    registry=REGISTRY,
)
DEAD_LETTERS = Gauge(
    "stratus_dead_letters",
    "Messages waiting in a durable queue's dead-letter queue",
    ["queue"],
    registry=REGISTRY,
)
QUOTA_USE = Gauge(
    "stratus_tenant_quota_use_ratio",
    "A tenant's use of a quota (0-1+), for tenants with jobs not final",
    ["tenant", "quota"],
    registry=REGISTRY,
)
POOLS = ("cpu", "cuda", "any")

_OLDEST = text(
    """
SELECT device, extract(epoch FROM now() - min(coalesce(queued_at, created_at)))::float8
FROM jobs WHERE state = 'QUEUED' AND NOT is_array GROUP BY device
"""
)

_QUOTAS = text(
    f"""
SELECT t.name, t.quotas,
    (SELECT count(*) FROM jobs WHERE tenant_id = t.id AND {IN_FLIGHT}) AS in_flight,
    {waiting_jobs_sql("t.id")} AS waiting,
    {cpu_today_sql("t.id")} AS cpu_day
FROM tenants t
WHERE t.id IN (SELECT DISTINCT tenant_id FROM jobs WHERE state IN ('PENDING', 'QUEUED', 'RUNNING'))
"""  # noqa: S608 (fixed SQL of the project's own fragments)
)


def make_monitor_step(res: Resources, quotas: QuotaDefaults) -> Callable[[], Awaitable[None]]:
    async def step() -> None:
        async with res.sessions() as session:
            oldest = {row[0]: float(row[1]) for row in await session.execute(_OLDEST)}
            tenants = (await session.execute(_QUOTAS)).all()
        for pool in POOLS:
            OLDEST_QUEUED.labels(pool).set(oldest.get(pool, 0.0))
        QUOTA_USE.clear()  # tenants with nothing in flight drop out
        for t in tenants:
            for quota, used in quota_use(quotas.effective(t.quotas or {}), t).items():
                QUOTA_USE.labels(t.name, quota).set(used)
        for spec in DURABLE_QUEUES:
            name = res.broker.qname(spec)
            try:
                DEAD_LETTERS.labels(name).set(await res.broker.depth(f"{name}.dlq"))
            except Exception as exc:  # the broker away: the gauge keeps its last value
                log.warning("dead_letter_depth_unknown", queue=name, error=type(exc).__name__)

    return step


def quota_use(limits: dict[str, Any], row: Any) -> dict[str, float]:
    """The share of each job quota the tenant of ``row`` uses (a limit of 0 used: 1)."""
    used = {
        "max_running_jobs": float(row.in_flight),
        "max_queued_jobs": float(row.waiting),
        "cpu_seconds_per_day": float(row.cpu_day),
    }
    return {
        quota: (value / limits[quota] if limits[quota] else float(value > 0))
        for quota, value in used.items()
    }
