"""Runs kernels in a warm pool of child processes, one job per process at a time.

Each pool process (``services.worker.child``) is a direct child of the worker, started with
numba's cache folder and thread count in its environment; it warms every kernel (from the
on-disk cache) before it says ``ready``: interpreter, NumPy and numba imports, then the
warming, about a second with a warm cache and many with a cold one (docs/BENCHMARKS.md).
A job is one request frame and one reply frame over the process's pipes (``protocol``).
A batch (``run_batch``: an array chunk's elements, which read and write no datasets) is one
request and one reply frame per item, in order, then ``batch_done``; each item has its own
timeout, and an item that times out or crashes loses its process while the remaining items
go on in another one.

Stopping a job means killing its process (SIGKILL): on ``timeout_s`` (outcome ``TIMED_OUT``)
and on cancellation of the calling task (``CancelledError`` propagates), the process is
killed at once, its temporary output files removed, and a fresh process started in the
background to take its place. A process that dies by itself (segfault, killed from outside)
gives the outcome ``CRASHED`` and is replaced the same way; the worker lives on.

Memory: each process lets a job allocate ``memory_limit_bytes`` beyond what it holds when
warm (``child``); a job that needs more ends ``FAILED`` (not retried) with a "memory limit
exceeded" reason, and its process is replaced. Results: a result whose JSON is larger than
``result_inline_max_bytes`` comes back as a file (``Outcome.result_file``) at the request's
``result_path``.

CPU seconds per attempt: measured in the pool process (``time.process_time``, all its
threads) when the job ends there. Before a kill, the process' total from ``/proc/<pid>/stat``
(clock ticks) less its total at the end of its previous job, which every reply carries
(``cpu_total``), so a job that ends normally costs no ``/proc`` read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from services.worker.checkpoint import RELEASE_SIGNAL
from services.worker.protocol import encode, read_frame_async, temp_path
from shared.logging import get_logger

log = get_logger(__name__)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Status(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # the kernel refused or raised: ``retryable`` says whose fault
    CRASHED = "CRASHED"  # the process died under the job: retryable
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"  # stopped on request while it ran (an array's cancel)
    RELEASED = "RELEASED"  # checkpointed and stopped on the worker's request (a drain)


@dataclass
class Usage:
    """What an attempt used; filled in on every path, cancellation included."""

    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


@dataclass(frozen=True)
class Outcome:
    status: Status
    usage: Usage
    result: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = False
    result_file: ResultFile | None = None  # a result too large to come back inline
    checkpoints: int = 0  # checkpoints the attempt wrote
    resumed_from: int | None = None  # the step of the checkpoint it started from
    released_at: int | None = None  # RELEASED: the step of its last checkpoint


@dataclass(frozen=True)
class ResultFile:
    """A job's result (its JSON) written to a file by the pool process."""

    path: str
    size: int
    checksum: str


