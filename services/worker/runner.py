"""Runs kernels in a warm pool of child processes, so that the worker's event loop stays free
and a kernel's CPU time can be measured per attempt."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Outcome:
    result: dict[str, Any]
    cpu_seconds: float
    wall_seconds: float


class KernelError(Exception):
    """The kernel raised: the job's own fault, not retried."""


class AttemptCrashed(Exception):
    """The child process died (segfault, out of memory): retried if the job has retries left."""


def _init_child(cache_dir: str, warm: bool) -> None:
    os.environ["NUMBA_CACHE_DIR"] = cache_dir
    if warm:
        from services.worker.kernels import warm_all

        warm_all()


def _execute(
    kernel: str,
    device: str,
    params: dict[str, Any],
    inputs: dict[str, str],
    outputs: dict[str, str],
) -> tuple[dict[str, Any], float]:
    from services.worker.kernels import implementation

    start = time.process_time()
    result = implementation(kernel, device)(params, inputs, outputs)
    return result, time.process_time() - start


class KernelRunner:
    def __init__(self, *, processes: int, cache_dir: Path, warm: bool) -> None:
        self.processes = processes
        self.cache_dir = cache_dir
        self.warm = warm
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(self.cache_dir)
        self._pool = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_init_child,
            initargs=(str(self.cache_dir), self.warm),
        )

    async def warm_up(self) -> None:
        """Start every pool process now (each warms the kernels) instead of on first use."""
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._pool, time.sleep, 0.05) for _ in range(self.processes))
        )

    async def run(
        self,
        kernel: str,
        device: str,
        params: dict[str, Any],
        inputs: dict[str, str],
        outputs: dict[str, str],
    ) -> Outcome:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            result, cpu = await loop.run_in_executor(
                self._pool, _execute, kernel, device, params, inputs, outputs
            )
        except BrokenProcessPool as exc:
            self._restart()
            raise AttemptCrashed("the kernel's process died") from exc
        except Exception as exc:
            raise KernelError(f"{type(exc).__name__}: {exc}") from exc
        return Outcome(result, cpu, time.perf_counter() - t0)

    def _restart(self) -> None:
        old = self._pool
        self.start()
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
