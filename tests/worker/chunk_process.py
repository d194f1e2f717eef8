"""A worker's chunk path as a process of its own, for the test that kills it with SIGKILL:
``python -m tests.worker.chunk_process <database> <chunk id> <worker> <lease_s>`` claims the
chunk and runs it (``services.worker.chunks``) in a pool of one warm process, flushing as a
worker does. The environment gives the PostgreSQL settings and the fault kernels' plugin
path (``PYTHONPATH``)."""

from __future__ import annotations

import asyncio
import sys
import uuid

from services.worker.chunks import Chunks
from services.worker.runner import KernelRunner, PoolConfig
from shared.db.engine import make_engine
from shared.settings import CommonSettings
from tests.worker.conftest import CACHE


async def main(database: str, chunk_id: uuid.UUID, worker: str, lease_s: float) -> int:
    settings = CommonSettings()
    engine = make_engine(settings.postgres.model_copy(update={"database": database}))
    runner = KernelRunner(PoolConfig(processes=1, cache_dir=CACHE))
    await runner.start()
    try:
        chunks = Chunks(engine, runner, worker=worker, lease_s=lease_s)
        claim = await chunks.claim(chunk_id)
        if claim is None:
            return 1
        print("claimed", flush=True)
        await chunks.run(claim)
        return 0
    finally:
        await runner.close()
        await engine.dispose()


if __name__ == "__main__":
    db, chunk, name, lease = sys.argv[1:5]
    sys.exit(asyncio.run(main(db, uuid.UUID(chunk), name, float(lease))))