@dataclass(frozen=True)
class Request:
    kernel: str
    device: str
    params: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # name -> local path
    outputs: dict[str, str] = field(default_factory=dict)
    result_path: str | None = None  # where a result too large to come back inline goes
    # ``{"folder", "interval_s", "max_bytes", "attempt", "worker"}``: where and how often it
    # checkpoints, and who saves (written into each file)
    checkpoint: dict[str, Any] | None = None


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch: an array element, which reads and writes no datasets."""

    index: int
    params: dict[str, Any]


OnOutcome = Callable[[int, Outcome], None]


@dataclass
class _BatchProgress:
    """Where a batch on one process stands: when its last item ended (its next item's
    timeout counts from there)."""

    since: float
    ended: bool = False  # batch_done received
    fatal: bool = False  # an item ran out of memory: the process exits after its reply


@dataclass(frozen=True)
class PoolConfig:
    processes: int
    cache_dir: Path
    threads: int = 1  # numba and BLAS threads of each pool process
    device: str = "cpu"  # the kernels warmed at start
    warm: bool = True
    cuda_simulator: bool = False
    memory_limit_bytes: int = 0  # what a job may allocate (see ``child``); 0: no limit
    result_inline_max_bytes: int = 0  # larger results come back as a file; 0: all inline
    start_timeout_s: float = 600.0  # a cold start compiles every kernel
    extra_env: Mapping[str, str] = field(default_factory=dict)


# frames a pool process sends during a job, before its reply
FRAMES = frozenset({"progress", "checkpoint"})


class PoolError(RuntimeError):
    """A pool process could not be started."""


def child_env(config: PoolConfig) -> dict[str, str]:
    threads = str(config.threads)
    env = {
        # OpenBLAS threads spin for ~2^28 cycles after each call, stealing the cores from
        # the next job's numba threads (n-body runs at half speed after a dgemm); 2^4
        "OPENBLAS_THREAD_TIMEOUT": "4",
        **os.environ,
        "NUMBA_CACHE_DIR": str(config.cache_dir),
        "NUMBA_NUM_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "STRATUS_POOL_THREADS": threads,
        "STRATUS_POOL_DEVICE": config.device,
        "STRATUS_POOL_WARM": "1" if config.warm else "0",
        "STRATUS_POOL_PARENT": str(os.getpid()),
        "STRATUS_POOL_JOB_MEMORY_BYTES": str(config.memory_limit_bytes),
        "STRATUS_POOL_RESULT_INLINE_MAX_BYTES": str(config.result_inline_max_bytes),
    }
    if config.cuda_simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env.update(config.extra_env)
    return env


def exit_reason(code: int | None) -> str:
    if code is None or code == 0:
        return "the kernel's process stopped answering"
    if code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            return f"the kernel's process was killed ({name}: out of memory?)"
        return f"the kernel's process crashed ({name})"
    return f"the kernel's process exited with status {code}"


class PoolProcess:
    def __init__(self, proc: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.devices: list[str] = list(ready.get("devices", ["cpu"]))
        self.warm_s = float(ready.get("warm_s", 0.0))
        self.cpu_total = float(ready.get("cpu_total", 0.0))  # at the end of its last reply

    @classmethod
    async def start(cls, config: PoolConfig) -> PoolProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.worker.child",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=child_env(config),
        )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(config.start_timeout_s):
                ready = await read_frame_async(proc.stdout)
        except (asyncio.IncompleteReadError, TimeoutError) as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
            raise PoolError(f"a pool process failed to start: {exit_reason(code)}") from exc
        return cls(proc, ready)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def call(
        self,
        request: Request,
        on_progress: Callable[[float], None] | None = None,
        on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run ``request``; its progress frames go to ``on_progress`` as they come, its
        checkpoint frames (saved, resumed) to ``on_checkpoint``."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        message = {
            "kernel": request.kernel,
            "device": request.device,
            "params": request.params,
            "inputs": request.inputs,
            "outputs": request.outputs,
            "result_path": request.result_path,
            "checkpoint": request.checkpoint,
        }
        self.proc.stdin.write(encode(message))
        await self.proc.stdin.drain()
        while (reply := await read_frame_async(self.proc.stdout)).get("type") in FRAMES:
            if reply["type"] == "progress" and on_progress is not None:
                on_progress(float(reply["value"]))
            elif reply["type"] == "checkpoint" and on_checkpoint is not None:
                on_checkpoint(reply)
        self.cpu_total = float(reply.get("cpu_total", self.cpu_total))
        return reply

    async def call_batch(self, kernel: str, device: str, items: Sequence[BatchItem]) -> None:
        """Send a batch request; its replies are read by ``KernelRunner.run_batch``."""
        assert self.proc.stdin is not None
        message = {
            "type": "batch",
            "kernel": kernel,
            "device": device,
            "items": [{"index": item.index, "params": item.params} for item in items],
        }
        self.proc.stdin.write(encode(message))
        await self.proc.stdin.drain()

    async def send_stop(self) -> None:
        """Ask the batch it runs to stop after its current item."""
        if self.proc.stdin is None or self.proc.stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError):
            self.proc.stdin.write(encode({"type": "stop"}))
            await self.proc.stdin.drain()

    def cpu_seconds(self) -> float:
        """CPU time of the process so far (user + system, all threads), 0 once it is gone."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime

    def release(self) -> None:
        """Ask the job it runs to checkpoint after its block and stop (``checkpoint``)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, RELEASE_SIGNAL)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # lets asyncio release the transport once the process exits

    async def stop(self, grace_s: float = 2.0) -> None:
        """Close its stdin (it exits after the job it runs), kill it after ``grace_s``."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(grace_s):
                await self.proc.wait()
        except TimeoutError:
            self.kill()
            await self.proc.wait()


