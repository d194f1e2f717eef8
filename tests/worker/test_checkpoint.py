"""Checkpoints: the file is whole or not read; every checkpointing kernel stopped and resumed
gives the uninterrupted result bit for bit (CPU, the CUDA simulator, and across devices where
the arithmetic is the same); a pool process killed with SIGKILL before the first checkpoint,
between two, or with a torn write left behind, resumes from what is whole; a release (the
worker's drain) checkpoints and stops at once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from services.worker import checkpoint
from services.worker.runner import KernelRunner, Request, Status
from tests.worker.checkpoint_cases import cases
from tests.worker.conftest import REPO, Save


def _cases(device: str) -> dict[str, list[Any]]:
    env = {**os.environ}
    if device == "cuda":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.worker.checkpoint_cases", device],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out: dict[str, list[Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.fixture(scope="module")
def cpu_results() -> dict[str, list[Any]]:
    return _cases("cpu")


@pytest.fixture(scope="module")
def cuda_results() -> dict[str, list[Any]]:
    return _cases("cuda")


@pytest.mark.parametrize("name", list(cases("cpu")))
def test_resumed_cpu_run_is_bit_for_bit(name: str, cpu_results: dict[str, list[Any]]) -> None:
    ok, detail = cpu_results[name]
    assert ok is True, detail


@pytest.mark.parametrize("name", list(cases("cuda")))
def test_resumed_cuda_run_is_bit_for_bit(name: str, cuda_results: dict[str, list[Any]]) -> None:
    ok, detail = cuda_results[name]
    assert ok is True, detail


# --- the file ---------------------------------------------------------------------------


def _state() -> checkpoint.State:
    return checkpoint.State(
        12, {"grid": np.arange(12.0).reshape(3, 4), "n": np.arange(3)}, {"e": 0.1}
    )


def test_a_checkpoint_reads_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / checkpoint.FILE
    size = checkpoint.write(path, _state(), kernel="k", device="cpu", max_bytes=10**6)
    assert size == path.stat().st_size
    found = checkpoint.read(path, kernel="k")
    assert found is not None
    state, header = found
    assert state.step == 12
    assert state.numbers == {"e": 0.1}
    assert header["device"] == "cpu"
    assert np.array_equal(state.arrays["grid"], _state().arrays["grid"])
    assert state.arrays["n"].dtype == np.arange(3).dtype
    assert checkpoint.read(path, kernel="other") is None  # another kernel's: not read


@pytest.mark.parametrize("cut", [0, 5, 30, -40, -1])
def test_a_torn_checkpoint_is_never_read(tmp_path: Path, cut: int) -> None:
    path = tmp_path / checkpoint.FILE
    checkpoint.write(path, _state(), kernel="k", device="cpu", max_bytes=10**6)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    assert checkpoint.read(path, kernel="k") is None


def test_a_flipped_byte_is_never_read(tmp_path: Path) -> None:
    path = tmp_path / checkpoint.FILE
    checkpoint.write(path, _state(), kernel="k", device="cpu", max_bytes=10**6)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert checkpoint.read(path, kernel="k") is None


def test_a_resume_names_the_attempt_that_saved_the_file(tmp_path: Path) -> None:
    """The file says who saved it (attempt, worker, when); the next attempt's resume frame
    carries that, and only an attempt before the resuming one counts."""
    from services.worker import progress

    spec = {"folder": str(tmp_path), "interval_s": 1e-9, "attempt": 1, "worker": "w-a"}
    t0 = time.time()
    with checkpoint.session(spec) as ck:
        ck.for_kernel("k", "cpu").after_block(12, 100, _state)
    events: list[dict[str, Any]] = []
    with checkpoint.session({**spec, "attempt": 2}, events.append) as ck:
        state = ck.for_kernel("k", "cpu").resume()
    assert state is not None
    assert state.step == 12
    [event] = events
    assert event["event"] == "resumed"
    by = progress.SavedBy.of(event["saved_by"], before=2)
    assert by is not None
    assert (by.attempt, by.worker) == (1, "w-a")
    assert by.at is not None
    assert t0 <= by.at <= time.time()
    assert progress.SavedBy.of(event["saved_by"], before=1) is None  # not an earlier one's
    assert progress.SavedBy.of(None, before=2) is None  # a file without the field
    assert progress.SavedBy.of({"attempt": True}, before=2) is None


def test_a_checkpoint_over_the_bound_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / checkpoint.FILE
    assert checkpoint.write(path, _state(), kernel="k", device="cpu", max_bytes=100) is None
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file either


# --- a pool process killed, or released -------------------------------------------------

ITERATIONS = 4000
# a job that runs well past its first progress report (a second after it starts) on a quiet
# host: 256² points for 128,000 steps take 3-7 s at the 0.4-0.9 ns a point-step measured
LONG = 32 * ITERATIONS


def _grid() -> np.ndarray[Any, Any]:
    return np.random.default_rng(3).normal(size=(256, 256))


def _uninterrupted(folder: Path, iterations: int) -> np.ndarray[Any, Any]:
    from services.worker.kernels import stencil2d

    np.save(folder / "grid.npy", _grid())
    out = {"grid": str(folder / "out.npy")}
    stencil2d.run_cpu({"iterations": iterations}, {"grid": str(folder / "grid.npy")}, out)
    grid: np.ndarray[Any, Any] = np.load(out["grid"])
    return grid


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray[Any, Any]:
    return _uninterrupted(tmp_path_factory.mktemp("ref"), ITERATIONS)


def _request(
    save: Save, tmp_path: Path, tag: str, interval_s: float, iterations: int = ITERATIONS
) -> Request:
    return Request(
        "stencil2d",
        "cpu",
        {"iterations": iterations},
        {"grid": save("grid", _grid())},
        {"grid": str(tmp_path / f"out-{tag}.npy")},
        checkpoint={"folder": str(tmp_path / "ck"), "interval_s": interval_s},
    )


async def _kill_after(
    runner: KernelRunner, request: Request, saved: int
) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``request``, SIGKILL its process once it has written ``saved`` checkpoints (0: as
    soon as the kernel runs)."""
    events: list[dict[str, Any]] = []
    before = {p.pid for p in runner._procs}
    task = asyncio.ensure_future(runner.run(request, on_checkpoint=events.append))
    pid = None
    while pid is None:
        idle = {p.pid for p in runner._idle._queue}  # type: ignore[attr-defined]
        busy = before - idle
        pid = next(iter(busy)) if len(busy) == 1 else None
        await asyncio.sleep(0.01)
    while sum(e["event"] == "saved" for e in events) < saved:
        assert not task.done(), events
        await asyncio.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return await task, events


