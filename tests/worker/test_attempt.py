"""From the runner's outcome to the report the worker records (``WorkerRuntime._attempt``):
states, retryability and CPU seconds, for a user's cancel and a worker's shutdown too."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypedDict, cast

import numpy as np
import pytest

from services.worker.app import WorkerRuntime, start_runner
from services.worker.datasets import attempt_files
from services.worker.runner import KernelRunner, Outcome, Request, Status, Usage
from services.worker.service import report_for
from services.worker.settings import WorkerSettings
from shared.jobs.proposals import Report
from shared.jobs.states import JobState
from shared.jobs.store import Claim
from shared.runtime import Resources
from shared.settings import StorageSettings
from tests.worker.conftest import CACHE, STARTED_CPU_S, kernel_started

# CPU seconds of a kernel that only a kill stops: longer than the test's timeout
NEVER_S = 600


def claim(kernel: str, params: dict[str, Any], timeout_s: int = 60, **names: Any) -> Claim:
    inputs, outputs = names.get("inputs", {}), names.get("outputs", {})
    return Claim(uuid.uuid4(), uuid.uuid4(), 1, kernel, params, inputs, outputs, timeout_s)


def attempt(runtime: WorkerRuntime, c: Claim) -> Coroutine[Any, Any, Report]:
    """``runtime``'s attempt of ``c``, its files where the worker puts them."""
    return runtime._attempt(c, attempt_files(runtime.settings.storage, c))


@pytest.fixture
def runtime(runner: KernelRunner, tmp_path: Path) -> WorkerRuntime:
    storage = StorageSettings.model_validate(
        {"local": {"root": str(tmp_path / "local")}, "fsync": False}
    )
    settings = WorkerSettings(storage=storage, concurrency=2)
    res = SimpleNamespace(engine=None, sessions=None)  # no database: attempts only
    return WorkerRuntime(cast(Resources, res), settings, runner)


@pytest.mark.parametrize(
    ("status", "retryable", "state"),
    [
        (Status.SUCCEEDED, False, JobState.SUCCEEDED),
        (Status.FAILED, False, JobState.FAILED),
        (Status.FAILED, True, JobState.FAILED),
        (Status.CRASHED, True, JobState.FAILED),
        (Status.TIMED_OUT, False, JobState.TIMED_OUT),
    ],
)
def test_report_for_each_outcome(status: Status, retryable: bool, state: JobState) -> None:
    usage = Usage(cpu_seconds=1.5, wall_seconds=2.0)
    report = report_for(Outcome(status, usage, error="why", retryable=retryable), usage)
    assert (report.state, report.retryable, report.cpu_seconds) == (state, retryable, 1.5)
    assert report.wall_seconds == 2.0


async def test_timeout_becomes_timed_out_with_its_cpu_seconds(runtime: WorkerRuntime) -> None:
    timeout_s = 1
    report = await attempt(runtime, claim("spin", {"seconds": NEVER_S}, timeout_s=timeout_s))
    assert report.state is JobState.TIMED_OUT
    assert report.error == f"exceeded timeout_s={timeout_s}: the kernel's process was stopped"
    assert report.cpu_seconds <= report.wall_seconds  # one core at most
    assert report.wall_seconds >= timeout_s  # not stopped before its timeout


async def test_a_users_cancel_stops_the_kernel_and_keeps_its_usage(
    runtime: WorkerRuntime,
) -> None:
    await runtime.runner.wait_idle()
    task = asyncio.create_task(attempt(runtime, claim("spin", {"seconds": NEVER_S})))
    await kernel_started(runtime.runner)
    task.cancel()
    report = await task
    assert report.state is JobState.CANCELLED
    assert report.cpu_seconds > STARTED_CPU_S  # what it had used when it was seen running


async def test_shutdown_hands_the_job_back(runtime: WorkerRuntime) -> None:
    await runtime.runner.wait_idle()
    runtime.stopping = True
    task = asyncio.create_task(attempt(runtime, claim("spin", {"seconds": NEVER_S})))
    await kernel_started(runtime.runner)
    task.cancel()
    report = await task
    assert report.state is JobState.QUEUED


async def test_dataset_names_resolve_on_the_local_tier(
    runtime: WorkerRuntime, tmp_path: Path
) -> None:
    c = claim("histogram", {"bins": 2, "range": [0, 1]}, inputs={"data": "d/x.npy"})
    missing = await attempt(runtime, c)
    assert missing.state is JobState.FAILED
    assert missing.error == "input 'data': dataset 'd/x.npy' not found on the 'local' tier"
    assert not missing.retryable
    tenant_folder = tmp_path / "local" / str(c.tenant_id) / "d"
    tenant_folder.mkdir(parents=True)
    np.save(tenant_folder / "x.npy", np.array([0.1, 0.2, 0.9]))
    found = await attempt(runtime, c)
    assert found.state is JobState.SUCCEEDED
    assert found.result == {"counts": [2, 1]}
    escape = await attempt(runtime, claim("histogram", {}, inputs={"data": "../x.npy"}))
    assert escape.state is JobState.FAILED
    assert escape.error is not None
    assert escape.error.startswith("invalid dataset name '../x.npy'")
    bad_output = await attempt(runtime, dataclasses.replace(c, outputs={"o": "/abs"}))
    assert bad_output.state is JobState.FAILED
    assert bad_output.error is not None
    assert bad_output.error.startswith("invalid dataset name '/abs'")


async def test_outputs_are_written_under_the_tiers_temporary_folder(
    runtime: WorkerRuntime, tmp_path: Path
) -> None:
    c = claim("saxpy", {"a": 2.0}, inputs={"x": "x.npy", "y": "y.npy"}, outputs={"y": "out/y.npy"})
    folder = tmp_path / "local" / str(c.tenant_id)
    folder.mkdir(parents=True)
    np.save(folder / "x.npy", np.arange(3.0))
    np.save(folder / "y.npy", np.ones(3))
    request = runtime._request(c, attempt_files(runtime.settings.storage, c))
    temp = Path(request.outputs["y"])
    assert temp.is_relative_to(tmp_path / "local" / ".stratus-tmp")
    report = await attempt(runtime, c)
    assert report.state is JobState.SUCCEEDED, report.error
    np.testing.assert_array_equal(np.load(temp), 2.0 * np.arange(3.0) + 1.0)
    assert not (folder / "out" / "y.npy").exists()  # published only when recorded


class RunnerSettings(TypedDict):
    concurrency: int
    numba_cache_dir: Path
    warm_kernels: bool


async def test_a_cuda_worker_needs_cuda_or_the_simulator(tmp_path: Path) -> None:
    base: RunnerSettings = {"concurrency": 1, "numba_cache_dir": CACHE, "warm_kernels": False}
    with pytest.raises(
        RuntimeError, match=r"STRATUS_DEVICE=cuda but this machine offers \['cpu'\]"
    ):
        await start_runner(WorkerSettings(device="cuda", **base))
    simulated = await start_runner(WorkerSettings(device="cuda", cuda_simulator=True, **base))
    try:
        assert simulated.devices == ["cpu", "cuda"]
        outcome = await simulated.run(Request("montecarlo_pi", "cuda", {"samples": 200, "seed": 1}))
        assert outcome.result is not None
        assert outcome.result["samples"] == 200
    finally:
        await simulated.close()
