"""Reference (a) for the gateway benchmark: the least a submission endpoint can do.

One FastAPI route that stores the job with one asyncpg INSERT into a scratch table and publishes
one persistent message with a publisher confirm (aio-pika) to a durable queue, then answers 201.
No authentication, no validation beyond the body model, no outbox, no metrics middleware.

Run by ``bench/pipeline.py`` as a subprocess::

    python -m uvicorn bench.ref_bare:app --loop uvloop --http httptools --port PORT

Configuration comes from the environment: ``BENCH_PG_DSN``, ``BENCH_AMQP_URL``,
``BENCH_REF_TABLE`` and ``BENCH_REF_QUEUE``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/stratus_bench")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/stratus_bench")
TABLE = os.environ.get("BENCH_REF_TABLE", "bench_ref_jobs")
QUEUE = os.environ.get("BENCH_REF_QUEUE", "bench.ref")
POOL_SIZE = int(os.environ.get("BENCH_REF_POOL", "20"))  # the gateway's pool_size + overflow

if not TABLE.replace("_", "").isalnum():
    raise ValueError(f"BENCH_REF_TABLE must be a plain identifier, got {TABLE!r}")

INSERT = f"INSERT INTO {TABLE} (id, kernel, params) VALUES ($1, $2, $3::jsonb)"  # noqa: S608


@dataclass
class State:
    pool: asyncpg.Pool
    conn: AbstractRobustConnection
    exchange: AbstractExchange


class Submit(BaseModel):
    kernel: str = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(PG_DSN, min_size=POOL_SIZE, max_size=POOL_SIZE)
    conn = await aio_pika.connect_robust(AMQP_URL)
    channel = await conn.channel(publisher_confirms=True)
    await channel.declare_queue(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    app.state.ref = State(pool, conn, channel.default_exchange)
    try:
        yield
    finally:
        await conn.close()
        await pool.close()


app = FastAPI(title="bench reference: bare submit", lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/jobs", status_code=201)
async def submit(body: Submit, request: Request) -> dict[str, str]:
    state: State = request.app.state.ref
    job_id = uuid.uuid4()
    async with state.pool.acquire() as conn:
        await conn.execute(INSERT, job_id, body.kernel, orjson.dumps(body.params).decode())
    message = aio_pika.Message(
        orjson.dumps({"type": "job.submitted", "job_id": str(job_id), "kernel": body.kernel}),
        message_id=str(job_id),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await state.exchange.publish(message, routing_key=QUEUE)  # waits for the confirm
    return {"id": str(job_id), "state": "PENDING"}
