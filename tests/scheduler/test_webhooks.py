"""Webhook deliveries end to end below the gateway: the trigger on ``jobs`` writes a delivery
in the transaction of each state change that ``notify`` asks for, and the scheduler's loop
(``services.scheduler.webhooks``) sends it, signed, to a real HTTP receiver on loopback, at
least once, retrying failures, never following a redirect, and checking the destination
again when it sends."""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from services.scheduler.app import loops_of
from services.scheduler.settings import SchedulerSettings
from services.scheduler.webhooks import Deliverer
from shared.db.models import Tenant, WebhookSecret
from shared.db.raw import raw_connection
from shared.jobs.materialise import materialise_elements
from shared.settings import WebhookSettings
from shared.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, new_secret, seal, verify
from tests.factories import new_array, new_job
from tests.scheduler.webhook_receiver import Answer, Receiver, receiver

Sessions = async_sessionmaker[AsyncSession]

# The receiver listens on 127.0.0.1: the operator allows it, as a test must.
SETTINGS = WebhookSettings(
    allow="127.0.0.1/32", backoff_s=0.05, backoff_max_s=0.1, timeout_s=2.0, concurrency=8
)


def engine_of(s: Sessions) -> AsyncEngine:
    bind: AsyncEngine = s.kw["bind"]
    return bind


async def tenant_with_secret(s: Sessions, *, operator_key: str = "") -> tuple[uuid.UUID, str]:
    tid, secret = uuid.uuid4(), new_secret()
    async with s() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}))
        await session.flush()
        session.add(WebhookSecret(tenant_id=tid, sealed=seal(secret, tid, operator_key)))
    return tid, secret


async def job_with(s: Sessions, tid: uuid.UUID, notify: dict[str, Any] | None) -> uuid.UUID:
    job = new_job(tid, notify=notify)
    async with s() as session, session.begin():
        session.add(job)
    return job.id


async def move(s: Sessions, job_id: uuid.UUID, *states: str) -> None:
    """Each state in a transaction of its own, as the services write them."""
    for state in states:
        async with s() as session, session.begin():
            await session.execute(
                text("UPDATE jobs SET state = :state WHERE id = :id"),
                {"state": state, "id": job_id},
            )


async def deliveries(s: Sessions, job_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    query = "SELECT * FROM webhook_deliveries"
    if job_id is not None:
        query += " WHERE job_id = :id"
    async with s() as session:
        rows = await session.execute(text(query + " ORDER BY created_at, id"), {"id": job_id})
        return [dict(r._mapping) for r in rows]


async def deliver_until(d: Deliverer, got: Receiver, n: int) -> None:
    """Passes until the receiver has ``n`` requests; the backoff of ``SETTINGS`` bounds it."""
    for _ in range(200):
        await d.deliver_once()
        if len(got.received) >= n:
            return
        await asyncio.sleep(SETTINGS.backoff_max_s / 4)
    raise AssertionError(f"{len(got.received)} requests, expected {n}")


async def test_final_sends_one_signed_post_when_the_job_is_final(s: Sessions) -> None:
    tid, secret = await tenant_with_secret(s)
    with receiver() as got:
        job_id = await job_with(s, tid, {"url": got.url, "events": ["final"]})
        await move(s, job_id, "QUEUED", "RUNNING", "SUCCEEDED")
        assert len(await deliveries(s, job_id)) == 1
        assert await Deliverer(engine_of(s), SETTINGS).deliver_once() == 1
    [request] = got.received
    assert (request.method, request.path) == ("POST", "/hook")
    assert verify(secret, request.headers[SIGNATURE_HEADER], request.body)
    assert not verify(new_secret(), request.headers[SIGNATURE_HEADER], request.body)
    body = orjson.loads(request.body)
    assert body["job_id"] == str(job_id)
    assert (body["event"], body["state"], body["previous_state"]) == (
        "job.state",
        "SUCCEEDED",
        "RUNNING",
    )
    assert request.headers[DELIVERY_HEADER] == body["id"]
    [row] = await deliveries(s, job_id)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)


