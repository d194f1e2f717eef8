"""Where the autoscaler's decisions take effect: ``local`` (supervisord on this host),
``docker`` (compose containers through the Engine API), ``kubernetes`` (KEDA scales; the
scheduler only observes). Each backend answers how many workers a pool runs and sets it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class BackendError(RuntimeError):
    """The backend could not be asked or could not act (the loop retries on its next pass)."""


class ScalingBackend(Protocol):
    name: str
    acts: bool  # False: the backend only observes (another engine does the scaling)

    async def current(self, pool: str) -> int:
        """Workers of ``pool`` started and not being stopped (starting ones count)."""
        ...

    async def scale(self, pool: str, target: int, *, busy: Mapping[str, int]) -> int:
        """Start or stop workers until ``pool`` runs ``target``; stop the least busy first
        (``busy``: running jobs by worker name). Returns the count it reached."""
        ...

    async def close(self) -> None: ...
