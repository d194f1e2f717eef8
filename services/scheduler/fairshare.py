"""Fair share between tenants: which waiting jobs get the free slots. Pure, no I/O.

Each tenant's *load* is its jobs in flight per unit of weight plus its recent CPU usage
(exponentially decayed, as Slurm's fair-share factor) per unit of weight, with
``usage_scale_s`` CPU seconds counting like one job in flight. Slots go one at a time to the
tenant with the lowest load; within a tenant, jobs go by ``priority`` (9 first), then age.
A tenant that floods the queue raises only its own load, so a light tenant's job goes first.
Tenants at ``max_running_jobs`` or out of ``cpu_seconds_per_day`` get nothing and a reason.
"""

from __future__ import annotations

import heapq
import uuid
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Candidate:
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    kernel: str
    priority: int
    created_at: datetime
    inputs: tuple[str, ...] = ()  # dataset names that must be on ``local`` first


@dataclass
class TenantLoad:
    tenant_id: uuid.UUID
    weight: int
    in_flight: int = 0
    max_running: int = 1 << 30
    usage_s: float = 0.0  # decayed CPU seconds
    cpu_today_s: float = 0.0
    cpu_per_day_s: float = float("inf")
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def held(self) -> str | None:
        """Why none of the tenant's waiting jobs may start now, or ``None``."""
        if self.cpu_today_s >= self.cpu_per_day_s:
            return (
                f"waiting: cpu_seconds_per_day ({self.cpu_per_day_s:g}) used up; "
                "dispatch resumes as the 24 h window rolls"
            )
        if self.in_flight >= self.max_running:
            return f"waiting: max_running_jobs ({self.max_running}) reached"
        return None

    @property
    def headroom(self) -> int:
        """How many more of its jobs may start now (the autoscaler's cap on its demand)."""
        if self.cpu_today_s >= self.cpu_per_day_s:
            return 0
        return max(0, self.max_running - self.in_flight)


HeapKey = tuple[float, int, float, int, uuid.UUID]


@dataclass(frozen=True)
class Allocation:
    chosen: list[Candidate]
    held: dict[uuid.UUID, str]  # tenant -> why its jobs wait


def allocate(tenants: list[TenantLoad], free: int, *, usage_scale_s: float) -> Allocation:
    held: dict[uuid.UUID, str] = {}
    heap: list[HeapKey] = []
    by_id = {t.tenant_id: t for t in tenants}
    taken: dict[uuid.UUID, int] = {}
    for t in tenants:
        if not t.candidates:
            continue
        reason = t.held
        if reason is not None:
            held[t.tenant_id] = reason
            continue
        taken[t.tenant_id] = 0
        heapq.heappush(heap, _key(t, 0, usage_scale_s))
    chosen: list[Candidate] = []
    while heap and len(chosen) < free:
        *_, tenant_id = heapq.heappop(heap)
        t = by_id[tenant_id]
        n = taken[tenant_id]
        chosen.append(t.candidates[n])
        n += 1
        taken[tenant_id] = n
        if n < len(t.candidates) and n < t.headroom:
            heapq.heappush(heap, _key(t, n, usage_scale_s))
    return Allocation(chosen, held)


def _key(
    t: TenantLoad, taken: int, usage_scale_s: float
) -> tuple[float, int, float, int, uuid.UUID]:
    load = (t.in_flight + taken) / t.weight + t.usage_s / (t.weight * usage_scale_s)
    head = t.candidates[taken]
    return (load, -head.priority, head.created_at.timestamp(), taken, t.tenant_id)