async def test_state_sends_one_post_per_change(s: Sessions) -> None:
    tid, secret = await tenant_with_secret(s)
    with receiver() as got:
        job_id = await job_with(s, tid, {"url": got.url, "events": ["state"]})
        await move(s, job_id, "QUEUED", "RUNNING", "QUEUED", "RUNNING", "FAILED")
        await move(s, job_id, "FAILED")  # no change: nothing sent
        await Deliverer(engine_of(s), SETTINGS).step()
    states = [orjson.loads(r.body)["state"] for r in got.received]
    assert sorted(states) == sorted(["QUEUED", "RUNNING", "QUEUED", "RUNNING", "FAILED"])
    assert all(verify(secret, r.headers[SIGNATURE_HEADER], r.body) for r in got.received)
    assert {r["state"] for r in await deliveries(s, job_id)} == {"delivered"}


async def test_a_job_without_notify_writes_no_delivery(s: Sessions) -> None:
    tid, _ = await tenant_with_secret(s)
    job_id = await job_with(s, tid, None)
    await move(s, job_id, "QUEUED", "RUNNING", "SUCCEEDED")
    assert await deliveries(s) == []


async def test_a_failed_delivery_is_sent_again_until_a_2xx(s: Sessions) -> None:
    tid, secret = await tenant_with_secret(s)
    d = Deliverer(engine_of(s), SETTINGS)
    with receiver() as got:
        got.script = [Answer(500), Answer(200)]
        job_id = await job_with(s, tid, {"url": got.url, "events": ["final"]})
        await move(s, job_id, "CANCELLED")
        await d.deliver_once()
        [row] = await deliveries(s, job_id)
        assert (row["state"], row["attempts"], row["last_status"]) == ("pending", 1, 500)
        await deliver_until(d, got, 2)
    first, second = got.received
    assert first.body == second.body  # the same delivery, signed afresh
    assert first.headers[DELIVERY_HEADER] == second.headers[DELIVERY_HEADER]
    assert verify(secret, second.headers[SIGNATURE_HEADER], second.body)
    [row] = await deliveries(s, job_id)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 2, 200)


async def test_a_redirect_is_not_followed_and_counts_as_a_failure(s: Sessions) -> None:
    tid, _ = await tenant_with_secret(s)
    with receiver() as got:
        got.script = [Answer(302, {"Location": "/elsewhere"})]
        job_id = await job_with(s, tid, {"url": got.url, "events": ["final"]})
        await move(s, job_id, "FAILED")
        await Deliverer(engine_of(s), SETTINGS).deliver_once()
    assert [(r.method, r.path) for r in got.received] == [("POST", "/hook")]
    [row] = await deliveries(s, job_id)
    assert (row["state"], row["last_status"]) == ("pending", 302)


async def test_a_timeout_counts_as_a_failure(s: Sessions) -> None:
    tid, _ = await tenant_with_secret(s)
    short = SETTINGS.model_copy(update={"timeout_s": 0.2})
    with receiver() as got:
        got.script = [Answer(200, delay_s=short.timeout_s * 5)]
        job_id = await job_with(s, tid, {"url": got.url, "events": ["final"]})
        await move(s, job_id, "TIMED_OUT")
        await Deliverer(engine_of(s), short).deliver_once()
    [row] = await deliveries(s, job_id)
    assert row["state"] == "pending"
    assert row["last_status"] is None
    assert "no answer" in row["last_error"]


async def test_a_delivery_failing_past_its_retry_window_is_given_up(s: Sessions) -> None:
    tid, _ = await tenant_with_secret(s)
    brief = SETTINGS.model_copy(update={"retry_for_s": 0.01})
    with receiver() as got:
        got.script = [Answer(503)]
        job_id = await job_with(s, tid, {"url": got.url, "events": ["final"]})
        await move(s, job_id, "FAILED")
        await asyncio.sleep(brief.retry_for_s * 2)
        await Deliverer(engine_of(s), brief).deliver_once()
        [row] = await deliveries(s, job_id)
        assert (row["state"], row["last_status"]) == ("failed", 503)
        assert row["finished_at"] is not None
        assert await Deliverer(engine_of(s), brief).deliver_once() == 0
    assert len(got.received) == 1


