"""Worker composition root: consume dispatches, run kernels in a warm process pool,
heartbeat, and hand jobs back on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI

from services.worker import checkpoint as checkpoints
from services.worker import progress, service
from services.worker.batch import Claims, Records, Writes
from services.worker.chunks import Chunks, dispatched_work
from services.worker.datasets import (
    SCRATCH_TIER,
    AttemptFiles,
    DatasetError,
    attempt_files,
    check_output_names,
    input_paths,
    missing_files,
)
from services.worker.handlers import Running, cancelled_job, preempted_job, take_slot
from services.worker.results import pointer
from services.worker.runner import KernelRunner, PoolConfig, Request, Usage
from services.worker.service import Recorded, report_for
from services.worker.settings import WorkerSettings
from services.worker.stageout import StagedOutput, abort_staged, stage_out
from shared import tracing
from shared.db.engine import is_connectivity_error, transaction
from shared.db.raw import raw_connection
from shared.errors import QuotaExceeded, StratusError
from shared.events import ChunkDispatched
from shared.jobs.chunks import ChunkClaim
from shared.jobs.proposals import Report
from shared.jobs.states import FINAL, JobState
from shared.jobs.store import Claim
from shared.logging import configure_logging, get_logger
from shared.loops import periodic
from shared.messaging import Delivery
from shared.messaging.topology import WORK_QUEUES, control_queue
from shared.problems import install_problem_handlers
from shared.runtime import Resources, close_resources, open_resources
from shared.startup import start_in_background
from shared.storage.catalog import remove_unlisted
from shared.storage.registry import Storage
from shared.telemetry import health_router

log = get_logger(__name__)

_C = TypeVar("_C")  # what a claim gives: a job's or a chunk's

# A full worker pauses its work queue only while its recent jobs ran at least this long
# (``WorkerRuntime._pause_when_full``); each job's or chunk's time weighs this much in the
# running average.
PAUSE_MIN_RUN_S = 1.0
RUN_AVERAGE_WEIGHT = 0.2
# While its recent jobs ran less than this on average, a worker claims up to one job per
# slot before a slot is free, and takes twice as many deliveries at once (its prefetch,
# unless ``STRATUS_PREFETCH`` sets it): a claim's round trip and the broker's next delivery
# then overlap the runs instead of leaving the slots idle between short jobs
# (``WorkerRuntime._claims_ahead``).
CLAIM_AHEAD_MAX_RUN_S = 0.1


@dataclasses.dataclass
class _Slot:
    """A job's hold on a slot: taken at its claim, or (claimed ahead) when one frees."""

    held: bool
    waiting: bool = False  # claimed ahead, no slot yet: counted in ``WorkerRuntime.ahead``
    taken_at: float = 0.0  # when it was taken (monotonic)


