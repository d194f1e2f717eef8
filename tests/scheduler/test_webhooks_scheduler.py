"""Webhooks through the running scheduler: a job submitted with ``notify`` by the gateway's
statement, claimed and finished by the worker's set-based statements, is POSTed by the
scheduler app's own delivery loop to a receiver on loopback, once per change of state."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import services.scheduler.app as scheduler_app
from services.gateway.jobs import service as gateway_service
from services.gateway.jobs import writer
from services.gateway.jobs.schemas import JobSubmit, NotifySpec
from shared.db.models import Tenant, WebhookSecret, Worker
from shared.events import utcnow
from shared.jobs.proposals import Report
from shared.jobs.states import JobState
from shared.jobs.store import Finish, claim_queued, finish_attempts
from shared.settings import CommonSettings, WebhookSettings
from shared.webhooks import SIGNATURE_HEADER, new_secret, seal, verify
from tests.factories import own_database
from tests.scheduler.test_notify_wakeup import dsn_of, scheduler_settings
from tests.scheduler.webhook_receiver import receiver

Sessions = async_sessionmaker[AsyncSession]
WEBHOOKS = WebhookSettings(
    allow="127.0.0.1/32", interval_s=0.1, backoff_s=0.05, backoff_max_s=0.1, timeout_s=2.0
)


@pytest.fixture(scope="module")
async def own(settings: CommonSettings) -> AsyncIterator[tuple[str, Sessions]]:
    async with own_database(settings, "webhooks_app", vhost=True) as own:
        yield own


async def test_the_scheduler_delivers_each_change_of_a_job_it_runs(
    own: tuple[str, Sessions],
) -> None:
    name, db = own
    dsn = dsn_of(name)
    tid, secret = uuid.uuid4(), new_secret()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        session.add(Worker(id="w-hooks", device="cpu", concurrency=1, heartbeat_at=utcnow()))
        await session.flush()
        session.add(WebhookSecret(tenant_id=tid, sealed=seal(secret, tid, "")))
    settings = scheduler_settings(name, 0.5).model_copy(update={"webhooks": WEBHOOKS})
    app = scheduler_app.create_app(settings)
    with receiver() as got:
        async with app.router.lifespan_context(app):
            data = JobSubmit(
                kernel="montecarlo_pi",
                device="cpu",
                params={"samples": 1},
                notify=NotifySpec(url=got.url, events=["state"]),
            )
            job = gateway_service._new_job(
                tenant_id=tid, data=data, max_queued=0, kernel="montecarlo_pi",
                params={"samples": 1}, timeout_s=60, max_retries=0, idempotency_key=None,
                request_hash=None, notify=data.notify.model_dump() if data.notify else None,
            )  # fmt: skip
            job.max_queued = None
            conn = await asyncpg.connect(dsn)
            try:
                await conn.fetch(writer.INSERT_JOBS, *writer.arguments(writer.WRITTEN, [job]))
                claims = await claim_queued(conn.fetch, [job.id], worker="w-hooks", lease_s=30)
                report = Report(JobState.SUCCEEDED, result={"ok": 1})
                finish = Finish(job.id, tid, claims[job.id].attempt, report)
                assert await finish_attempts(conn.fetch, [finish], worker="w-hooks") == []
            finally:
                await conn.close()
            async with asyncio.timeout(30):
                while len(got.received) < 2:
                    await asyncio.sleep(0.05)
    bodies = sorted((orjson.loads(r.body) for r in got.received), key=lambda b: b["at"])
    assert [(b["previous_state"], b["state"]) for b in bodies] == [
        ("QUEUED", "RUNNING"),
        ("RUNNING", "SUCCEEDED"),
    ]
    assert {b["job_id"] for b in bodies} == {str(job.id)}
    assert all(verify(secret, r.headers[SIGNATURE_HEADER], r.body) for r in got.received)
    async with db() as session:
        states = (await session.execute(text("SELECT state FROM webhook_deliveries"))).scalars()
        assert list(states) == ["delivered", "delivered"]
