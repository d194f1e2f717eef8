"""Batches in the warm pool (an array chunk's elements): one request, one reply frame per
item in order, the process kept; an item over its timeout or one that crashes loses only
itself and the rest go on in a fresh process; a stop ends the batch after the running item
and the items not run come back; cancelling the caller kills the batch's process.

Real pool processes (the session's ``runner`` fixture); the ``spin`` kernel spins for CPU
seconds, so an item that must be stopped spins for longer than the test's own timeout."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.worker.protocol import read_frame_async
from services.worker.runner import (
    BatchItem,
    KernelRunner,
    Outcome,
    PoolConfig,
    PoolProcess,
    Request,
    Status,
)
from tests.worker.conftest import CACHE, STARTED_CPU_S, kernel_started
from tests.worker.test_runner import NEVER_S, gone, pids

Outcomes = list[tuple[int, Outcome]]


def spins(*seconds: float, first: int = 0) -> list[BatchItem]:
    return [BatchItem(first + i, {"seconds": s}) for i, s in enumerate(seconds)]


async def run(
    runner: KernelRunner,
    kernel: str,
    items: list[BatchItem],
    *,
    timeout_s: float | None = None,
    stop: asyncio.Event | None = None,
) -> tuple[Outcomes, list[BatchItem]]:
    got: Outcomes = []
    left = await runner.run_batch(
        kernel,
        items,
        on_outcome=lambda index, outcome: got.append((index, outcome)),
        stop=stop or asyncio.Event(),
        timeout_s=timeout_s,
    )
    return got, left


async def test_a_batch_runs_every_item_in_order_in_one_warm_process(runner: KernelRunner) -> None:
    await runner.wait_idle()
    before = pids(runner)
    items = [BatchItem(100 + i, {"samples": 1000, "seed": i}) for i in range(50)]
    got, left = await run(runner, "montecarlo_pi", items)
    assert left == []
    assert [index for index, _ in got] == [item.index for item in items]
    for _, outcome in got:
        assert outcome.status is Status.SUCCEEDED, outcome
        assert outcome.result is not None
        assert 2.0 < outcome.result["estimate"] < 4.5
        assert outcome.usage.cpu_seconds >= 0.0
        assert outcome.usage.wall_seconds > 0.0
    # the same seed gives the same estimate as a job of its own
    alone = await runner.run(Request("montecarlo_pi", "cpu", {"samples": 1000, "seed": 7}))
    assert alone.result == got[7][1].result
    assert pids(runner) == before  # no process was replaced


async def test_a_bad_item_fails_alone_and_the_batch_goes_on(runner: KernelRunner) -> None:
    await runner.wait_idle()
    before = pids(runner)
    items = [*spins(0.01), BatchItem(1, {"seconds": -1}), *spins(0.01, first=2)]
    got, left = await run(runner, "spin", items)
    assert left == []
    assert [(i, o.status) for i, o in got] == [
        (0, Status.SUCCEEDED),
        (1, Status.FAILED),
        (2, Status.SUCCEEDED),
    ]
    assert not got[1][1].retryable
    assert got[1][1].error is not None
    assert got[1][1].error.startswith("params.seconds")
    assert pids(runner) == before


async def test_an_item_over_its_timeout_is_stopped_and_the_rest_run_in_a_fresh_process(
    runner: KernelRunner,
) -> None:
    await runner.wait_idle()
    before = pids(runner)
    timeout_s = 1.0
    got, left = await run(runner, "spin", spins(0.05, NEVER_S, 0.05, 0.05), timeout_s=timeout_s)
    assert left == []
    assert [(i, o.status) for i, o in got] == [
        (0, Status.SUCCEEDED),
        (1, Status.TIMED_OUT),
        (2, Status.SUCCEEDED),
        (3, Status.SUCCEEDED),
    ]
    timed_out = got[1][1]
    assert timed_out.error is not None
    assert f"timeout_s={timeout_s:g}" in timed_out.error
    assert not timed_out.retryable
    assert timed_out.usage.wall_seconds >= timeout_s  # not stopped before its timeout
    assert STARTED_CPU_S < timed_out.usage.cpu_seconds <= timed_out.usage.wall_seconds
    (killed,) = before - pids(runner)
    await runner.wait_idle()
    assert gone(killed)
    assert runner.size == 2


async def test_a_crash_fails_that_item_retryably_and_the_rest_go_on(runner: KernelRunner) -> None:
    await runner.wait_idle()
    got, left = await run(runner, "segfault", [BatchItem(i, {}) for i in range(3)])
    assert left == []
    assert [i for i, _ in got] == [0, 1, 2]
    for _, outcome in got:  # each item in a fresh process, each crashed
        assert outcome.status is Status.CRASHED
        assert outcome.retryable
        assert outcome.error == "the kernel's process crashed (SIGSEGV)"
    await runner.wait_idle()
    assert runner.size == 2


async def test_an_item_out_of_memory_fails_finally_and_the_rest_go_on(
    runner: KernelRunner,
) -> None:
    await runner.wait_idle()
    before = pids(runner)
    items = [BatchItem(0, {"megabytes": 10}), BatchItem(1, {"megabytes": 4000})]
    items.append(BatchItem(2, {"megabytes": 10}))
    got, left = await run(runner, "hog", items)
    assert left == []
    assert [(i, o.status) for i, o in got] == [
        (0, Status.SUCCEEDED),
        (1, Status.FAILED),
        (2, Status.SUCCEEDED),
    ]
    assert got[1][1].error == "memory limit exceeded: the job needed more than 2000 MiB"
    assert not got[1][1].retryable
    assert len(before - pids(runner)) == 1  # that process is not reused
    await runner.wait_idle()


async def test_stop_ends_the_batch_after_the_running_item_and_returns_the_rest(
    runner: KernelRunner,
) -> None:
    await runner.wait_idle()
    before = pids(runner)
    stop = asyncio.Event()
    items = spins(*[0.2] * 20)
    got: Outcomes = []

    def on_outcome(index: int, outcome: Outcome) -> None:
        got.append((index, outcome))
        if len(got) == 2:
            stop.set()

    left = await runner.run_batch("spin", items, on_outcome=on_outcome, stop=stop, timeout_s=30)
    # the stop reached the process while it ran item 2 (or 3, on a loaded machine)
    assert 2 <= len(got) <= 4
    assert all(o.status is Status.SUCCEEDED for _, o in got)
    assert [i for i, _ in got] + [item.index for item in left] == list(range(20))
    assert pids(runner) == before  # stopped, not killed
    # the process answers the next request as usual
    assert (await runner.run(Request("spin", "cpu", {"seconds": 0.01}))).status is Status.SUCCEEDED


async def test_a_stop_set_before_the_batch_runs_nothing(runner: KernelRunner) -> None:
    stop = asyncio.Event()
    stop.set()
    got, left = await run(runner, "spin", spins(0.01, 0.01), stop=stop)
    assert got == []
    assert [item.index for item in left] == [0, 1]


async def test_cancelling_the_caller_kills_the_batch_process(runner: KernelRunner) -> None:
    await runner.wait_idle()
    before = pids(runner)
    task = asyncio.create_task(run(runner, "spin", spins(NEVER_S, 0.01)))
    await kernel_started(runner)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await runner.wait_idle()
    (killed,) = before - pids(runner)
    assert gone(killed)
    assert runner.size == 2


async def test_a_stop_that_arrives_after_its_batch_is_skipped(plugin_path: str) -> None:
    config = PoolConfig(processes=1, cache_dir=CACHE, extra_env={"PYTHONPATH": plugin_path})
    proc = await PoolProcess.start(config)
    try:
        assert proc.proc.stdout is not None
        await proc.call_batch("spin", "cpu", spins(0.01))
        assert (await read_frame_async(proc.proc.stdout))["index"] == 0
        assert (await read_frame_async(proc.proc.stdout)) == {"type": "batch_done"}
        await proc.send_stop()  # too late for that batch: the process must not stop on it
        reply = await proc.call(Request("spin", "cpu", {"seconds": 0.01}))
        assert reply["type"] == "done"
        # a batch whose params are large arrives whole through the unbuffered pipe
        big = [BatchItem(i, {"seconds": 0.001, "pad": "x" * 100_000}) for i in range(3)]
        await proc.call_batch("spin", "cpu", big)
        frames = [await read_frame_async(proc.proc.stdout) for _ in range(4)]
        assert [f.get("index") for f in frames] == [0, 1, 2, None]
    finally:
        await proc.stop()
    assert not Path(f"/proc/{proc.pid}/status").exists() or proc.proc.returncode is not None


async def test_an_item_whose_result_is_too_large_to_return_inline_fails_retryably() -> None:
    small = BatchItem(0, {"samples": 10, "seed": 1})
    pool = KernelRunner(PoolConfig(processes=1, cache_dir=CACHE, result_inline_max_bytes=4096))
    await pool.start()
    try:
        got, left = await run(pool, "montecarlo_pi", [small])
        assert left == []
        assert got[0][1].status is Status.SUCCEEDED  # under the limit: as usual
        size = len(json.dumps(got[0][1].result, separators=(",", ":")))
    finally:
        await pool.close()
    # the same result over the limit: the item fails, retryably (a retry runs it as a job)
    pool = KernelRunner(PoolConfig(processes=1, cache_dir=CACHE, result_inline_max_bytes=size - 1))
    await pool.start()
    try:
        got, left = await run(pool, "montecarlo_pi", [small, BatchItem(1, {"samples": 10})])
        assert left == []
        assert [o.status for _, o in got] == [Status.FAILED, Status.FAILED]
        outcome = got[0][1]
        assert outcome.retryable
        assert outcome.error is not None
        assert f"the result ({size} bytes) is larger than the {size - 1} bytes" in outcome.error
        assert outcome.usage.wall_seconds > 0
    finally:
        await pool.close()


async def test_a_batch_runs_on_the_cuda_device_with_the_same_results(runner: KernelRunner) -> None:
    """A cuda worker's chunk (the CUDA simulator here): each element runs the CUDA version
    and gets the CPU version's estimate."""
    items = [BatchItem(i, {"samples": 100, "seed": i}) for i in range(3)]
    cpu, _ = await run(runner, "montecarlo_pi", items)
    config = PoolConfig(
        processes=1, cache_dir=CACHE, device="cuda", warm=False, cuda_simulator=True
    )
    pool = KernelRunner(config)
    await pool.start()
    try:
        assert "cuda" in pool.devices
        got: Outcomes = []
        left = await pool.run_batch(
            "montecarlo_pi",
            items,
            on_outcome=lambda index, outcome: got.append((index, outcome)),
            stop=asyncio.Event(),
            device="cuda",
        )
    finally:
        await pool.close()
    assert left == []
    assert [(i, o.status) for i, o in got] == [(i, Status.SUCCEEDED) for i in range(3)]
    assert [o.result for _, o in got] == [o.result for _, o in cpu]
