"""Array chunks on the worker: claim a chunk, run its elements as one batch in a warm pool
process, record their outcomes set-based (``shared.jobs.chunks``).

A ``ChunkDispatched`` delivery takes one slot, as a job does; the chunk is claimed (one
statement, under a lease) before the delivery is acknowledged. Its elements run one after
another in one pool process (``KernelRunner.run_batch``), each with the array's
``timeout_s``; their outcomes are buffered and recorded by ``record_elements`` (one
statement per flush) when ``FLUSH_ROWS`` are waiting or the oldest has waited ``FLUSH_S``,
and at least every ``POLL_S`` while the chunk runs, outcomes or not, because the flush is
also how the worker learns that the array was cancelled (stop the batch, record the
elements not run CANCELLED) or that the chunk is no longer its own (fenced: stop, drop what
is buffered). The last flush (``last=True``) removes the chunk's row; it is retried while
the database is away, as a job's record is. The heartbeat extends the leases of the chunks
that run (``extend_leases``); a worker shutting down stops its batches, records what ended
and hands the rest back (``hand_back``: QUEUED again, not an attempt used).

Exactly once: a recorded element has its row, and a repeated flush or a later claim skips
it; a worker killed mid-chunk leaves its recorded elements recorded, and the reaper's
re-queue lets the next claim run only the others.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from services.worker.handlers import dispatched_job
from services.worker.runner import BatchItem, KernelRunner, Outcome, Status
from shared import tracing
from shared.db.raw import raw_connection
from shared.events import ChunkDispatched, JobDispatched, UnknownEvent, parse_event
from shared.jobs.chunks import (
    ChunkClaim,
    ElementOutcome,
    Flushed,
    claim_chunk,
    extend_leases,
    hand_back,
    record_elements,
)
from shared.jobs.states import JobState
from shared.logging import get_logger
from shared.messaging import Delivery, Reject

log = get_logger(__name__)

FLUSH_ROWS = 64  # outcomes waiting: flush now
FLUSH_S = 0.2  # the oldest waiting outcome has waited this long: flush now
POLL_S = 0.5  # flush at least this often while a chunk runs (a cancel is seen within it)

STATES = {
    Status.SUCCEEDED: JobState.SUCCEEDED,
    Status.TIMED_OUT: JobState.TIMED_OUT,
    Status.FAILED: JobState.FAILED,
    Status.CRASHED: JobState.FAILED,  # retryable
    Status.CANCELLED: JobState.CANCELLED,
}
CANCELLED_ERROR = "array cancelled before the element ran"


def dispatched_work(delivery: Delivery) -> JobDispatched | ChunkDispatched:
    """What a work queue's delivery asks for: a job, or a chunk of an array's elements."""
    try:
        event = parse_event(delivery.body)
    except UnknownEvent as exc:
        raise Reject(str(exc)) from exc
    if isinstance(event, ChunkDispatched):
        return event
    return dispatched_job(delivery)


def element_outcome(index: int, outcome: Outcome) -> ElementOutcome:
    """How element ``index`` ended, from the pool's outcome (it ended now)."""
    finished = datetime.now(UTC)
    wall = outcome.usage.wall_seconds
    return ElementOutcome(
        index=index,
        state=STATES[outcome.status],
        result=outcome.result,
        error=outcome.error,
        retryable=outcome.retryable,
        cpu_seconds=outcome.usage.cpu_seconds,
        wall_seconds=wall,
        started_at=finished - timedelta(seconds=wall),
        finished_at=finished,
    )


def _element_span(chunk_span: object, array_id: uuid.UUID, ended: ElementOutcome) -> None:
    tracing.span_between(
        "worker.element",
        chunk_span,
        int(ended.started_at.timestamp() * 1e9),
        int(ended.finished_at.timestamp() * 1e9),
        **{"stratus.job_id": f"{array_id}:{ended.index}", "index": ended.index},
        state=ended.state.value,
    )


