"""Message handlers of the datamover (queue ``stratus.datamover``).

``migration.requested`` only wakes the claim loop: the database decides what runs (per-tenant
limits, order, leases), so a duplicate or a redelivery is harmless, and a lost message only
costs one poll interval. A crash between commit and ack: nothing was committed; redelivered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from shared.events import MigrationRequested, UnknownEvent, parse_event
from shared.logging import get_logger
from shared.messaging.broker import Delivery, Reject

log = get_logger(__name__)


def make_handler(wake: Callable[[], None]) -> Callable[[Delivery], Awaitable[None]]:
    async def handle(delivery: Delivery) -> None:
        try:
            event = parse_event(delivery.body)
        except UnknownEvent as exc:
            raise Reject(str(exc)) from exc
        if isinstance(event, MigrationRequested):
            wake()

    return handle
