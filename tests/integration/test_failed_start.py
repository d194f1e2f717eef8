"""A start that fails half way closes what it opened: each service's lifespan, with the
broker refusing its consumers (as when RabbitMQ goes away while a service starts), raises
and closes its resources, so the process exits (and its supervisor restarts it) instead of
hanging on open connections. The database and the broker are the real, shared ones; only the
``consume`` call fails."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from shared.messaging.broker import Broker
from shared.runtime import Resources

SERVICES = ("gateway", "scheduler", "worker", "datamover")


class BrokerGone(RuntimeError):
    pass


async def _refuse(*_args: Any, **_kwargs: Any) -> None:
    raise BrokerGone("the broker went away while the service started")


@pytest.mark.parametrize("service", SERVICES)
async def test_a_failed_start_closes_what_it_opened(
    service: str, test_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = importlib.import_module(f"services.{service}.app")
    closed: list[Resources] = []
    close = module.close_resources

    async def counted_close(res: Resources) -> None:
        closed.append(res)
        await close(res)

    monkeypatch.setattr(module, "close_resources", counted_close)
    monkeypatch.setattr(Broker, "consume", _refuse)
    monkeypatch.setattr(Broker, "consume_batches", _refuse)
    monkeypatch.setenv("STRATUS_CONCURRENCY", "1")  # the worker's pool: one process
    app = module.create_app()
    with pytest.raises(BrokerGone):
        async with app.router.lifespan_context(app):
            pass
    assert len(closed) == 1
    res = closed[0]
    assert res.broker._conn is None or res.broker._conn.is_closed