class WorkerRuntime:
    def __init__(
        self,
        res: Resources,
        settings: WorkerSettings,
        runner: KernelRunner,
        storage: Storage | None = None,
    ) -> None:
        self.res = res
        self.settings = settings
        self.runner = runner
        self.storage = storage or Storage(settings.storage)
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.ahead = 0  # jobs claimed (or being claimed) ahead of a free slot
        self.prefetch = settings.prefetch or settings.concurrency  # the work queue's, now
        self._prefetch_change: asyncio.Task[None] | None = None
        self.running = Running()  # cancellable attempts, by job
        self.jobs: set[asyncio.Task[None]] = set()  # attempts and their records, for shutdown
        self.leased: set[uuid.UUID] = set()  # claimed, not yet recorded: the leases to extend
        self.stopping = False
        # one job's record and the next one's claim commit together (``Writes``)
        writes = Writes(res.engine, worker=settings.name, lease_s=settings.lease_s)
        self.claims = Claims(
            res.engine, res.sessions, worker=settings.name, lease_s=settings.lease_s, writes=writes
        )
        self.records = Records(res.engine, worker=settings.name, writes=writes)
        self.progress = progress.Tracker()  # running jobs' progress and log lines
        self.chunks = Chunks(res.engine, runner, worker=settings.name, lease_s=settings.lease_s)
        self.releases: dict[uuid.UUID, asyncio.Event] = {}  # a drain checkpoints these jobs
        self.preempted: set[uuid.UUID] = set()  # released for a preemption, not a drain
        self._scratch_root: Path | None = None  # the scratch tier's root, resolved
        # each running job's latest checkpoint write (each waits for the one before)
        self.checkpoint_writes: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._work_paused: asyncio.Task[None] | None = None  # see ``_take_work_when_free``
        # how long this worker's recent jobs and chunks held their slot (an exponential
        # average; None before the first): see ``_pause_when_full``
        self.recent_run_s: float | None = None

    async def on_dispatch(self, delivery: Delivery) -> None:
        event = dispatched_work(delivery)
        ahead = (
            not isinstance(event, ChunkDispatched)
            and self.slots.locked()
            and self.ahead < self.settings.concurrency
            and self._claims_ahead()
        )
        if ahead:  # its run waits for a slot (``_run``)
            self.ahead += 1
        else:
            await self.slots.acquire()
        if self.stopping:  # waited for a slot through a shutdown: another worker takes it
            self._give_back(_Slot(held=not ahead, waiting=ahead))
            raise RuntimeError("worker shutting down: job handed back unclaimed")
        if self.slots.locked() and self._work_paused is None and self._pause_when_full():
            # its last free slot: the work queue's next messages go to the workers that have
            # one (the prefetch would hand this one as many more, to wait here for a slot
            # while a worker just started idles)
            self._work_paused = asyncio.get_running_loop().create_task(self._take_work_when_free())
        # When the broker closes the channel of this delivery (a RabbitMQ restart), aiormq
        # cancels this handler. The claim and the start of its run go on in a task of their
        # own, so that a claim that committed always gets its run (the delivery comes back
        # and finds the job taken) instead of a job RUNNING that nothing runs.
        if isinstance(event, ChunkDispatched):
            await asyncio.shield(self._claim_chunk_and_start(event.chunk_id))
            return
        # the job's trace (the message's traceparent), if tracing is on
        slot = _Slot(held=not ahead, waiting=ahead, taken_at=time.monotonic())
        with tracing.received(event.job_id, event.event_id, delivery.traceparent):
            await asyncio.shield(self._claim_and_start(event.job_id, slot))

    def _pause_when_full(self) -> bool:
        """Whether a full worker should pause its work queue: only while its jobs are long
        (or not known yet). Short jobs free a slot within milliseconds, so a message that
        waits here for one is not held back, while pausing and resuming (two broker round
        trips) on every job under a steady load of them cost a sixth of the pipeline's
        throughput and ten times its latency at 100 jobs/s (``bench/pipeline.py``)."""
        return self.recent_run_s is None or self.recent_run_s >= PAUSE_MIN_RUN_S

    def _claims_ahead(self) -> bool:
        """Whether jobs are claimed before a slot is free for them: only while the recent
        ones were short, so that a job claimed ahead waits for a slot a few milliseconds,
        never behind a long job (one that runs long after many short ones holds at most one
        claimed job per slot back that long)."""
        return self.recent_run_s is not None and self.recent_run_s < CLAIM_AHEAD_MAX_RUN_S

    def _ran(self, seconds: float) -> None:
        """A job or chunk held its slot for ``seconds``."""
        last = self.recent_run_s
        step = 0.0 if last is None else RUN_AVERAGE_WEIGHT * (seconds - last)
        self.recent_run_s = seconds if last is None else last + step

    def _adapt_prefetch(self) -> None:
        """Twice the slots' deliveries at once while jobs are claimed ahead, as many as the
        slots otherwise (a long job never holds a message that another worker could run);
        not when ``STRATUS_PREFETCH`` sets it."""
        if self.settings.prefetch is not None or self._prefetch_change is not None:
            return
        wanted = self.settings.concurrency * (2 if self._claims_ahead() else 1)
        if wanted != self.prefetch and not self.stopping:
            self._prefetch_change = asyncio.get_running_loop().create_task(
                self._set_prefetch(wanted)
            )

    async def _set_prefetch(self, prefetch: int) -> None:
        try:
            await self.res.broker.set_prefetch(WORK_QUEUES[self.settings.device], prefetch)
            self.prefetch = prefetch
        except Exception as exc:  # the broker away: the next job's end tries again
            if not self.stopping:  # a shutdown closed it meanwhile: nothing to change
                log.warning("prefetch_change_failed", prefetch=prefetch, error=repr(exc))
        finally:
            self._prefetch_change = None

    def _give_back(self, slot: _Slot) -> None:
        """What ``slot`` holds, a slot or a place among the jobs claimed ahead."""
        if slot.held:
            slot.held = False
            self.slots.release()
        if slot.waiting:
            slot.waiting = False
            self.ahead -= 1

    async def _take_work_when_free(self) -> None:
        """While every slot is taken: the work queue's consumer paused until one is free
        (after the deliveries that already wait for one), then taking work again."""
        queue = WORK_QUEUES[self.settings.device]
        try:
            while self.slots.locked() and not self.stopping:
                try:
                    await self.res.broker.pause(queue)
                except Exception as exc:  # not paused: nothing to resume
                    log.warning("work_pause_failed", error=repr(exc))
                    return
                await self.slots.acquire()
                self.slots.release()
                while not self.stopping:
                    try:
                        await self.res.broker.resume(queue)
                        break
                    except Exception as exc:  # the broker away: once it is back
                        log.warning("work_resume_failed", error=repr(exc))
                        await asyncio.sleep(1.0)
                # deliveries made as it resumed may have taken the slots again: the loop
        finally:
            self._work_paused = None

    async def _claim_and_start(self, job_id: uuid.UUID, slot: _Slot) -> None:
        """Claim the job for the slot taken for it (or to come: ``slot.waiting``) and start
        its run, or give the slot back."""
        with tracing.span("worker.claim", job_id=job_id, worker=self.settings.name):
            claim = await self._claimed(self.claims.claim(job_id), slot)
            if claim is None:
                return
            self.leased.add(claim.job_id)  # its lease is extended by the heartbeat from now on
            # the run's task starts under the claim's span (its spans and log lines are in it)
            task = asyncio.create_task(self._run(claim, slot), name=f"job-{claim.job_id}")
        self.running.tasks[claim.job_id] = (claim, task)
        self.jobs.add(task)
        task.add_done_callback(self.jobs.discard)

    async def _claimed(self, claiming: Awaitable[_C | None], slot: _Slot) -> _C | None:
        """The claim, or None with what ``slot`` holds given back (also when the claim
        raises)."""
        try:
            claim = await claiming
        except BaseException:
            self._give_back(slot)
            raise
        if claim is None:
            self._give_back(slot)
        return claim

    async def _claim_chunk_and_start(self, chunk_id: uuid.UUID) -> None:
        """Claim the chunk for the slot taken for it and start its run, or give the slot
        back (``services.worker.chunks``)."""
        claim = await self._claimed(self.chunks.claim(chunk_id), _Slot(held=True))
        if claim is None:
            return
        task = asyncio.create_task(self._run_chunk(claim), name=f"chunk-{chunk_id}")
        self.jobs.add(task)
        task.add_done_callback(self.jobs.discard)

    async def _run_chunk(self, claim: ChunkClaim) -> None:
        started = time.monotonic()
        try:
            # a span in the array's trace (a child of its submission), if tracing is on
            await tracing.traced_run(
                "worker.chunk", claim.array_id, self.chunks.run(claim), elements=len(claim.elements)
            )
        finally:
            self._ran(time.monotonic() - started)
            self._adapt_prefetch()
            self.slots.release()

    async def on_control(self, delivery: Delivery) -> None:
        preempted = preempted_job(delivery)
        if preempted is not None and preempted in self.releases:
            self.preempted.add(preempted)
            self.releases[preempted].set()
            log.info("job_preempt_requested", job_id=str(preempted))
            return
        job_id = cancelled_job(delivery)
        if job_id is not None and self.running.cancel(job_id):
            log.info("job_cancel_requested", job_id=str(job_id))
        elif job_id is not None and self.chunks.cancel_array(job_id):
            log.info("array_cancel_requested", array_id=str(job_id))

    async def _run(self, claim: Claim, slot: _Slot | None = None) -> None:
        """Run the claimed job and record its outcome; ``slot`` is its hold on a slot (by
        default, a slot taken for it now, as ``on_dispatch`` does), given back when the run
        ends."""
        slot = slot or _Slot(held=True, taken_at=time.monotonic())
        files = attempt_files(self.settings.storage, claim)
        staged: dict[str, StagedOutput] = {}
        self.progress.start(claim.job_id, claim.tenant_id, claim.attempt)
        try:
            report = await self._attempt(claim, files, staged, slot)
            if slot.held:  # it ran: how long it held the slot
                self._ran(time.monotonic() - slot.taken_at)
                self._adapt_prefetch()
            self.progress.end(claim.job_id)
            self.running.tasks.pop(claim.job_id, None)  # a late cancel must not stop the record
            # The kernel is done: its slot takes the next dispatch while this outcome is
            # recorded (the job stays leased, and RUNNING for the scheduler, until then), so
            # that a slot's cycle is its claim and its run, not also the record's round trip.
            self._give_back(slot)
            with tracing.span("worker.finish", state=report.state.value, attempt=claim.attempt):
                accepted = await self._record(claim, report, files, staged)
            # nobody resumes it any more, unless the record was refused: the job then went
            # on without this attempt (its lease was taken), and the next attempt resumes
            # from the file. Most jobs end before their first checkpoint and have no folder:
            # a stat finds that, where a thread's round trip to find it cost 0.16 ms of CPU
            # per job
            if accepted and report.state in FINAL and claim.checkpoint_interval_s > 0:
                folder = self._checkpoints(claim)
                if folder.exists():
                    await asyncio.to_thread(checkpoints.remove, folder)
        finally:
            self.releases.pop(claim.job_id, None)
            self.preempted.discard(claim.job_id)
            self.progress.end(claim.job_id)
            self.running.tasks.pop(claim.job_id, None)
            self.leased.discard(claim.job_id)
            if staged:
                await abort_staged(self.storage, staged)  # what the record did not publish
            if claim.outputs or files.folder.exists():  # the folder of the outputs, a large result
                # what the record did not publish (failed, refused or abandoned attempt)
                await asyncio.to_thread(files.remove)
            self._give_back(slot)

    async def _attempt(
        self,
        claim: Claim,
        files: AttemptFiles,
        staged: dict[str, StagedOutput] | None = None,
        slot: _Slot | None = None,
    ) -> Report:
        """Run the attempt, its kernel writing ``files``; the partial objects of a stage-out
        go into ``staged``. A job claimed ahead (``slot.waiting``) waits for its slot here:
        a cancel meanwhile ends it as one while it runs would, and a drain hands it back
        unrun."""
        usage = Usage()
        try:
            request = self._request(claim, files)
        except DatasetError as exc:
            return Report(JobState.FAILED, error=str(exc), retryable=False)
        release = self.releases.setdefault(claim.job_id, asyncio.Event())
        if self.stopping:
            release.set()  # claimed during a drain: checkpoint (if it has one) and hand back
        try:
            if slot is not None and slot.waiting:
                if not await take_slot(self.slots, release):  # a drain came first
                    self._give_back(slot)
                    return Report(JobState.QUEUED, handed_back="drained")
                slot.held, slot.waiting, slot.taken_at = True, False, time.monotonic()
                self.ahead -= 1
            with tracing.span(f"kernel {claim.kernel}", attempt=claim.attempt):
                outcome = await self.runner.run(
                    request,
                    timeout_s=claim.timeout_s,
                    usage=usage,
                    on_progress=partial(self.progress.progress, claim.job_id),
                    on_checkpoint=partial(self._on_checkpoint, claim),
                    release=release,
                )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the kernel's process is killed; record the attempt
            await self._checkpoints_written(claim)
            return report_for(None, usage, stopping=self.stopping)
        await self._checkpoints_written(claim)  # before the record ends the attempt
        report = report_for(outcome, usage)
        if report.handed_back and claim.job_id in self.preempted:
            report = dataclasses.replace(report, handed_back="preempted")
        if report.state is JobState.SUCCEEDED and files.outputs:
            unwritten = await asyncio.to_thread(missing_files, files.outputs)
            if unwritten:
                error = f"the kernel did not write its output(s) {', '.join(map(repr, unwritten))}"
                report = dataclasses.replace(
                    report, state=JobState.FAILED, error=error, retryable=False
                )
        if report.state is JobState.SUCCEEDED and claim.output_tier != SCRATCH_TIER:
            staged = {} if staged is None else staged
            report = await self._stage_out(claim, files, report, usage, staged)
        if report.state is JobState.SUCCEEDED and outcome.result_file is not None:
            # too large for the job's row: published as a dataset (``results``)
            report = dataclasses.replace(report, result=pointer(claim.job_id, outcome.result_file))
        return report

    async def _stage_out(
        self,
        claim: Claim,
        files: AttemptFiles,
        report: Report,
        usage: Usage,
        staged: dict[str, StagedOutput],
    ) -> Report:
        """Copy the outputs to the job's tier (verified, not published yet: see
        ``services.worker.stageout``); a copy that fails fails the attempt, retryably."""
        line = partial(self.progress.line, claim.job_id)
        line(f"staging out {len(claim.outputs)} output(s) to tier {claim.output_tier!r}")
        t0 = asyncio.get_running_loop().time()
        try:
            await stage_out(
                self.storage,
                tenant_id=claim.tenant_id,
                job_id=claim.job_id,
                attempt=claim.attempt,
                tier=claim.output_tier,
                names=claim.outputs,
                files=files.outputs,
                staged=staged,
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return report_for(None, usage, stopping=self.stopping)
        except Exception as exc:
            error = f"cannot copy the outputs to tier {claim.output_tier!r}: {exc}"
            log.warning("stage_out_failed", job_id=str(claim.job_id), error=str(exc))
            line(error)
            return dataclasses.replace(report, state=JobState.FAILED, error=error, retryable=True)
        line(f"staged out in {asyncio.get_running_loop().time() - t0:.1f} s")
        return report

    def _checkpoints(self, claim: Claim) -> Path:
        """The folder of the job's checkpoint, on the scratch tier (every worker sees it)."""
        if self._scratch_root is None:  # resolved once: a path walk per job was measurable
            root = self.settings.storage.tiers()[SCRATCH_TIER].root
            self._scratch_root = Path(root).resolve()
        return checkpoints.folder_for(self._scratch_root, claim.job_id)

    def _on_checkpoint(self, claim: Claim, event: dict[str, Any]) -> None:
        """A checkpoint frame of the running attempt: a line of the job's log, and (a save or
        a resume) its count and event, written at once."""
        kind, step = event.get("event"), event.get("step")
        if kind in progress.CHECKPOINT_EVENTS and isinstance(step, int):
            previous = self.checkpoint_writes.get(claim.job_id)
            saved_by = progress.SavedBy.of(event.get("saved_by"), before=claim.attempt)
            self.checkpoint_writes[claim.job_id] = asyncio.get_running_loop().create_task(
                self._write_checkpoint(claim, str(kind), step, previous, saved_by)
            )
        if kind == "saved":
            mib, took = event["bytes"] / 2**20, event["seconds"]
            line = f"checkpoint at {step} ({mib:.1f} MiB in {took:.2f} s)"
        elif kind == "resumed":
            line = f"resumed from the checkpoint at {step}"
        else:
            line = f"no checkpoint at {step}: over {event.get('max_bytes')} bytes"
        self.progress.line(claim.job_id, line)

    async def _write_checkpoint(
        self,
        claim: Claim,
        kind: str,
        step: int,
        previous: asyncio.Task[None] | None,
        saved_by: progress.SavedBy | None = None,
    ) -> None:
        """The job's count and event of one checkpoint frame, after the frame before it.
        While the database cannot be reached it tries again, as the record does, for up to
        twice the lease, and the attempt's record waits for it (``_checkpoints_written``): a
        resume left unrecorded would lose the job's history of it (a write cut off after the
        commit may instead count one frame twice). A resume names the attempt that saved the
        file (``saved_by``): its save is recorded then if a kill cut off its own record."""
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        delay = 0.1
        deadline = asyncio.get_running_loop().time() + self.settings.lease_s * 2
        while True:
            try:
                async with raw_connection(self.res.engine) as conn:
                    await progress.write_checkpoint(
                        conn.execute,
                        claim.job_id,
                        claim.attempt,
                        event=kind,
                        step=step,
                        worker=self.settings.name,
                        saved_by=saved_by,
                    )
                return
            except Exception as exc:  # a count and an event: the run goes on without them
                if is_connectivity_error(exc) and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                log.warning("checkpoint_event_lost", job_id=str(claim.job_id), error=str(exc))
                return

    async def _checkpoints_written(self, claim: Claim) -> None:
        """The attempt's checkpoint writes done (its record must come after them: they
        count only while it runs)."""
        last = self.checkpoint_writes.pop(claim.job_id, None)
        if last is not None:
            await asyncio.gather(last, return_exceptions=True)

    def _request(self, claim: Claim, files: AttemptFiles) -> Request:
        """What the pool runs; ``DatasetError`` for a dataset name the job may not use."""
        storage = self.settings.storage
        inputs = input_paths(claim.tenant_id, claim.inputs, storage=storage)
        check_output_names(claim.tenant_id, claim.outputs, storage=storage)
        return Request(
            claim.kernel,
            self.settings.device,
            claim.params,
            {k: str(v) for k, v in inputs.items()},
            {k: str(v) for k, v in files.outputs.items()},
            str(files.result),
            checkpoint={
                "folder": str(self._checkpoints(claim)),
                "interval_s": claim.checkpoint_interval_s,
                "max_bytes": self.settings.checkpoint_max_bytes,
                "attempt": claim.attempt,
                "worker": self.settings.name,
            }
            if claim.checkpoint_interval_s > 0
            else None,
        )

    async def _record(
        self,
        claim: Claim,
        report: Report,
        files: AttemptFiles,
        staged: dict[str, StagedOutput],
    ) -> bool:
        """Make the outcome durable (and publish a successful attempt's outputs in the same
        transaction), retrying while the database is away. If the lease runs out meanwhile,
        the reaper re-queues the job and fencing drops this late report. Outputs that cannot
        be published (a name that clashes with another dataset, over the tenant's
        ``storage_bytes`` quota) fail the job instead, and nothing of them is kept. Whether
        the job took the outcome (False: refused, or given up)."""
        delay = 0.1
        deadline = asyncio.get_running_loop().time() + self.settings.lease_s * 2
        while True:
            try:
                recorded = await self._write_record(claim, report, files, staged)
                break
            except StratusError as exc:  # the outputs' names or size: the job's fault
                error = exc.detail
                if not isinstance(exc, QuotaExceeded):
                    error = f"cannot publish the outputs: {exc.detail}"
                report = dataclasses.replace(
                    report, state=JobState.FAILED, result=None, error=error, retryable=False
                )
            except Exception as exc:
                if asyncio.get_running_loop().time() > deadline:
                    log.error("record_gave_up", job_id=str(claim.job_id), error=type(exc).__name__)
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        log.info(
            "attempt_recorded",
            job_id=str(claim.job_id),
            attempt=claim.attempt,
            state=report.state.value,
            accepted=recorded.accepted,
            outputs=len(recorded.stale),
        )
        if recorded.stale:
            await self._clean_stale(claim, recorded)
        return recorded.accepted

    async def _write_record(
        self,
        claim: Claim,
        report: Report,
        files: AttemptFiles,
        staged: dict[str, StagedOutput],
    ) -> Recorded:
        """One try at the record: an outcome with nothing to publish goes in the records'
        group commit; what that does not apply (retry rules, a superseded attempt, a job
        cancelled meanwhile), and an outcome with datasets to publish, take the general path
        in a session of its own."""
        if not service.publishes(claim, report, files) and await self.records.record(
            service.finish_of(claim, report)
        ):
            return Recorded(True)
        async with transaction(self.res.sessions) as session:
            recorded = await service.record_attempt(
                session=session,
                storage=self.storage,
                claim=claim,
                worker=self.settings.name,
                report=report,
                files=files,
                staged=staged,
                quotas=self.settings.quotas,
                device=self.settings.device,
            )
        # only this path writes events (a retry's job.retry): the statement's wake-up of
        # the scheduler is a NOTIFY, which needs no relay
        self.res.relay.wake()
        return recorded

    async def _clean_stale(self, claim: Claim, recorded: Recorded) -> None:
        """After the commit: remove the copies of the outputs' older versions on other tiers."""
        for name, tiers in recorded.stale.items():
            if not tiers:
                continue
            try:
                async with transaction(self.res.sessions) as session:
                    await remove_unlisted(
                        session=session,
                        storage=self.storage,
                        tenant_id=claim.tenant_id,
                        name=name,
                        tiers=tiers,
                    )
            except Exception as exc:
                log.warning(
                    "output_cleanup_failed", dataset=name, tiers=list(tiers), error=str(exc)
                )

    async def flush_progress(self) -> None:
        """The running jobs' latest progress and the log lines, in one statement."""
        batch = self.progress.take()
        if batch:
            async with raw_connection(self.res.engine) as conn:
                await progress.write(conn.fetch, batch, worker=self.settings.name)

    async def heartbeat(self) -> None:
        async with transaction(self.res.sessions) as session:
            await service.heartbeat(
                session=session,
                worker=self.settings.name,
                device=self.settings.device,
                concurrency=self.settings.concurrency,
                lease_s=self.settings.lease_s,
                stopping=self.stopping,
                leased=set(self.leased),
                run_s=self.recent_run_s,
            )
        await self.chunks.extend()

    async def shutdown(self) -> None:
        """Stop taking work; a job that checkpoints saves its state at once and goes back to
        the queue (``drained``: no retry used); let the others finish for a grace period, hand
        back the rest."""
        self.stopping = True
        if self._work_paused is not None:
            self._work_paused.cancel()
        for release in self.releases.values():
            release.set()
        await self.res.broker.stop_consuming()
        self.chunks.hand_back_all()  # each batch stops after its element: the rest go back
        with contextlib.suppress(Exception):
            await self.heartbeat()
        tasks = list(self.jobs)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def pool_config(settings: WorkerSettings) -> PoolConfig:
    return PoolConfig(
        processes=settings.concurrency,
        cache_dir=settings.numba_cache_dir,
        threads=settings.pool_threads(),
        device=settings.device,
        warm=settings.warm_kernels,
        cuda_simulator=settings.cuda_simulator,
        memory_limit_bytes=settings.job_memory_bytes(),
        result_inline_max_bytes=settings.limits.result_inline_max_bytes,
        start_timeout_s=settings.pool_start_timeout_s,
    )


async def start_runner(settings: WorkerSettings) -> KernelRunner:
    """The warm pool; a cuda worker refuses to start where the pool finds no CUDA."""
    runner = KernelRunner(pool_config(settings))
    await runner.start()
    if settings.device not in runner.devices:
        await runner.close()
        raise RuntimeError(
            f"STRATUS_DEVICE={settings.device} but this machine offers {runner.devices} "
            "(numba.cuda.is_available() is false; STRATUS_CUDA_SIMULATOR=true runs the simulator)"
        )
    return runner


def create_app(settings: WorkerSettings | None = None) -> FastAPI:
    settings = settings or WorkerSettings()
    configure_logging("worker", level=settings.log_level, json=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = await start_runner(settings)
        res: Resources | None = None
        storage: Storage | None = None
        rt: WorkerRuntime | None = None
        # Everything after the runner's start is inside the ``try``: a start that fails half
        # way (the broker gone meanwhile) still closes what it opened, or the process would
        # hang on its open connections and pool processes instead of exiting.
        try:
            # every statement of the worker finds its rows by id: generic plans
            res = await open_resources(settings, name="worker", generic_plans=True)
            app.state.resources = res
            storage = Storage(settings.storage)
            rt = WorkerRuntime(res, settings, runner, storage)
            await rt.heartbeat()
            res.spawn(
                periodic(
                    "heartbeat",
                    rt.heartbeat,
                    interval_s=settings.heartbeat_interval_s,
                    breaker=res.db_breaker,
                ),
                "heartbeat",
            )
            res.spawn(
                periodic(
                    "progress",
                    rt.flush_progress,
                    interval_s=progress.FLUSH_S,
                    breaker=res.db_breaker,
                ),
                "progress",
            )
            await res.broker.consume(
                control_queue(settings.name, ("job.cancelled", "job.preempted")),
                rt.on_control,
                prefetch=16,
            )
            await res.broker.consume(
                WORK_QUEUES[settings.device],
                rt.on_dispatch,
                prefetch=settings.prefetch or settings.concurrency,
            )
            log.info(
                "worker_started",
                worker=settings.name,
                device=settings.device,
                concurrency=settings.concurrency,
            )
            yield
        finally:
            if rt is not None:
                await rt.shutdown()
            if res is not None:
                await close_resources(res)
            if storage is not None:
                await storage.close()
            await runner.close()

    app = FastAPI(title="Stratus worker", lifespan=start_in_background(lifespan))
    install_problem_handlers(app)
    app.include_router(health_router(lambda: app.state.resources.checks()))
    return app