def cancelled_element(index: int, at: datetime) -> ElementOutcome:
    return ElementOutcome(
        index=index,
        state=JobState.CANCELLED,
        result=None,
        error=CANCELLED_ERROR,
        retryable=False,
        cpu_seconds=0.0,
        wall_seconds=0.0,
        started_at=at,
        finished_at=at,
    )


@dataclass
class ChunkRun:
    """A chunk this worker runs: what stops its batch, and why (stopped for neither reason:
    the worker shuts down, and the elements not run go back)."""

    claim: ChunkClaim
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    abort: asyncio.Event = field(default_factory=asyncio.Event)  # kill the running element too
    cancelled: bool = False  # the array was cancelled: the rest are CANCELLED
    fenced: bool = False  # no longer this worker's chunk: drop what is buffered
    buffer: list[ElementOutcome] = field(default_factory=list)
    ended: set[int] = field(default_factory=set)  # the indices that have an outcome
    since: float | None = None  # when the oldest buffered outcome arrived (loop time)


class Chunks:
    """The chunks one worker claims and runs."""

    def __init__(
        self,
        engine: AsyncEngine,
        runner: KernelRunner,
        *,
        worker: str,
        lease_s: float,
        flush_rows: int = FLUSH_ROWS,
        flush_s: float = FLUSH_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.engine = engine
        self.runner = runner
        self.worker = worker
        self.lease_s = lease_s
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.poll_s = poll_s
        self.running: dict[uuid.UUID, ChunkRun] = {}
        self.stopping = False  # the worker shuts down: a chunk claimed now goes back at once

    async def claim(self, chunk_id: uuid.UUID) -> ChunkClaim | None:
        """The chunk, claimed under a lease and committed; None when it is not ours to run."""
        async with raw_connection(self.engine) as conn:
            return await claim_chunk(conn.fetch, chunk_id, worker=self.worker, lease_s=self.lease_s)

    async def extend(self) -> None:
        """Extend the leases of the chunks that run here (the heartbeat)."""
        if self.running:
            async with raw_connection(self.engine) as conn:
                await extend_leases(
                    conn.fetch, list(self.running), worker=self.worker, lease_s=self.lease_s
                )

    def hand_back_all(self) -> None:
        """The worker shuts down: every batch stops after its running element."""
        self.stopping = True
        for run in self.running.values():
            run.stop.set()

    def cancel_array(self, array_id: uuid.UUID) -> bool:
        """The array was cancelled (its control message): stop its chunks here."""
        found = False
        for run in self.running.values():
            if run.claim.array_id == array_id:
                run.cancelled = True
                run.stop.set()
                run.abort.set()
                found = True
        return found

    async def run(self, claim: ChunkClaim) -> None:
        """Run the claimed chunk's elements and record them (see the module docstring)."""
        run = ChunkRun(claim)
        if self.stopping:
            run.stop.set()
        self.running[claim.chunk_id] = run
        try:
            left = await self._run_batch(run)
            await self._finish(run, left)
        except Exception as exc:  # a fault of this process: the chunk's lease runs out and
            # the reaper re-queues it, counting the attempt
            log.error("chunk_run_failed", chunk_id=str(claim.chunk_id), error=repr(exc))
        finally:
            self.running.pop(claim.chunk_id, None)

    async def _run_batch(self, run: ChunkRun) -> list[BatchItem]:
        """The batch, flushed as it goes; the items it did not run."""
        claim = run.claim
        loop = asyncio.get_running_loop()
        full = asyncio.Event()

        chunk_span = tracing.current_span()  # the chunk's (``worker.chunk``), if tracing is on

        def on_outcome(index: int, outcome: Outcome) -> None:
            if not run.buffer:
                run.since = loop.time()
            ended = element_outcome(index, outcome)
            run.buffer.append(ended)
            if chunk_span is not None:  # a span per element, under its chunk's
                _element_span(chunk_span, claim.array_id, ended)
            run.ended.add(index)
            if len(run.buffer) >= self.flush_rows:
                full.set()

        items = [BatchItem(e.index, e.params) for e in claim.elements]
        batch = asyncio.create_task(
            self.runner.run_batch(
                claim.kernel,
                items,
                on_outcome=on_outcome,
                stop=run.stop,
                abort=run.abort,
                timeout_s=claim.timeout_s,
                device=claim.device,
            ),
            name=f"chunk-{claim.chunk_id}",
        )
        waiting = asyncio.ensure_future(full.wait())
        polled = loop.time()
        held = 0.0  # after a flush the database did not answer: no other try before this
        try:
            while not batch.done():
                due = polled + self.poll_s
                if run.since is not None:
                    due = min(due, run.since + self.flush_s)
                if full.is_set():
                    due = polled
                due = max(due, held)
                if loop.time() >= due:
                    full.clear()
                    polled = loop.time()
                    if not run.fenced and await self._flush(run, last=False) is None:
                        held = loop.time() + self.poll_s  # the outcomes wait in the buffer
                    continue
                if waiting.done():
                    waiting = asyncio.ensure_future(full.wait())
                wake = {batch} if full.is_set() else {batch, waiting}
                await asyncio.wait(
                    wake, timeout=due - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
            return batch.result()
        except asyncio.CancelledError:
            # the worker's shutdown ran out of grace: the batch's process is killed; what
            # ended is recorded and the rest handed back
            batch.cancel()
            await asyncio.gather(batch, return_exceptions=True)
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return [item for item in items if item.index not in run.ended]
        finally:
            waiting.cancel()

    async def _flush(self, run: ChunkRun, *, last: bool) -> Flushed | None:
        """One try at recording what is buffered; None when the database did not answer
        (the outcomes stay buffered). A cancel or a lost chunk stops the batch."""
        outcomes = list(run.buffer)
        try:
            async with raw_connection(self.engine) as conn:
                flushed = await record_elements(
                    conn.fetch, run.claim, outcomes, worker=self.worker, last=last
                )
        except Exception as exc:
            log.warning("chunk_flush_failed", chunk_id=str(run.claim.chunk_id), error=repr(exc))
            return None
        del run.buffer[: len(outcomes)]
        run.since = None
        if flushed.fenced:
            run.fenced = True
            run.buffer.clear()
            run.stop.set()
            log.warning("chunk_fenced", chunk_id=str(run.claim.chunk_id))
        elif flushed.cancelled and not run.cancelled:
            run.cancelled = True
            run.stop.set()
            run.abort.set()
        return flushed

    async def _flush_retrying(self, run: ChunkRun, *, last: bool) -> bool:
        """``_flush`` until it answers, for at most twice the lease (as a job's record)."""
        delay = 0.1
        deadline = asyncio.get_running_loop().time() + self.lease_s * 2
        while await self._flush(run, last=last) is None:
            if asyncio.get_running_loop().time() > deadline:
                log.error("chunk_record_gave_up", chunk_id=str(run.claim.chunk_id))
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        return True

    async def _finish(self, run: ChunkRun, left: list[BatchItem]) -> None:
        """After the batch: record the rest and remove the chunk, or hand it back."""
        claim = run.claim
        if run.fenced:
            return
        if left and not run.cancelled:  # the worker shuts down
            if run.buffer and not await self._flush_retrying(run, last=False):
                return
            if not run.fenced:
                await self._hand_back(claim)
            return
        if left:  # the array was cancelled: the elements not run end CANCELLED
            now = datetime.now(UTC)
            run.buffer.extend(cancelled_element(item.index, now) for item in left)
        if await self._flush_retrying(run, last=True) and not run.fenced:
            log.info(
                "chunk_recorded",
                chunk_id=str(claim.chunk_id),
                attempt=claim.attempt,
                elements=len(claim.elements),
                cancelled=len(left),
            )

    async def _hand_back(self, claim: ChunkClaim) -> None:
        try:
            async with raw_connection(self.engine) as conn:
                await hand_back(conn.fetch, claim, worker=self.worker)
        except Exception as exc:  # the lease runs out and the reaper re-queues the chunk
            log.warning("chunk_hand_back_failed", chunk_id=str(claim.chunk_id), error=repr(exc))
            return
        log.info("chunk_handed_back", chunk_id=str(claim.chunk_id), attempt=claim.attempt)
