"""``/v1/admin/dead-letters``: list what consumers gave up on, and re-drive one message."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import httpx

from shared.settings import CommonSettings
from tests.gateway.conftest import ADMIN, TenantKey
from tests.gateway.test_jobs_api import assert_problem


async def test_list_and_redrive_a_dead_letter(
    client: httpx.AsyncClient, settings: CommonSettings, tenant: TenantKey
) -> None:
    queue = f"{settings.rabbit.queue_prefix}.datamover"  # no consumer in these tests
    marker = f"poison-{uuid.uuid4()}"
    conn = await aio_pika.connect(settings.rabbit.url())
    try:
        ch = await conn.channel(publisher_confirms=True)
        await ch.default_exchange.publish(
            aio_pika.Message(marker.encode(), message_id=marker), routing_key=f"{queue}.dlq"
        )
        listed = await client.get("/v1/admin/dead-letters", params={"peek": 50}, headers=ADMIN)
        assert listed.status_code == 200
        entry = next(i for i in listed.json()["items"] if i["queue"] == queue)
        assert entry["messages"] >= 1
        assert marker in [m["message_id"] for m in entry["oldest"]]
        # listing left them in place: once the peeked messages are back (the broker counts a
        # message it has handed out only when it is returned), the count is what it was
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            again = await client.get("/v1/admin/dead-letters", params={"peek": 0}, headers=ADMIN)
            entry2 = next(i for i in again.json()["items"] if i["queue"] == queue)
            if entry2["messages"] == entry["messages"]:
                break
            assert asyncio.get_running_loop().time() < deadline, (entry2, entry)
            await asyncio.sleep(0.1)

        moved = await client.post(f"/v1/admin/dead-letters/{queue}/redrive", headers=ADMIN)
        assert moved.status_code == 200
        assert moved.json()["queue"] == queue
        target = await ch.declare_queue(queue, passive=True)
        found = False
        while (m := await target.get(no_ack=True, fail=False)) is not None:
            found = found or m.body == marker.encode()
        assert found  # back on the queue it came from
    finally:
        await conn.close()
    assert_problem(await client.post("/v1/admin/dead-letters/nope/redrive", headers=ADMIN), 404)
    assert_problem(await client.get("/v1/admin/dead-letters", headers=tenant.headers), 403)
    audit = (await client.get("/v1/audit", headers=ADMIN)).json()["items"]
    assert any(a["action"] == "dead_letter.redriven" and a["target"] == queue for a in audit)
