"""Fair share between tenants: which waiting jobs get the free slots. Pure, no I/O.

Each tenant's *load* is its jobs in flight per unit of weight plus its recent CPU usage
(exponentially decayed, as Slurm's fair-share factor) per unit of weight, with
``usage_scale_s`` CPU seconds counting like one job in flight. Slots go one at a time to the
tenant with the lowest load; within a tenant, jobs go by ``priority`` (9 first), then age.
A tenant that floods the queue raises only its own load, so a light tenant's job goes first.

Limits (``TenantLoad.over_quota``), each a reason on the jobs it keeps waiting:

- ``max_running_jobs``: the tenant's jobs in flight, on every device.
- ``cpu_seconds_per_day`` (``shared.jobs.usage``): a job starts only while the CPU seconds
  of the tenant's attempts that ended in the last 24 h plus the ``timeout_s`` of each of its
  jobs in flight (those chosen in this pass included) are under the budget.
- A tenant alone keeps to ``slots - reserved`` jobs in flight on a device of at least
  ``4 * reserved`` live slots (``slots``), the dispatch slack beyond the slots included:
  those slots stay free for a tenant that comes later, which would otherwise wait behind the
  first tenant's running jobs and its jobs queued at the workers (the worker queues are first
  in, first out). Below that size, or with ``reserved`` 0, a tenant alone uses every slot and
  the slack: short jobs keep the workers busy between dispatch passes. While tenants contend
  the weighted order above shares the slots and the slack: their jobs reach the worker queues
  interleaved by load, each tenant's share of the queue following its weight.
"""

from __future__ import annotations

import heapq
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from shared.jobs.usage import cpu_budget_allows


@dataclass(frozen=True)
class Candidate:
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    kernel: str
    priority: int
    created_at: datetime
    timeout_s: float = 0.0  # what it holds of the CPU budget while in flight


@dataclass
class TenantLoad:
    tenant_id: uuid.UUID
    weight: int
    in_flight: int = 0
    max_running: int = 1 << 30
    usage_s: float = 0.0  # decayed CPU seconds
    cpu_today_s: float = 0.0
    cpu_per_day_s: float = float("inf")
    held_s: float = 0.0  # the timeout_s of its jobs in flight: CPU seconds they may still use
    on_device: int = 0  # its jobs in flight on the device being filled
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def over_quota(self) -> str | None:
        """Why a quota lets none of the tenant's waiting jobs start now, or ``None``."""
        if not cpu_budget_allows(
            used_today_s=self.cpu_today_s, held_s=self.held_s, per_day_s=self.cpu_per_day_s
        ):
            return (
                f"waiting: cpu_seconds_per_day ({self.cpu_per_day_s:g}) used up or held by "
                "jobs in flight; dispatch resumes as they end and the 24 h window rolls"
            )
        if self.in_flight >= self.max_running:
            return f"waiting: max_running_jobs ({self.max_running}) reached"
        return None

    @property
    def headroom(self) -> int:
        """How many more of its jobs may start now (the autoscaler's cap on its demand)."""
        if self.over_quota is not None:
            return 0
        return max(0, self.max_running - self.in_flight)


HeapKey = tuple[float, int, float, int, uuid.UUID]


@dataclass(frozen=True)
class Allocation:
    chosen: list[Candidate]
    over_quota: dict[uuid.UUID, str]  # tenant -> why its jobs wait


@dataclass
class _Taking:
    """A tenant's state while slots are dealt: how many taken, what they hold."""

    load: TenantLoad
    taken: int = 0
    held_s: float = 0.0

    def may_take_next(self, cap: int) -> bool:
        t = self.load
        n = self.taken
        return (
            n < len(t.candidates)
            and t.in_flight + n < t.max_running
            and t.on_device + n < cap
            and cpu_budget_allows(
                used_today_s=t.cpu_today_s, held_s=self.held_s, per_day_s=t.cpu_per_day_s
            )
        )


def allocate(
    tenants: list[TenantLoad],
    free: int,
    *,
    usage_scale_s: float,
    slots: int | None = None,
    reserved: int = 0,
) -> Allocation:
    """Up to ``free`` jobs for the device whose live slots are ``slots`` (None: no share cap),
    of which a tenant alone leaves ``reserved`` free."""
    over_quota: dict[uuid.UUID, str] = {}
    taking: dict[uuid.UUID, _Taking] = {}
    for t in tenants:
        if not t.candidates:
            continue
        reason = t.over_quota
        if reason is not None:
            over_quota[t.tenant_id] = reason
            continue
        taking[t.tenant_id] = _Taking(t, held_s=t.held_s)
    cap = _share_cap(slots, contending=len(taking), reserved=reserved)
    heap = [_key(s.load, 0, usage_scale_s) for s in taking.values() if s.may_take_next(cap)]
    heapq.heapify(heap)
    chosen: list[Candidate] = []
    while heap and len(chosen) < free:
        *_, tenant_id = heapq.heappop(heap)
        s = taking[tenant_id]
        job = s.load.candidates[s.taken]
        chosen.append(job)
        s.taken += 1
        s.held_s += job.timeout_s
        if s.may_take_next(cap):
            heapq.heappush(heap, _key(s.load, s.taken, usage_scale_s))
    return Allocation(chosen, over_quota)


def _share_cap(slots: int | None, *, contending: int, reserved: int) -> int:
    """The most jobs in flight on the device for one tenant: alone, all but ``reserved`` of
    its live slots on a device large enough to spare them; else no cap of its own."""
    if slots is not None and contending == 1 and reserved and slots >= 4 * reserved:
        return slots - reserved
    return 1 << 30


def _key(
    t: TenantLoad, taken: int, usage_scale_s: float
) -> tuple[float, int, float, int, uuid.UUID]:
    load = (t.in_flight + taken) / t.weight + t.usage_s / (t.weight * usage_scale_s)
    head = t.candidates[taken]
    return (load, -head.priority, head.created_at.timestamp(), taken, t.tenant_id)