async def test_a_destination_refused_at_delivery_is_not_called(s: Sessions) -> None:
    # Allowed at submission, no longer by the time it is sent (the operator's list changed,
    # or the name now resolves to a refused address): nothing reaches the receiver.
    tid, _ = await tenant_with_secret(s)
    with receiver() as got:
        job_id = await job_with(s, tid, {"url": got.url, "events": ["final"]})
        await move(s, job_id, "SUCCEEDED")
        await Deliverer(engine_of(s), WebhookSettings(backoff_s=0.05)).deliver_once()
        named = got.url.replace("127.0.0.1", "localhost")
        other = await job_with(s, tid, {"url": named, "events": ["final"]})
        await move(s, other, "SUCCEEDED")
        await Deliverer(engine_of(s), WebhookSettings(backoff_s=0.05)).deliver_once()
    assert got.received == []
    rows = await deliveries(s)
    assert [r["state"] for r in rows] == ["pending", "pending"]
    assert all("does not resolve to an allowed address" in r["last_error"] for r in rows)


async def test_two_schedulers_never_send_the_same_delivery_at_once(s: Sessions) -> None:
    tid, _ = await tenant_with_secret(s)
    with receiver() as got:
        for _ in range(20):
            job_id = await job_with(s, tid, {"url": got.url, "events": ["final"]})
            await move(s, job_id, "SUCCEEDED")
        wide = SETTINGS.model_copy(update={"concurrency": 20})
        one, two = Deliverer(engine_of(s), wide), Deliverer(engine_of(s), wide)
        sent = await asyncio.gather(one.deliver_once(), two.deliver_once())
        sent2 = await asyncio.gather(one.deliver_once(), two.deliver_once())
    assert sum(sent) + sum(sent2) == 20
    ids = [r.headers[DELIVERY_HEADER] for r in got.received]
    assert len(ids) == len(set(ids)) == 20


async def test_an_array_notifies_as_a_whole_never_per_element(s: Sessions) -> None:
    tid, secret = await tenant_with_secret(s)
    with receiver() as got:
        job, array = new_array(tid, 3, notify={"url": got.url, "events": ["state"]})
        async with s() as session, session.begin():
            session.add(job)
            await session.flush()
            session.add(array)
        async with raw_connection(engine_of(s)) as conn:
            assert await materialise_elements(conn.fetch, window=8, limit=8) == 3
        async with s() as session, session.begin():
            await session.execute(
                text("UPDATE jobs SET state = 'RUNNING' WHERE array_id = :a"), {"a": job.id}
            )
        async with s() as session, session.begin():
            await session.execute(
                text("UPDATE jobs SET state = 'SUCCEEDED' WHERE array_id = :a"), {"a": job.id}
            )
        await Deliverer(engine_of(s), SETTINGS).step()
    rows = await deliveries(s)
    assert {r["job_id"] for r in rows} == {job.id}
    bodies = sorted((orjson.loads(r.body) for r in got.received), key=lambda b: b["at"])
    assert [b["state"] for b in bodies] == ["RUNNING", "SUCCEEDED"]
    assert all(verify(secret, r.headers[SIGNATURE_HEADER], r.body) for r in got.received)


