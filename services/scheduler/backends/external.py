"""``kubernetes`` backend: KEDA scales the worker Deployments (``deploy/kubernetes/``) from
the same demand; the scheduler only observes (live workers from their heartbeats) and
publishes what it would decide, so ``/metrics`` and ``GET /v1/admin/pools`` stay meaningful."""

from __future__ import annotations

from collections.abc import Mapping

from services.scheduler.backends import BackendError


class ObservingBackend:
    acts = False

    def __init__(self, name: str = "kubernetes") -> None:
        self.name = name

    async def current(self, pool: str) -> int:
        raise BackendError(f"the {self.name} backend observes workers by their heartbeats")

    async def scale(self, pool: str, target: int, *, busy: Mapping[str, int]) -> int:
        raise BackendError(f"{self.name} scales the workers itself (KEDA)")

    async def close(self) -> None:
        return None