@pytest.mark.parametrize("saved", [0, 2])
async def test_killed_process_resumes_from_its_last_checkpoint(
    runner: KernelRunner, save: Save, tmp_path: Path, reference: Any, saved: int
) -> None:
    # the interval: none before the kill (0) or one every block (2)
    killed, events = await _kill_after(
        runner, _request(save, tmp_path, "1", 600.0 if saved == 0 else 1e-9), saved
    )
    assert killed.status is Status.CRASHED
    steps = [e["step"] for e in events if e["event"] == "saved"]
    assert len(steps) >= saved
    await runner.wait_idle()
    again = await runner.run(_request(save, tmp_path, "2", 600.0))
    assert again.status is Status.SUCCEEDED, again.error
    if saved == 0:
        assert again.resumed_from is None
    else:  # the last one it wrote: the one we saw, or one written before the kill landed
        assert again.resumed_from is not None
        assert again.resumed_from >= steps[-1]
    assert np.array_equal(np.load(tmp_path / "out-2.npy"), reference)


async def test_a_torn_write_left_by_a_kill_is_not_read(
    runner: KernelRunner, save: Save, tmp_path: Path, reference: Any
) -> None:
    killed, events = await _kill_after(runner, _request(save, tmp_path, "1", 1e-9), 1)
    assert killed.status is Status.CRASHED
    last = [e["step"] for e in events if e["event"] == "saved"][-1]
    folder = tmp_path / "ck"
    # what a kill during the next write leaves: a temporary file, half written
    whole = (folder / checkpoint.FILE).read_bytes()
    (folder / f".{checkpoint.FILE}.99999.tmp").write_bytes(whole[: len(whole) // 2])
    await runner.wait_idle()
    again = await runner.run(_request(save, tmp_path, "2", 600.0))
    assert again.resumed_from is not None
    assert again.resumed_from >= last  # the whole one, never the torn one
    assert np.array_equal(np.load(tmp_path / "out-2.npy"), reference)
    # and the checkpoint itself torn (a disk that lost its tail): started over, same result
    (folder / checkpoint.FILE).write_bytes(whole[:-10])
    third = await runner.run(_request(save, tmp_path, "3", 600.0))
    assert third.status is Status.SUCCEEDED
    assert third.resumed_from is None
    assert np.array_equal(np.load(tmp_path / "out-3.npy"), reference)


async def test_a_release_checkpoints_and_stops_then_resumes(
    runner: KernelRunner, save: Save, tmp_path: Path
) -> None:
    long = LONG
    reference = _uninterrupted(tmp_path, long)
    release = asyncio.Event()
    events: list[dict[str, Any]] = []

    def seen(e: dict[str, Any]) -> None:
        events.append(e)

    # an interval no block reaches: the one checkpoint is the release's, asked for once the
    # kernel reports progress (its first report comes a second after it starts)
    task = asyncio.ensure_future(
        runner.run(
            _request(save, tmp_path, "1", 600.0, long),
            on_checkpoint=seen,
            on_progress=lambda _: release.set(),
            release=release,
        )
    )
    released = await task
    assert released.status is Status.RELEASED, released
    assert released.checkpoints == 1
    assert 0 < (released.released_at or 0) < long
    assert [e["event"] for e in events] == ["saved"]
    again = await runner.run(_request(save, tmp_path, "2", 600.0, long))
    assert again.status is Status.SUCCEEDED
    assert again.resumed_from == released.released_at
    assert np.array_equal(np.load(tmp_path / "out-2.npy"), reference)


# --- the worker's drain -----------------------------------------------------------------


async def test_a_drain_hands_a_checkpointing_job_back_and_it_resumes_exactly(
    runner: KernelRunner, save: Save, tmp_path: Path
) -> None:
    from services.worker.app import WorkerRuntime
    from services.worker.datasets import attempt_files
    from services.worker.settings import WorkerSettings
    from shared.jobs.states import JobState
    from shared.jobs.store import Claim
    from shared.runtime import Resources
    from shared.settings import StorageSettings

    storage = StorageSettings.model_validate(
        {"local": {"root": str(tmp_path / "local")}, "fsync": False}
    )
    rt = WorkerRuntime(
        cast(Resources, SimpleNamespace(engine=None, sessions=None)),  # no database
        WorkerSettings(storage=storage, concurrency=2),
        runner,
    )
    long = LONG
    reference = _uninterrupted(tmp_path, long)
    grid = save("grid", _grid())
    job_id, tenant_id = uuid.uuid4(), uuid.uuid4()

    def claim(attempt: int) -> Claim:
        return Claim(job_id, tenant_id, attempt, "stencil2d", {"iterations": long}, {}, {}, 600)

    def request(c: Claim, files: Any) -> Request:
        base = WorkerRuntime._request(rt, c, files)
        return dataclasses.replace(base, inputs={"grid": grid}, outputs={"grid": out})

    out = str(tmp_path / "drained-out.npy")
    rt._request = request  # type: ignore[method-assign,assignment]  # input outside the tiers
    first = claim(1)
    task = asyncio.ensure_future(rt._attempt(first, attempt_files(storage, first)))
    while first.job_id not in rt.releases:
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.5)  # into the run, before its first interval (30 s) is up
    assert not task.done()
    rt.stopping = True
    for release in rt.releases.values():  # what ``shutdown`` does first
        release.set()
    report = await task
    assert report.state is JobState.QUEUED
    assert report.handed_back == "drained"
    assert (rt._checkpoints(first) / checkpoint.FILE).exists()
    rt.stopping = False
    rt.releases.clear()
    second = claim(2)
    again = await rt._attempt(second, attempt_files(storage, second))
    assert again.state is JobState.SUCCEEDED, again.error
    assert np.array_equal(np.load(out), reference)


async def _running_job(sessions: Any) -> tuple[uuid.UUID, uuid.UUID]:
    """A tenant and its ``stencil2d`` job, RUNNING its first attempt: their ids."""
    from shared.db.models import Tenant
    from tests.factories import new_job

    tenant_id = uuid.uuid4()
    async with sessions() as s, s.begin():
        s.add(
            Tenant(id=tenant_id, name=f"k{tenant_id.hex[:8]}", weight=1, quotas={}, suspended=False)
        )
        await s.flush()
        job = new_job(tenant_id, kernel="stencil2d", state="RUNNING", attempts=1)
        s.add(job)
    return tenant_id, job.id


async def test_a_killed_attempts_checkpoints_are_counted_and_are_events(
    runner: KernelRunner,
    save: Save,
    tmp_path: Path,
    engine: Any,
    sessions: Any,
) -> None:
    """Each checkpoint is counted on the job's row, with a ``checkpoint`` event, as it is
    saved: an attempt whose process is killed with SIGKILL after two keeps them; the next
    attempt resumes from the last one, adds its own, and its result is the uninterrupted
    run's."""
    from sqlalchemy import select

    from services.worker.app import WorkerRuntime
    from services.worker.datasets import attempt_files
    from services.worker.settings import WorkerSettings
    from shared.db.models import Job, JobEvent
    from shared.jobs.states import JobState
    from shared.jobs.store import Claim
    from shared.runtime import Resources
    from shared.settings import StorageSettings

    storage = StorageSettings.model_validate(
        {"local": {"root": str(tmp_path / "local")}, "fsync": False}
    )
    rt = WorkerRuntime(
        cast(Resources, SimpleNamespace(engine=engine, sessions=sessions)),
        WorkerSettings(storage=storage, concurrency=2, name="w-count"),
        runner,
    )
    long = LONG
    reference = _uninterrupted(tmp_path, long)
    grid, out = save("grid", _grid()), str(tmp_path / "counted-out.npy")
    tenant_id, job_id = await _running_job(sessions)

    def claim(attempt: int) -> Claim:
        params = {"iterations": long}
        return Claim(job_id, tenant_id, attempt, "stencil2d", params, {}, {}, 600, "local", 1)

    def request(c: Claim, files: Any) -> Request:
        base = WorkerRuntime._request(rt, c, files)
        return dataclasses.replace(base, inputs={"grid": grid}, outputs={"grid": out})

    seen: list[tuple[int, str, int]] = []

    def on_checkpoint(c: Claim, event: dict[str, Any]) -> None:
        seen.append((c.attempt, event["event"], event["step"]))
        WorkerRuntime._on_checkpoint(rt, c, event)

    rt._request = request  # type: ignore[method-assign,assignment]  # input outside the tiers
    rt._on_checkpoint = on_checkpoint  # type: ignore[method-assign,assignment]
    before = {p.pid for p in runner._procs}
    first = claim(1)
    task = asyncio.ensure_future(rt._attempt(first, attempt_files(storage, first)))
    pid = None
    while pid is None:
        busy = before - {p.pid for p in runner._idle._queue}  # type: ignore[attr-defined]
        pid = next(iter(busy)) if len(busy) == 1 else None
        await asyncio.sleep(0.01)
    while sum(e == "saved" for _, e, _ in seen) < 2:
        assert not task.done(), seen
        await asyncio.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    killed = await task
    assert killed.state is not JobState.SUCCEEDED
    saved_1 = [step for a, e, step in seen if a == 1 and e == "saved"]

    async def counted() -> tuple[int, int | None, list[tuple[int, str | None, int | None]]]:
        async with sessions() as s:
            row = await s.get(Job, job_id, populate_existing=True)
            assert row is not None
            events = await s.execute(
                select(JobEvent.attempt, JobEvent.reason, JobEvent.step)
                .where(JobEvent.job_id == job_id, JobEvent.kind == "checkpoint")
                .order_by(JobEvent.id)
            )
            return row.checkpoints, row.resumed_from, [tuple(e) for e in events]

    count, resumed, events = await counted()
    assert count == len(saved_1) >= 2  # the killed attempt's, though it never reported
    assert resumed is None
    assert events == [(1, "saved", step) for step in saved_1]
    # the reaper's work: the job queued again and claimed for attempt 2
    async with sessions() as s, s.begin():
        row = await s.get(Job, job_id)
        assert row is not None
        row.attempts = 2
    await runner.wait_idle()
    second = claim(2)
    again = await rt._attempt(second, attempt_files(storage, second))
    assert again.state is JobState.SUCCEEDED, again.error
    assert np.array_equal(np.load(out), reference)
    (_, kind, step), *rest = [s for s in seen if s[0] == 2]
    assert kind == "resumed"
    assert step == saved_1[-1]  # the last save the killed attempt reported
    count, resumed, events = await counted()
    assert resumed == step
    assert count == len(saved_1) + sum(e == "saved" for _, e, _ in rest)
    assert events[len(saved_1)] == (2, "resumed", step)
    assert [e for e in events if e[0] == 2] == [(2, e, s) for _, e, s in [(2, kind, step), *rest]]


async def test_a_refused_record_leaves_the_checkpoint_to_the_next_attempt(
    runner: KernelRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt that ends in a final state removes the job's checkpoint, but only once the
    job took its outcome: a record refused (its lease was taken, another attempt runs the
    job) leaves the file for the attempt that resumes from it. The chaos run once saw a job
    computed again from the start when such an attempt removed it."""
    from services.worker.app import WorkerRuntime
    from services.worker.settings import WorkerSettings
    from shared.jobs.proposals import Report
    from shared.jobs.states import JobState
    from shared.jobs.store import Claim
    from shared.runtime import Resources
    from shared.settings import StorageSettings

    storage = StorageSettings.model_validate(
        {"local": {"root": str(tmp_path / "local")}, "fsync": False}
    )
    rt = WorkerRuntime(
        cast(Resources, SimpleNamespace(engine=None, sessions=None)),
        WorkerSettings(storage=storage, concurrency=1, name="w-keep"),
        runner,
    )
    claim = Claim(uuid.uuid4(), uuid.uuid4(), 2, "stencil2d", {}, {}, {}, 600, "local", 1)
    folder = rt._checkpoints(claim)
    folder.mkdir(parents=True)
    (folder / checkpoint.FILE).write_bytes(b"saved")

    async def attempt(*_: object) -> Report:
        return Report(JobState.SUCCEEDED, {"ok": 1})

    monkeypatch.setattr(rt, "_attempt", attempt)
    for accepted in (False, True):

        async def record(*_: object, accepted: bool = accepted) -> bool:
            return accepted

        monkeypatch.setattr(rt, "_record", record)
        await rt.slots.acquire()  # as the dispatch does before the attempt runs
        await rt._run(claim)
        assert folder.exists() is not accepted


async def test_a_resume_records_the_save_a_kill_left_unrecorded(engine: Any, sessions: Any) -> None:
    """A save whose record was cut off (a kill between the file's rename and its record) is
    recorded when the next attempt resumes from it: its own attempt, worker and time, counted
    once; a save already recorded, or one the file cannot name, adds nothing."""
    from sqlalchemy import select

    from services.worker import progress
    from shared.db.models import Job, JobEvent
    from shared.db.raw import raw_connection

    _, job_id = await _running_job(sessions)

    async def attempt(n: int) -> None:
        async with sessions() as s, s.begin():
            row = await s.get(Job, job_id)
            assert row is not None
            row.attempts = n

    async def write(n: int, event: str, step: int, by: progress.SavedBy | None = None) -> None:
        async with raw_connection(engine) as conn:
            await progress.write_checkpoint(
                conn.execute, job_id, n, event=event, step=step, worker=f"w{n}", saved_by=by
            )

    async def recorded() -> tuple[int, list[tuple[Any, ...]]]:
        async with sessions() as s:
            row = await s.get(Job, job_id, populate_existing=True)
            assert row is not None
            events = await s.execute(
                select(
                    JobEvent.attempt,
                    JobEvent.reason,
                    JobEvent.step,
                    JobEvent.worker,
                    JobEvent.checkpoints,
                    JobEvent.at,
                )
                .where(JobEvent.job_id == job_id, JobEvent.kind == "checkpoint")
                .order_by(JobEvent.id)
            )
            return row.checkpoints, [tuple(e) for e in events]

    saved_at = time.time() - 30
    await write(1, "saved", 10)
    # attempt 1 saved step 30 too, and was killed before its record
    await attempt(2)
    await write(2, "resumed", 30, progress.SavedBy(1, "w1", saved_at))
    count, events = await recorded()
    assert count == 2
    assert [e[:5] for e in events] == [
        (1, "saved", 10, "w1", 1),
        (1, "saved", 30, "w1", 2),  # the lost save, before the resume that found it
        (2, "resumed", 30, "w2", 2),
    ]
    assert abs(events[1][5].timestamp() - saved_at) < 0.01  # at its own time
    # attempt 2 is killed before it saves: attempt 3 resumes from the same, recorded, save
    await attempt(3)
    await write(3, "resumed", 30, progress.SavedBy(1, "w1", saved_at))
    # attempt 3 resumes from a file that does not say who saved it: nothing to add
    await attempt(4)
    await write(4, "resumed", 50)
    count, events = await recorded()
    assert count == 2
    assert [e[:3] for e in events[3:]] == [(3, "resumed", 30), (4, "resumed", 50)]
    # a stale attempt's resume writes nothing, lost save or not
    await write(3, "resumed", 70, progress.SavedBy(2, "w2", saved_at))
    assert await recorded() == (count, events)


async def test_a_checkpoint_event_waits_out_a_database_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checkpoint's count and event written while PostgreSQL restarts are written once it
    answers again, not dropped (the chaos run once lost a resume this way)."""
    from contextlib import asynccontextmanager

    from sqlalchemy.exc import OperationalError

    from services.worker import app, progress
    from shared.jobs.store import Claim

    refusals = 3
    written: list[tuple[uuid.UUID, int, str, int]] = []

    @asynccontextmanager
    async def connection(_engine: object) -> Any:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise OperationalError("connect", None, ConnectionRefusedError(111, "refused"))
        yield SimpleNamespace(execute=None)

    async def write(
        _execute: object,
        job_id: uuid.UUID,
        attempt: int,
        *,
        event: str,
        step: int,
        worker: str,
        saved_by: object = None,
    ) -> None:
        written.append((job_id, attempt, event, step))

    monkeypatch.setattr(app, "raw_connection", connection)
    monkeypatch.setattr(progress, "write_checkpoint", write)
    rt = SimpleNamespace(
        res=SimpleNamespace(engine=None), settings=SimpleNamespace(name="w", lease_s=30.0)
    )
    claim = Claim(uuid.uuid4(), uuid.uuid4(), 2, "stencil2d", {}, {}, {}, 600, "local", 1)
    await app.WorkerRuntime._write_checkpoint(cast(Any, rt), claim, "resumed", 40, None)
    assert refusals == 0
    assert written == [(claim.job_id, 2, "resumed", 40)]


async def test_a_checkpoint_event_gives_up_after_twice_the_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database away for longer than twice the lease: the frame is dropped with a warning
    and the attempt's record is not held up any longer."""
    from contextlib import asynccontextmanager

    from sqlalchemy.exc import OperationalError

    from services.worker import app
    from shared.jobs.store import Claim

    tries = 0

    @asynccontextmanager
    async def connection(_engine: object) -> Any:
        nonlocal tries
        tries += 1
        raise OperationalError("connect", None, ConnectionRefusedError(111, "refused"))
        yield  # an async generator

    monkeypatch.setattr(app, "raw_connection", connection)
    rt = SimpleNamespace(
        res=SimpleNamespace(engine=None), settings=SimpleNamespace(name="w", lease_s=0.2)
    )
    claim = Claim(uuid.uuid4(), uuid.uuid4(), 1, "stencil2d", {}, {}, {}, 600, "local", 1)
    await asyncio.wait_for(
        app.WorkerRuntime._write_checkpoint(cast(Any, rt), claim, "saved", 10, None), timeout=5
    )
    assert tries >= 2
