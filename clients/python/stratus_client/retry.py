"""When a request is tried again, as a value: the same rules for the sync and async clients.

Tried again: a 429 (rate limit or queue quota) and a 503 (a dependency of the service is
down), after the answer's ``Retry-After``; and a connection that failed, after a growing
backoff, when repeating the request cannot do anything twice: it never reached the server
(a refused or timed-out connect), or the request is idempotent (GET, PUT, DELETE, and a
POST that carries an ``Idempotency-Key``). Never a 4xx other than 429: the request itself
is wrong and will be wrong again. Everything stops once the next wait would end past
``total_s`` after the first try."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

RETRIED_STATUSES = frozenset({429, 503})
# Failures where the request certainly never reached the server.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryEvent:
    """One retry about to happen: ``status`` for an answer, ``error`` for a failed connection."""

    method: str
    url: str
    attempt: int  # the try that failed, from 1
    delay_s: float  # the wait before the next try
    status: int | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """``total_s``: how long one call may spend retrying, from its first try; 0 turns retries
    off. ``backoff_s`` doubles (by ``multiplier``) up to ``max_backoff_s`` between tries after
    a failed connection, and is the wait after a 429/503 that has no ``Retry-After``.
    ``on_retry`` is called before each wait (logging, metrics)."""

    total_s: float = 60.0
    backoff_s: float = 0.2
    multiplier: float = 2.0
    max_backoff_s: float = 5.0
    on_retry: Callable[[RetryEvent], None] | None = None

    def backoff(self, attempt: int) -> float:
        """The wait after failed try ``attempt`` (from 1), with up to 20 % jitter so that
        clients that failed together do not come back together."""
        base = min(self.max_backoff_s, self.backoff_s * self.multiplier ** (attempt - 1))
        return base * (1 + 0.2 * random.random())

    def after_status(
        self, status: int, retry_after: float | None, *, attempt: int, elapsed_s: float
    ) -> float | None:
        """The wait before trying again after an answer of ``status``; None: do not."""
        if status not in RETRIED_STATUSES:
            return None
        delay = retry_after if retry_after is not None else self.backoff(attempt)
        return self._within_budget(delay, elapsed_s)

    def after_error(
        self, error: Exception, *, idempotent: bool, attempt: int, elapsed_s: float
    ) -> float | None:
        """The wait before trying again after the connection failed with ``error``; None:
        do not (the request may have been carried out, and repeating it is not safe)."""
        if not isinstance(error, httpx.TransportError):
            return None
        if not (idempotent or isinstance(error, NOT_SENT)):
            return None
        return self._within_budget(self.backoff(attempt), elapsed_s)

    def _within_budget(self, delay: float, elapsed_s: float) -> float | None:
        return delay if elapsed_s + delay <= self.total_s else None

    def notify(self, event: RetryEvent) -> None:
        if self.on_retry is not None:
            self.on_retry(event)


NO_RETRIES = RetryPolicy(total_s=0)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date; None when absent or
    unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
