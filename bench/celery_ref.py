"""Reference (b) for the end-to-end benchmark: Celery 5.7 with no-op tasks.

The worker is started by ``bench/pipeline.py``::

    celery -A bench.celery_ref worker -P threads -c 2 \
        --without-gossip --without-mingle --without-heartbeat

Each task counts itself done in Redis (``INCR``, and ``ZADD GT`` of its wall-clock finish
time, which keeps the latest), so that the producer can time the batch without a result backend.
Configuration comes from the environment: ``BENCH_CELERY_BROKER``, ``BENCH_REDIS_URL``,
``BENCH_REDIS_KEY`` and ``BENCH_CELERY_QUEUE``.
"""

from __future__ import annotations

import os
import threading
import time

from celery import Celery
from redis import Redis

BROKER = os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672/stratus_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
KEY = os.environ.get("BENCH_REDIS_KEY", "stratus_bench:celery")
QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench.celery")

app = Celery("bench_celery_ref", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_local = threading.local()


def _redis() -> Redis:
    client: Redis | None = getattr(_local, "redis", None)
    if client is None:
        client = Redis.from_url(REDIS_URL)
        _local.redis = client
    return client


def count_key(key: str = KEY) -> str:
    return f"{key}:count"


def last_key(key: str = KEY) -> str:
    return f"{key}:last"


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(seq: int) -> None:
    """Do nothing but say so: one pipelined round trip to Redis."""
    pipe = _redis().pipeline(transaction=False)
    pipe.incr(count_key())
    pipe.zadd(last_key(), {"t": time.time()}, gt=True)  # keeps the latest completion time
    pipe.execute()
