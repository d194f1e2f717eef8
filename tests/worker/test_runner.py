"""The warm pool: results and CPU seconds come back; a timeout or a cancel kills the job's
process; a crash is a retryable failure, a job over its memory limit a final one; the pool
replaces every process it loses and keeps working.

The ``spin`` kernel spins for CPU seconds, so what a job is charged is known whatever the
load of the machine; a kernel that must be stopped spins for longer than the test's own
timeout, so a kill that does not happen fails the test instead of passing it late."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from services.worker.runner import KernelRunner, Request, Status, Usage
from tests.worker.conftest import STARTED_CPU_S, Save, kernel_started

Out = Callable[[str], str]
# CPU seconds of a kernel that only a kill stops: longer than the test's timeout
NEVER_S = 600


def spin(seconds: float) -> Request:
    return Request("spin", "cpu", {"seconds": seconds})


def pids(runner: KernelRunner) -> set[int]:
    return {p.pid for p in runner._procs}


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()[-60:]


async def running_pid(runner: KernelRunner, before: set[int], task: asyncio.Task[object]) -> int:
    """The pid of the process that took ``task``: the one no longer idle."""
    while True:
        assert not task.done()
        idle = {p.pid for p in runner._idle._queue}  # type: ignore[attr-defined]
        if len(before - idle) == 1:
            (pid,) = before - idle
            return pid
        await asyncio.sleep(0.02)


async def test_a_kernel_runs_in_a_pool_process_and_writes_its_output(
    runner: KernelRunner, save: Save, out: Out
) -> None:
    x, y = np.arange(5.0), np.ones(5)
    inputs = {"x": save("x", x), "y": save("y", y)}
    outcome = await runner.run(Request("saxpy", "cpu", {"a": 2.0}, inputs, {"y": out("y")}))
    assert outcome.status is Status.SUCCEEDED, outcome
    assert outcome.result == {"n": 5}
    np.testing.assert_array_equal(np.load(out("y")), 2.0 * x + y)
    assert runner.devices == ["cpu"]


async def test_busy_kernel_reports_its_cpu_seconds(runner: KernelRunner) -> None:
    seconds = 0.6
    busy, idle = await asyncio.gather(
        runner.run(spin(seconds)),
        runner.run(Request("spin", "cpu", {"seconds": seconds, "busy": False})),
    )
    assert busy.status is Status.SUCCEEDED
    assert busy.result is not None
    assert busy.result["loops"] > 0
    # one thread spun until it had used ``seconds`` of CPU: charged those, at most its wall time
    assert seconds <= busy.usage.cpu_seconds <= busy.usage.wall_seconds
    # asleep for ``seconds`` of wall time: charged less CPU than that
    assert idle.usage.cpu_seconds < seconds <= idle.usage.wall_seconds


async def test_bad_input_is_a_final_failure_and_keeps_the_process(
    runner: KernelRunner, save: Save, out: Out
) -> None:
    await runner.wait_idle()
    before = pids(runner)
    inputs = {"x": save("x", np.ones(3)), "y": save("y", np.ones(4))}
    outcome = await runner.run(Request("saxpy", "cpu", {"a": 1.0}, inputs, {"y": out("y")}))
    assert outcome.status is Status.FAILED
    assert not outcome.retryable
    assert outcome.error == "inputs 'x' and 'y' must have the same length, not 3 and 4"
    assert pids(runner) == before


async def test_timeout_kills_the_process(runner: KernelRunner) -> None:
    await runner.wait_idle()
    before = pids(runner)
    timeout_s = 1.0
    outcome = await runner.run(spin(NEVER_S), timeout_s=timeout_s)
    assert outcome.status is Status.TIMED_OUT
    assert outcome.error is not None
    assert f"timeout_s={timeout_s:g}" in outcome.error
    assert outcome.usage.wall_seconds >= timeout_s  # not stopped before its timeout
    assert outcome.usage.cpu_seconds <= outcome.usage.wall_seconds  # one core at most
    (killed,) = before - pids(runner)
    await runner.wait_idle()  # the replacement starts once the killed process has exited
    assert gone(killed)
    assert (await runner.run(spin(0.05))).status is Status.SUCCEEDED


async def test_cancel_kills_the_running_kernel(runner: KernelRunner) -> None:
    await runner.wait_idle()
    usage = Usage()
    task = asyncio.create_task(runner.run(spin(NEVER_S), usage=usage))
    pid = await running_pid(runner, pids(runner), task)
    await kernel_started(runner)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await runner.wait_idle()  # the replacement starts once the killed process has exited
    assert gone(pid)
    assert usage.cpu_seconds > STARTED_CPU_S  # what it had used when it was seen running
    assert runner.size == 2


async def test_segfault_is_a_retryable_crash_and_the_pool_lives_on(runner: KernelRunner) -> None:
    outcome = await runner.run(Request("segfault", "cpu", {}))
    assert outcome.status is Status.CRASHED
    assert outcome.retryable
    assert outcome.error == "the kernel's process crashed (SIGSEGV)"
    results = await asyncio.gather(*(runner.run(spin(0.1)) for _ in range(4)))
    assert all(r.status is Status.SUCCEEDED for r in results)
    await runner.wait_idle()
    assert runner.size == 2


async def test_a_job_over_its_memory_limit_is_a_final_failure(runner: KernelRunner) -> None:
    await runner.wait_idle()
    before = pids(runner)
    outcome = await runner.run(Request("hog", "cpu", {"megabytes": 4000}))
    assert outcome.status is Status.FAILED
    assert not outcome.retryable  # the same input needs the same memory next time
    assert outcome.error == "memory limit exceeded: the job needed more than 2000 MiB"
    assert len(before - pids(runner)) == 1  # that process is not reused
    await runner.wait_idle()
    assert (await runner.run(Request("hog", "cpu", {"megabytes": 10}))).status is Status.SUCCEEDED


async def test_a_sigterm_to_the_process_group_does_not_stop_a_running_job(
    runner: KernelRunner,
) -> None:
    await runner.wait_idle()
    task = asyncio.create_task(runner.run(spin(1.0)))
    pid = await running_pid(runner, pids(runner), task)
    os.kill(pid, signal.SIGTERM)  # what supervisord's stopasgroup sends: the worker decides
    outcome = await task
    assert outcome.status is Status.SUCCEEDED
    assert pid in pids(runner)


async def test_a_process_killed_while_idle_is_replaced_before_the_next_job(
    runner: KernelRunner,
) -> None:
    await runner.wait_idle()
    for pid in pids(runner):
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    outcome = await runner.run(spin(0.05))
    assert outcome.status is Status.SUCCEEDED


async def test_a_killed_job_leaves_no_temporary_output(
    runner: KernelRunner, save: Save, out: Out
) -> None:
    inputs = {"grid": save("g", np.ones((300, 300)))}
    request = Request("stencil2d", "cpu", {"iterations": 10**6}, inputs, {"grid": out("g")})
    outcome = await runner.run(request, timeout_s=1.0)
    assert outcome.status is Status.TIMED_OUT
    assert list(Path(out("g")).parent.iterdir()) == []  # no output, no temporary file