async def test_a_sealed_secret_signs_only_with_the_operator_key(s: Sessions) -> None:
    tid, secret = await tenant_with_secret(s, operator_key="operator-key-1")
    async with s() as session:
        sealed = await session.scalar(
            text("SELECT sealed FROM webhook_secrets WHERE tenant_id = :t"), {"t": tid}
        )
    assert secret.encode() not in sealed
    keyed = SETTINGS.model_copy(update={"secret_key": SecretStr("operator-key-1")})
    with receiver() as got:
        job_id = await job_with(s, tid, {"url": got.url, "events": ["final"]})
        await move(s, job_id, "SUCCEEDED")
        await Deliverer(engine_of(s), SETTINGS).deliver_once()  # no key: cannot sign
        assert got.received == []
        [row] = await deliveries(s, job_id)
        assert "no operator key" in row["last_error"]
        await deliver_until(Deliverer(engine_of(s), keyed), got, 1)
    assert verify(secret, got.received[0].headers[SIGNATURE_HEADER], got.received[0].body)


async def test_the_secret_never_appears_in_the_logs(
    s: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    tid, secret = await tenant_with_secret(s)
    caplog.set_level(logging.DEBUG)
    with capture_logs() as events, receiver() as got:
        got.script = [Answer(500), Answer(302, {"Location": "/x"})]
        for _ in range(3):
            job_id = await job_with(s, tid, {"url": got.url, "events": ["state"]})
            await move(s, job_id, "QUEUED", "SUCCEEDED")
        await deliver_until(Deliverer(engine_of(s), SETTINGS), got, 8)
    assert "HTTP Request: POST" in caplog.text  # the capture saw the deliveries
    assert secret not in repr(events)
    assert secret not in caplog.text


def test_the_scheduler_runs_the_delivery_loop_unless_disabled() -> None:
    res: Any = SimpleNamespace(engine=None, sessions=None, relay=None)
    on = SchedulerSettings(webhooks=WebhookSettings(interval_s=3.0))
    [loop] = [loop for loop in loops_of(res, on, asyncio.Event(), None) if loop.name == "webhooks"]
    assert loop.interval_s == 3.0
    off = SchedulerSettings(webhooks=WebhookSettings(enabled=False))
    assert "webhooks" not in [loop.name for loop in loops_of(res, off, asyncio.Event(), None)]


async def test_finished_deliveries_are_deleted_once_kept_long_enough(s: Sessions) -> None:
    tid, _ = await tenant_with_secret(s)
    day = SETTINGS.model_copy(update={"keep_s": 86_400.0})
    with receiver() as got:
        old = await job_with(s, tid, {"url": got.url, "events": ["final"]})
        recent = await job_with(s, tid, {"url": got.url, "events": ["final"]})
        await move(s, old, "SUCCEEDED")
        await move(s, recent, "SUCCEEDED")
        assert await Deliverer(engine_of(s), day).deliver_once() == 2
    waiting = await job_with(s, tid, {"url": "http://127.0.0.1:9/none", "events": ["final"]})
    await move(s, waiting, "FAILED")
    async with s() as session, session.begin():
        await session.execute(
            text(
                "UPDATE webhook_deliveries SET finished_at = now() - interval '2 days',"
                " created_at = now() - interval '2 days' WHERE job_id = :old"
            ),
            {"old": old},
        )
    assert await Deliverer(engine_of(s), day).prune() == 1
    assert {(r["job_id"], r["state"]) for r in await deliveries(s)} == {
        (recent, "delivered"),
        (waiting, "pending"),
    }


async def test_a_delivery_that_cannot_be_sent_fails_alone(s: Sessions) -> None:
    tid, _ = await tenant_with_secret(s)
    with receiver() as got:
        bad = await job_with(s, tid, {"url": "http://[::1/hook", "events": ["final"]})
        good = await job_with(s, tid, {"url": got.url, "events": ["final"]})
        await move(s, bad, "FAILED")
        await move(s, good, "FAILED")
        assert await Deliverer(engine_of(s), SETTINGS).deliver_once() == 2
    assert len(got.received) == 1
    states = {r["job_id"]: (r["state"], r["last_error"]) for r in await deliveries(s)}
    assert states[good] == ("delivered", None)
    assert states[bad][0] == "pending"
    assert "not a valid URL" in states[bad][1]
