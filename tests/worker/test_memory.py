"""A job's memory is bounded: a pool process lets a job allocate the worker's
``job_memory_bytes`` and no more; a job that needs more ends FAILED with a "memory limit"
reason (not retried) and its process is replaced; and kernels convert their input piece by
piece, so that an integer input larger than the limit is no problem."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from services.worker.app import pool_config
from services.worker.child import out_of_memory
from services.worker.kernels.histogram import CONVERT_BLOCK, converted_blocks, counts_of
from services.worker.runner import KernelRunner, PoolConfig, Request, Status
from services.worker.settings import WorkerSettings
from tests.worker.conftest import CACHE, Save

LIMIT_MB = 64


@pytest_asyncio.fixture(scope="module")
async def small(plugin_path: str) -> AsyncIterator[KernelRunner]:
    """One pool process whose jobs may allocate ``LIMIT_MB`` MiB."""
    config = PoolConfig(
        processes=1,
        cache_dir=CACHE,
        threads=2,
        memory_limit_bytes=LIMIT_MB * 2**20,
        extra_env={"PYTHONPATH": plugin_path},
    )
    pool = KernelRunner(config)
    await pool.start()
    yield pool
    await pool.close()


def pids(runner: KernelRunner) -> set[int]:
    return {p.pid for p in runner._procs}


REASON = f"memory limit exceeded: the job needed more than {LIMIT_MB} MiB"


async def test_a_job_over_the_limit_fails_for_good_and_its_process_is_replaced(
    small: KernelRunner,
) -> None:
    await small.wait_idle()
    before = pids(small)
    outcome = await small.run(Request("hog", "cpu", {"megabytes": 2 * LIMIT_MB}))
    assert (outcome.status, outcome.error, outcome.retryable) == (Status.FAILED, REASON, False)
    await small.wait_idle()
    assert pids(small).isdisjoint(before)  # the process that ran it is gone, replaced
    fits = await small.run(Request("hog", "cpu", {"megabytes": LIMIT_MB // 4}))
    assert fits.status is Status.SUCCEEDED, fits


async def test_a_kernel_whose_work_needs_more_than_the_limit_fails_with_the_reason(
    small: KernelRunner, save: Save, tmp_path: Path
) -> None:
    await small.wait_idle()
    side = int((1.5 * LIMIT_MB * 2**20 / 8) ** 0.5)  # stencil2d's scratch copy: 1.5x the limit
    inputs = {"grid": save("g", np.zeros((side, side)))}
    out = tmp_path / "out" / "g.npy"
    request = Request("stencil2d", "cpu", {"iterations": 1}, inputs, {"grid": str(out)})
    outcome = await small.run(request)
    assert (outcome.status, outcome.error, outcome.retryable) == (Status.FAILED, REASON, False)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # nothing half-written


async def test_histogram_of_an_int8_input_larger_than_the_limit_succeeds_under_it(
    small: KernelRunner, save: Save
) -> None:
    """A float64 copy of this input would be 8 x 1.5 = 12 times the limit."""
    await small.wait_idle()
    n = int(1.5 * LIMIT_MB * 2**20)
    data = (np.arange(n) % 7).astype(np.int8)
    request = Request("histogram", "cpu", {"bins": 7, "range": [0, 7]}, {"data": save("d", data)})
    outcome = await small.run(request)
    assert outcome.status is Status.SUCCEEDED, outcome.error
    assert outcome.result == {"counts": [n // 7 + (1 if v < n % 7 else 0) for v in range(7)]}


def test_histogram_converts_an_integer_input_block_by_block() -> None:
    n = 4 * CONVERT_BLOCK + 3
    data = (np.arange(n) % 5).astype(np.int8)
    blocks = [block.shape[0] for block in converted_blocks(data)]
    assert blocks == [CONVERT_BLOCK] * 4 + [3]
    counts_of(data[:10], 5, 0.0, 5.0, 2)  # compiled before memory is traced
    tracemalloc.start()
    try:
        counts = counts_of(data, 5, 0.0, 5.0, 2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counts.tolist() == np.bincount(data).tolist()
    assert peak < 2 * CONVERT_BLOCK * 8  # one float64 block and the counts, not 8 x n bytes


def test_a_float64_input_is_counted_in_place() -> None:
    data = np.linspace(0.0, 1.0, 1000)
    (block,) = converted_blocks(data)
    assert np.shares_memory(block, data)
    assert not block.flags.writeable


def test_a_failed_allocation_inside_a_parallel_loop_counts_as_out_of_memory() -> None:
    exc = SystemError("returned a result with an exception set")  # as numba reports it
    exc.__cause__ = MemoryError("Allocation failed (probably too large).")
    assert out_of_memory(exc)
    assert out_of_memory(OSError(12, "Cannot allocate memory"))
    assert not out_of_memory(ValueError("not memory"))


def test_the_pool_limit_is_the_shared_job_memory_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATUS_LIMITS__JOB_MEMORY_MB", "300")
    assert pool_config(WorkerSettings(concurrency=4)).memory_limit_bytes == 300 * 2**20
    monkeypatch.delenv("STRATUS_LIMITS__JOB_MEMORY_MB")
    share = WorkerSettings(concurrency=4).limits.job_memory_bytes(slots=4)
    assert pool_config(WorkerSettings(concurrency=4)).memory_limit_bytes == share > 0


def test_the_cuda_simulator_runs_without_a_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATUS_LIMITS__JOB_MEMORY_MB", "300")
    simulated = WorkerSettings(device="cuda", cuda_simulator=True)
    assert pool_config(simulated).memory_limit_bytes == 0  # a thread per GPU thread
    assert pool_config(WorkerSettings(cuda_simulator=True)).memory_limit_bytes == 300 * 2**20
