"""Copy one object between tiers in chunks and verify it end to end.

Chunks not yet done are read from the source and written to the target's partial object
(``Upload``) by ``in_flight`` workers. A verifier follows them in order and hashes what the
target holds: it reads each chunk back from the target where the tier can (directory tiers),
else hashes the bytes that were sent (S3 parts, which S3 checks on receipt), re-reading the
source for chunks done before a restart. The result is the copy's checksum, compared by the
caller with the source's before anything is published.

Between two directories two threads share the work, in order: one copies each missing chunk
in the kernel (``copy_file_range``, no bytes through Python) 2 MiB at a time, the other reads
each piece back from the target right behind it and hashes it (``_Pipe``: the copier stays
within ``LEAD`` of the verifier, so what is read back is still in the last-level cache). Where
a core is free the verification overlaps the copy instead of being a second pass; on a machine
whose cores are all busy the two threads cost little more CPU than one (docs/BENCHMARKS.md,
Datamover). Chunks in flight would only contend for the target file, and a hand-off to the
event loop per chunk costs more than it saves.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.resilience import RetryPolicy
from shared.storage import Storage, Upload
from shared.storage.checksum import Hasher, format_checksum, new_hasher
from shared.storage.tiers import READ_BACK_PIECE, FileTier


class VerificationFailed(Exception):
    """The copy's checksum differs from the source's."""


@dataclass
class CopyJob:
    source: str  # tier names
    target: str
    key: str
    size: int
    chunk_bytes: int
    upload: Upload
    done: dict[int, str | None] = field(default_factory=dict)  # chunk -> part ETag

    @property
    def chunks(self) -> int:
        return -(-self.size // self.chunk_bytes)

    def span(self, index: int) -> tuple[int, int]:
        offset = index * self.chunk_bytes
        return offset, min(self.chunk_bytes, self.size - offset)

    def etags(self) -> list[str | None]:
        return [self.done[i] for i in range(self.chunks)]


OnChunk = Callable[[int, str | None, int], None]


class Throttle:
    """Paces one migration to ``rate`` bytes per second (0: unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def delay(self, nbytes: int) -> float:
        """Seconds to wait after sending ``nbytes`` more."""
        if self.rate <= 0:
            return 0.0
        self.sent += nbytes
        return max(0.0, self.sent / self.rate - (time.monotonic() - self.start))

    async def __call__(self, nbytes: int) -> None:
        ahead = self.delay(nbytes)
        if ahead > 0:
            await asyncio.sleep(ahead)


COPY_PIECE = 2 * 2**20  # copied, then read back at once: still in the last-level cache


LEAD = 4 * COPY_PIECE  # how far the copying thread may run ahead of the verifying one


@dataclass
class _Hashed:
    """How far a directory-to-directory copy is verified: the checksum of its first ``next``
    chunks."""

    hasher: Hasher
    next: int = 0


class _Pipe:
    """Between the copying and the verifying thread of a directory-to-directory copy: the
    target holds the bytes up to ``copied`` (offsets in the object), the verifier has hashed
    them up to ``checked``. The copier stays within ``LEAD`` of the verifier, so that what is
    read back was written a moment ago and is still in the last-level cache."""

    def __init__(self, start: int) -> None:
        self._cond = threading.Condition()
        self.copied = start
        self.checked = start
        self.ended = False  # the copier stopped: done, drained at a chunk boundary, or failed
        self.failed = False  # the verifier stopped on an error: the copier stops too

    def advance(self, to: int) -> None:
        with self._cond:
            self.copied = to
            self._cond.notify_all()

    def room(self, at: int) -> bool:
        """The copier may write at ``at`` (False: stop, the verifier failed)."""
        with self._cond:
            while not self.failed and at - self.checked >= LEAD:
                self._cond.wait()
            return not self.failed

    def wait_copied(self, to: int) -> bool:
        """Until the target holds the bytes up to ``to`` (False: it never will)."""
        with self._cond:
            while self.copied < to and not self.ended:
                self._cond.wait()
            return self.copied >= to

    def verified(self, to: int) -> None:
        with self._cond:
            self.checked = to
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def fail(self) -> None:
        with self._cond:
            self.failed = True
            self._cond.notify_all()


class _Thread:
    """``fn`` on its own thread; ``pipe`` ends when it returns; ``reraise`` its error."""

    def __init__(self, fn: Callable[[], None], pipe: _Pipe) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                self.error = exc
            finally:
                pipe.end()

        self._thread = threading.Thread(target=run, name="datamover-copy", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


class Copier:
    def __init__(
        self,
        storage: Storage,
        job: CopyJob,
        *,
        policy: RetryPolicy,
        in_flight: int,
        on_chunk: OnChunk,
        throttle: Throttle,
    ) -> None:
        self.storage = storage
        self.job = job
        self.policy = policy
        self.in_flight = in_flight
        self.on_chunk = on_chunk
        self.throttle = throttle
        self.source = storage.tier(job.source)
        self.target = storage.tier(job.target)
        self.ready = {i: asyncio.Event() for i in range(job.chunks)}
        self.retained: dict[int, bytes] = {}
        self.verified = 0
        self.moved = asyncio.Condition()
        self.draining = False
        self.idle = asyncio.Event()  # set when no chunk is being copied any more
        self._copying = 0

    async def drain(self) -> None:
        """Start no new chunk; those being copied finish (``idle`` is set then)."""
        self.draining = True
        async with self.moved:
            self.moved.notify_all()

    async def run(self) -> str:
        """Copy what is missing, verify everything; the copy's checksum."""
        if isinstance(self.source, FileTier) and isinstance(self.target, FileTier):
            return await self._run_files(self.source, self.target)
        for i in self.job.done:
            if i in self.ready:
                self.ready[i].set()
        todo = collections.deque(i for i in range(self.job.chunks) if i not in self.job.done)
        self._copying = min(self.in_flight, len(todo))
        if not self._copying:
            self.idle.set()
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(self._copying):
                    tg.create_task(self._worker(todo))
                verify = tg.create_task(self._verify())
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        return verify.result()

    async def _run_files(self, source: FileTier, target: FileTier) -> str:
        """Directory to directory, off the event loop (see the module's docstring). A failed call
        is retried from the first chunk not verified yet."""
        job, loop = self.job, asyncio.get_running_loop()
        path = source.local_path(job.key)
        state = _Hashed(new_hasher())

        def copied(index: int, length: int) -> None:  # on the event loop
            job.done[index] = None
            self.on_chunk(index, None, length)

        def copy(pipe: _Pipe, start: int) -> None:  # the copying thread
            for index in range(start, job.chunks):
                offset, length = job.span(index)
                if index in job.done:  # copied before a restart: only verified
                    pipe.advance(offset + length)
                    continue
                if self.draining:
                    return
                for at in range(offset, offset + length, COPY_PIECE):
                    if not pipe.room(at):
                        return  # the verifier failed
                    target.copy_chunk(path, job.upload, at, min(COPY_PIECE, offset + length - at))
                    pipe.advance(min(at + COPY_PIECE, offset + length))
                loop.call_soon_threadsafe(copied, index, length)
                if pause := self.throttle.delay(length):
                    time.sleep(pause)

        def work() -> bool:  # the verifying thread
            start = state.next
            pipe = _Pipe(job.span(start)[0] if start < job.chunks else job.size)
            copier = _Thread(lambda: copy(pipe, start), pipe)
            buffer = bytearray(READ_BACK_PIECE)
            try:
                for index in range(start, job.chunks):
                    offset, length = job.span(index)
                    hasher = state.hasher.copy()  # a chunk is hashed whole or not at all
                    for at in range(offset, offset + length, COPY_PIECE):
                        n = min(COPY_PIECE, offset + length - at)
                        if not pipe.wait_copied(at + n):
                            return False  # drained at a chunk boundary, or the copier failed
                        target.hash_chunk(job.upload, at, n, hasher, buffer)
                        pipe.verified(at + n)
                    state.hasher, state.next = hasher, index + 1
                return True
            except BaseException:
                pipe.fail()
                raise
            finally:
                copier.join()  # its error, if any, comes first
                copier.reraise()

        try:
            finished = await self.storage.call(
                job.target, lambda: asyncio.to_thread(work), policy=self.policy, what="copy"
            )
        except asyncio.CancelledError:
            self.draining = True  # the threads stop at the next chunk
            raise
        finally:
            self.idle.set()
        if not finished:  # drained at a chunk boundary: the runner cancels us
            await asyncio.Future()
        return format_checksum(state.hasher)

    async def _read_source(self, offset: int, length: int) -> bytes:
        job = self.job
        return await self.storage.call(
            job.source,
            lambda: self.source.read(job.key, offset, length),
            policy=self.policy,
            what="read",
        )

    async def _worker(self, todo: collections.deque[int]) -> None:
        try:
            await self._copy_chunks(todo)
        finally:
            self._copying -= 1
            if self._copying <= 0:
                self.idle.set()

    async def _copy_chunks(self, todo: collections.deque[int]) -> None:
        job = self.job
        keep = not self.target.can_read_back
        window = 2 * self.in_flight
        while todo and not self.draining:
            index = todo.popleft()
            if keep:  # bound the bytes held for the verifier
                async with self.moved:
                    await self.moved.wait_for(
                        lambda i=index: self.draining or i < self.verified + window  # type: ignore[misc]
                    )
                if self.draining:
                    todo.appendleft(index)
                    return
            offset, length = job.span(index)
            data = await self._read_source(offset, length)
            etag = await self.storage.call(
                job.target,
                lambda d=data, i=index, o=offset: self.target.write(job.upload, i, o, d),  # type: ignore[misc]
                policy=self.policy,
                what="write",
            )
            if keep:
                self.retained[index] = data
            job.done[index] = etag
            self.on_chunk(index, etag, length)
            self.ready[index].set()
            await self.throttle(length)

    async def _verify(self) -> str:
        job = self.job
        hasher = new_hasher()
        buffer = bytearray(READ_BACK_PIECE if self.target.can_read_back else 0)
        for index in range(job.chunks):
            await self.ready[index].wait()
            offset, length = job.span(index)
            kept = self.retained.pop(index, None)
            if self.target.can_read_back:
                await self.storage.call(
                    job.target,
                    lambda o=offset, n=length: self.target.hash_back(
                        job.upload, o, n, hasher, buffer
                    ),  # type: ignore[misc]
                    policy=self.policy,
                    what="read back",
                )
            else:  # a chunk sent before a restart: hash the source's bytes again
                hasher.update(kept if kept is not None else await self._read_source(offset, length))
            async with self.moved:
                self.verified = index + 1
                self.moved.notify_all()
        return format_checksum(hasher)