class KernelRunner:
    """A pool of ``config.processes`` warm pool processes."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.devices: list[str] = []
        self._idle: asyncio.Queue[PoolProcess] = asyncio.Queue()
        self._procs: set[PoolProcess] = set()
        self._respawns: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Start every process and wait until each is warm. The first one starts alone: on
        a cold cache it compiles every kernel, and the others then load them from the cache."""
        self.config.cache_dir.mkdir(parents=True, exist_ok=True)
        first = await PoolProcess.start(self.config)
        self._add(first)
        rest = [PoolProcess.start(self.config) for _ in range(self.config.processes - 1)]
        for proc in await asyncio.gather(*rest):
            self._add(proc)
        self.devices = first.devices
        log.info("kernel_pool_started", processes=len(self._procs), warm_s=round(first.warm_s, 3))

    def _add(self, proc: PoolProcess) -> None:
        self._procs.add(proc)
        self._idle.put_nowait(proc)

    async def _acquire(self) -> PoolProcess:
        while True:
            proc = await self._idle.get()
            if proc.alive:
                return proc
            self._replace(proc, None)  # died while idle (killed from outside)

    async def run(
        self,
        request: Request,
        *,
        timeout_s: float | None = None,
        usage: Usage | None = None,
        on_progress: Callable[[float], None] | None = None,
        on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
        release: asyncio.Event | None = None,
    ) -> Outcome:
        """Run one job (its kernel's progress reports go to ``on_progress``, its checkpoint
        reports to ``on_checkpoint``). Setting ``release`` asks a checkpointing job to save
        its state and stop (``Status.RELEASED``). Cancelling the calling task kills the
        job's process (and re-raises)."""
        usage = usage if usage is not None else Usage()
        proc = await self._acquire()
        keep = False
        cpu0, wall0 = proc.cpu_total, time.perf_counter()
        watcher = asyncio.ensure_future(_release_on(release, proc)) if release else None
        try:
            async with asyncio.timeout(timeout_s):
                reply = await proc.call(request, on_progress, on_checkpoint)
            keep = not reply.get("fatal")
            usage.cpu_seconds = float(reply["cpu_seconds"])
            usage.wall_seconds = time.perf_counter() - wall0
            return _outcome(reply, usage)
        except TimeoutError:
            self._charge(proc, cpu0, wall0, usage)
            error = f"exceeded timeout_s={timeout_s:g}: the kernel's process was stopped"
            return Outcome(Status.TIMED_OUT, usage, error=error)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._charge(proc, cpu0, wall0, usage)
            code = await proc.proc.wait()
            log.warning("kernel_process_died", kernel=request.kernel, pid=proc.pid, code=code)
            return Outcome(Status.CRASHED, usage, error=exit_reason(code), retryable=True)
        except asyncio.CancelledError:
            self._charge(proc, cpu0, wall0, usage)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            if keep:
                self._idle.put_nowait(proc)
            else:
                self._replace(proc, request)

    async def run_batch(
        self,
        kernel: str,
        items: Sequence[BatchItem],
        *,
        on_outcome: OnOutcome,
        stop: asyncio.Event,
        timeout_s: float | None = None,
        device: str | None = None,
        abort: asyncio.Event | None = None,
    ) -> list[BatchItem]:
        """Run ``items`` one after another in warm processes, calling ``on_outcome(index,
        outcome)`` as each ends; return the items not run (``stop`` was set: the item that
        runs then finishes first). ``timeout_s`` is per item: an item over it is
        ``TIMED_OUT``, its process killed, and the rest go on in another process; so do
        they after a crash (that item ``CRASHED``, retryable) or an item out of memory.
        ``abort`` set as well kills the item that runs (it ends ``CANCELLED``, charged with what
        it used) instead of letting it finish. Cancelling the calling task kills the process
        that runs the batch (and re-raises)."""
        left = deque(items)
        while left and not stop.is_set():
            proc = await self._acquire()
            await self._run_some(
                proc, kernel, device or self.config.device, left, timeout_s, on_outcome, stop, abort
            )
        return list(left)

    async def _run_some(
        self,
        proc: PoolProcess,
        kernel: str,
        device: str,
        left: deque[BatchItem],
        timeout_s: float | None,
        on_outcome: OnOutcome,
        stop: asyncio.Event,
        abort: asyncio.Event | None = None,
    ) -> None:
        """One batch request on ``proc`` for the items ``left``, which loses each item as it
        ends, until the batch ends, stops, or loses its process."""
        keep = False
        progress = _BatchProgress(time.perf_counter())
        reader: asyncio.Task[None] | None = None
        stopped = asyncio.ensure_future(stop.wait())
        aborted = asyncio.ensure_future((abort or asyncio.Event()).wait())
        try:
            await proc.call_batch(kernel, device, left)
            reader = asyncio.ensure_future(self._read_batch(proc, left, on_outcome, progress))
            waiting: set[asyncio.Future[Any]] = {reader, stopped, aborted}
            while not reader.done():
                if aborted.done():
                    reader.cancel()
                    self._lost(
                        proc,
                        left,
                        progress,
                        on_outcome,
                        Status.CANCELLED,
                        "cancelled while running",
                    )
                    return
                wait_s = (
                    None if timeout_s is None else progress.since + timeout_s - time.perf_counter()
                )
                if wait_s is not None and wait_s <= 0:
                    reader.cancel()
                    self._lost(
                        proc,
                        left,
                        progress,
                        on_outcome,
                        Status.TIMED_OUT,
                        f"exceeded timeout_s={timeout_s:g}: the kernel's process was stopped",
                    )
                    return
                done, _ = await asyncio.wait(
                    waiting, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
                )
                if stopped in done:
                    waiting.discard(stopped)
                    await proc.send_stop()
            try:
                reader.result()
            except (asyncio.IncompleteReadError, ConnectionError):
                code = await proc.proc.wait()
                log.warning("kernel_process_died", kernel=kernel, pid=proc.pid, code=code)
                self._lost(proc, left, progress, on_outcome, Status.CRASHED, exit_reason(code))
                return
            keep = progress.ended and not progress.fatal
        except (asyncio.IncompleteReadError, ConnectionError):  # gone before the request
            code = await proc.proc.wait()
            self._lost(proc, left, progress, on_outcome, Status.CRASHED, exit_reason(code))
        finally:
            stopped.cancel()
            aborted.cancel()
            if reader is not None and not reader.done():
                reader.cancel()
            if keep:
                self._idle.put_nowait(proc)
            else:
                self._replace(proc, None)

    async def _read_batch(
        self,
        proc: PoolProcess,
        left: deque[BatchItem],
        on_outcome: OnOutcome,
        progress: _BatchProgress,
    ) -> None:
        """Read the batch's frames until ``batch_done`` (or an item's memory error)."""
        assert proc.proc.stdout is not None
        stdout = proc.proc.stdout
        while True:
            reply = await read_frame_async(stdout)
            kind = reply.get("type")
            if kind == "batch_done":
                progress.ended = True
                return
            if kind not in ("done", "failed"):
                continue  # a frame this reader does not use (a progress report)
            progress.since = time.perf_counter()
            proc.cpu_total = float(reply.get("cpu_total", proc.cpu_total))
            index = int(reply["index"])
            if left and left[0].index == index:
                left.popleft()
            usage = Usage(float(reply["cpu_seconds"]), float(reply["wall_seconds"]))
            on_outcome(index, _outcome(reply, usage))
            if reply.get("fatal"):
                progress.fatal = True
                return

    def _lost(
        self,
        proc: PoolProcess,
        left: deque[BatchItem],
        progress: _BatchProgress,
        on_outcome: OnOutcome,
        status: Status,
        error: str,
    ) -> None:
        """The process running ``left[0]`` stopped (killed for its timeout, or crashed):
        that item ends ``status``; the caller replaces the process."""
        usage = Usage()
        self._charge(proc, proc.cpu_total, progress.since, usage)  # before the kill
        proc.kill()
        if not left:
            return
        item = left.popleft()
        on_outcome(
            item.index, Outcome(status, usage, error=error, retryable=status is Status.CRASHED)
        )

    @staticmethod
    def _charge(proc: PoolProcess, cpu0: float, wall0: float, usage: Usage) -> None:
        usage.cpu_seconds = max(0.0, proc.cpu_seconds() - cpu0)
        usage.wall_seconds = time.perf_counter() - wall0

    def _replace(self, proc: PoolProcess, request: Request | None) -> None:
        """Kill ``proc`` now, remove what it left, and start its successor in the background."""
        proc.kill()
        self._procs.discard(proc)
        left = [*request.outputs.values(), request.result_path] if request else []
        for path in left:
            if path is not None:
                temp_path(path, proc.pid).unlink(missing_ok=True)
        if self._closing:
            return
        task = asyncio.create_task(self._respawn(proc), name=f"pool-respawn-{proc.pid}")
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, old: PoolProcess) -> None:
        await old.proc.wait()
        delay = 0.5
        while not self._closing:
            try:
                self._add(await PoolProcess.start(self.config))
                return
            except (PoolError, OSError) as exc:
                log.error("kernel_pool_respawn_failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def wait_idle(self) -> None:
        """Wait until every replacement process has started (tests, benchmarks)."""
        while self._respawns:
            await asyncio.gather(*self._respawns, return_exceptions=True)

    @property
    def size(self) -> int:
        """Processes alive now (busy, idle or starting replacements not counted)."""
        return sum(1 for p in self._procs if p.alive)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._respawns):
            task.cancel()
        await asyncio.gather(*self._respawns, return_exceptions=True)
        procs = list(self._procs)
        self._procs.clear()
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)


async def _release_on(release: asyncio.Event, proc: PoolProcess) -> None:
    await release.wait()
    proc.release()


def _outcome(reply: dict[str, Any], usage: Usage) -> Outcome:
    outcome = _status(reply, usage)
    if "checkpoints" not in reply:
        return outcome
    resumed = reply.get("resumed_from")
    return dataclasses.replace(
        outcome,
        checkpoints=int(reply["checkpoints"] or 0),
        resumed_from=None if resumed is None else int(resumed),
    )


def _status(reply: dict[str, Any], usage: Usage) -> Outcome:
    if reply.get("type") == "released":
        step = int(reply["step"])
        return Outcome(Status.RELEASED, usage, error=f"checkpointed at {step}", released_at=step)
    if reply.get("type") == "done" and "result_file" in reply:
        file = ResultFile(**reply["result_file"])
        return Outcome(Status.SUCCEEDED, usage, result_file=file)
    if reply.get("type") == "done":
        return Outcome(Status.SUCCEEDED, usage, result=reply.get("result") or {})
    retryable = bool(reply.get("retryable", False))
    return Outcome(Status.FAILED, usage, error=str(reply.get("error")), retryable=retryable)
