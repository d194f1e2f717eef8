"""The RabbitMQ circuit breaker on the real broker, reached through a TCP proxy that the test
closes and reopens: publishing fails fast while the circuit is open, its state shows in
``/metrics``, and it closes by itself once the robust connection is back."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prometheus_client import generate_latest

from shared.messaging import Broker, QueueSpec
from shared.messaging.broker import Outgoing
from shared.resilience import BreakerState, CircuitOpen
from shared.settings import CommonSettings
from shared.telemetry import REGISTRY
from tests.netfault import TcpProxy


def _state_in_metrics() -> str:
    for line in generate_latest(REGISTRY).decode().splitlines():
        if line.startswith('stratus_circuit_state{circuit="rabbitmq"}'):
            return line.rsplit(" ", 1)[1]
    return "absent"


async def test_publishing_fails_fast_while_the_broker_is_away_and_recovers(
    settings: CommonSettings,
) -> None:
    proxy = TcpProxy(settings.rabbit.port)
    await proxy.start()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    rabbit = settings.rabbit.model_copy(update={"port": proxy.port, "queue_prefix": prefix})
    broker = Broker(rabbit, name="breaker-test")
    await broker.connect(attempts=3)
    try:
        spec = QueueSpec("b", (f"{prefix}.b",))
        await broker.declare(spec)

        def msg() -> Outgoing:
            return Outgoing(f"{prefix}.b", b"{}", str(uuid.uuid4()))

        await broker.publish(msg())
        assert _state_in_metrics() == "0.0"

        await proxy.stop()
        deadline = time.monotonic() + 30
        while broker.breaker.state is not BreakerState.OPEN:
            assert time.monotonic() < deadline, "the circuit never opened"
            try:
                await broker.publish(msg())
            except CircuitOpen:
                break
            except Exception:  # the failures that open it  # noqa: S112
                continue
        assert _state_in_metrics() == "2.0"
        t0 = time.monotonic()
        for _ in range(20):
            with pytest.raises(CircuitOpen) as raised:
                await broker.publish(msg())
            assert raised.value.retry_after <= 2.0
        # fails fast: twenty refusals inside one open window, none waiting on the dead broker
        assert time.monotonic() - t0 < broker.breaker.reset_timeout_s

        await proxy.start()  # the same port again; the robust connection reconnects
        deadline = time.monotonic() + 30
        while True:
            try:
                await broker.publish(msg())
                break
            except Exception:
                assert time.monotonic() < deadline, "never recovered"
                await asyncio.sleep(0.5)
        assert broker.breaker.state is BreakerState.CLOSED
        assert _state_in_metrics() == "0.0"
        assert await broker.depth(broker.qname(spec)) >= 2
    finally:
        await broker.close()
        await proxy.stop()
