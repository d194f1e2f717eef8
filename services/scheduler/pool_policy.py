"""The autoscaler's decision rule, free of I/O (tested with a fake clock).

Per pool: ``desired = clamp(ceil((queued + running) / target_jobs_per_worker), min, max)``.
Up at once to ``desired``. Down only once the pool has been over-provisioned (more workers
than ``desired``) for ``cooldown_s`` without a break, then one worker per pass while that
lasts; any pass that is not over-provisioned starts the cooldown again. A pool above ``max``
(the bound was lowered) or below ``min`` is brought inside the bounds at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Action = Literal["up", "down", "hold"]


@dataclass(frozen=True)
class PoolPolicy:
    min_workers: int
    max_workers: int
    target_jobs_per_worker: float
    cooldown_s: float

    def desired(self, demand: int) -> int:
        wanted = math.ceil(max(0, demand) / self.target_jobs_per_worker)
        return max(self.min_workers, min(self.max_workers, wanted))


@dataclass(frozen=True)
class Decision:
    action: Action
    current: int  # workers the backend runs now
    desired: int  # the formula's figure for the demand
    target: int  # what the pool is set to by this decision
    reason: str


class PoolScaler:
    """One pool's decisions; remembers since when it has been over-provisioned."""

    def __init__(self, policy: PoolPolicy, *, over_since: float | None = None) -> None:
        self.policy = policy
        self.over_since = over_since  # seconds on the caller's clock

    def decide(self, *, demand: int, current: int, now: float) -> Decision:
        p = self.policy
        desired = p.desired(demand)
        if current < desired:
            self.over_since = None
            why = "below the minimum" if current < p.min_workers else f"demand {demand}"
            return Decision("up", current, desired, desired, why)
        if current > p.max_workers:
            self.over_since = None
            return Decision("down", current, desired, p.max_workers, "above the maximum")
        if current == desired:
            self.over_since = None
            return Decision("hold", current, desired, current, "sized for the demand")
        if self.over_since is None:
            self.over_since = now
        waited = now - self.over_since
        if waited < p.cooldown_s:
            why = f"over-provisioned for {waited:.0f}s of a {p.cooldown_s:g}s cooldown"
            return Decision("hold", current, desired, current, why)
        return Decision("down", current, desired, current - 1, f"idle capacity for {waited:.0f}s")
