"""How a migration, a workflow, or a job on a gateway without ``GET /v1/events`` is
followed until it is final: polled, often at first and then every ``MAX_POLL_S`` (most
finish within seconds, and a long one costs one request every two seconds). Jobs and
arrays follow their events (``Client.watch``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

FIRST_POLL_S = 0.05
MAX_POLL_S = 2.0
GROWTH = 1.5


class Finishing(Protocol):
    @property
    def is_final(self) -> bool: ...


def poll_delays() -> Iterator[float]:
    delay = FIRST_POLL_S
    while True:
        yield delay
        delay = min(MAX_POLL_S, delay * GROWTH)


class Deadline:
    """``timeout`` seconds from now (None: none); ``clip`` shortens a wait to what is left."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def clip(self, delay: float) -> float | None:
        """``delay``, or less to end on the deadline; None once it has passed."""
        if self._end is None:
            return delay
        left = self._end - time.monotonic()
        return None if left <= 0 else min(delay, left)
