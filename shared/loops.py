"""Small background loops with an interval, an optional wake-up event and error backoff."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

from shared.logging import get_logger

log = get_logger(__name__)


async def periodic(
    name: str,
    step: Callable[[], Awaitable[object]],
    *,
    interval_s: float,
    wake: asyncio.Event | None = None,
) -> None:
    """Run ``step`` every ``interval_s`` (or sooner when woken), backing off on errors."""
    failures = 0
    while True:
        if wake is not None:
            wake.clear()
        try:
            await step()
            failures = 0
        except Exception as exc:
            failures += 1
            log.warning("loop_failed", loop=name, error=type(exc).__name__)
            await asyncio.sleep(min(0.2 * 2**failures, 5.0) * (0.5 + random.random()))
            continue
        if wake is None:
            await asyncio.sleep(interval_s)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await wake.wait()
