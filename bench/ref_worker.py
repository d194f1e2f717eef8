"""Reference (c) for the end-to-end benchmark: the least a durable job path can do after the
bare endpoint of reference (a) (``bench/ref_bare.py``) stored a job and published it.

One process consumes the endpoint's queue with aio-pika (manual acknowledgement, up to
``BENCH_REF_PREFETCH`` messages at once) and, for each message, makes the job's two state
changes durable the way any system that must not lose or repeat a job's record does: the
claim (``QUEUED -> RUNNING``, committed before the work starts, so that a lost worker can be
told from a slow one) and the record (``RUNNING -> SUCCEEDED``, committed before the message
is acknowledged). Each is one asyncpg ``UPDATE`` in autocommit, its own transaction. The
work in between is nothing at all, as in the Celery reference's no-op task. No scheduler, no
fair share, no leases, no events, no usage rows, no authentication: whatever Stratus does
beyond these three commits (submit, claim, record) and one confirmed message per job is
what separates the two.

Run by ``bench/pipeline.py`` as a subprocess (``python -m bench.ref_worker``) beside the
bare endpoint; configuration from the environment: ``BENCH_PG_DSN``, ``BENCH_AMQP_URL``,
``BENCH_REF_TABLE``, ``BENCH_REF_QUEUE``, ``BENCH_REF_PREFETCH`` (64).
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import aio_pika
import asyncpg
import orjson
import uvloop
from aio_pika.abc import AbstractIncomingMessage

PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/stratus_bench")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/stratus_bench")
TABLE = os.environ.get("BENCH_REF_TABLE", "bench_ref_jobs")
QUEUE = os.environ.get("BENCH_REF_QUEUE", "bench.ref")
PREFETCH = int(os.environ.get("BENCH_REF_PREFETCH", "64"))

if not TABLE.replace("_", "").isalnum():
    raise ValueError(f"BENCH_REF_TABLE must be a plain identifier, got {TABLE!r}")

CLAIM = (
    f"UPDATE {TABLE} SET state = 'RUNNING', started_at = clock_timestamp() "  # noqa: S608
    "WHERE id = $1 AND state = 'QUEUED'"
)
RECORD = (
    f"UPDATE {TABLE} SET state = 'SUCCEEDED', finished_at = clock_timestamp() "  # noqa: S608
    "WHERE id = $1 AND state = 'RUNNING'"
)


async def main() -> None:
    pool = await asyncpg.create_pool(PG_DSN, min_size=4, max_size=16)
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.declare_queue(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})

    async def on_message(message: AbstractIncomingMessage) -> None:
        job_id = uuid.UUID(orjson.loads(message.body)["job_id"])
        async with pool.acquire() as conn:
            await conn.execute(CLAIM, job_id)
        # the work: nothing (the Celery reference's task is a no-op too)
        async with pool.acquire() as conn:
            await conn.execute(RECORD, job_id)
        await message.ack()

    await queue.consume(on_message)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await connection.close()
    await pool.close()


if __name__ == "__main__":
    uvloop.run(main())
