"""Group commit: the writes of concurrent callers in one statement (one transaction).

Why: on a path that writes once per request or per job, a transaction each costs a
connection checkout, the statement and a COMMIT (with its WAL flush) every time, and through
SQLAlchemy most of that CPU goes into session and statement machinery, not into PostgreSQL.
A ``GroupCommit`` lets each caller ``submit`` one item and wait for its own result while a
task of its own hands the items waiting to ``write`` in one call (one fixed statement on
plain asyncpg, in autocommit: the statement is its own transaction), so that under load one
round trip serves several callers. The items that arrive while a write is in flight make the
next one: batches grow with the load by themselves.

Used by the gateway's submissions (``services.gateway.jobs.writer.JobWriter``, with a short
linger) and by the worker's claims and records (``services.worker.batch``, without one).

What a caller can rely on:

- ``submit`` returns only after the write of its item returned (committed): nothing is
  answered that is not durable.
- An error that ``fails_batch`` accepts (by default a connectivity error: the database, not
  an item, is the problem) fails every caller of the batch with it; nothing of the batch was
  written (one transaction), and each caller retries as it would alone. Any other error
  re-runs the batch's items one write each, so that it reaches only the caller whose item
  caused it while the others commit.
- An item whose caller was cancelled before its write started is dropped, never written;
  a caller cancelled while its item is written does not disturb the batch (the task owns
  the write, never a caller): its item is simply committed unanswered, as a single
  caller's write could be.
- ``close`` writes what waits (without lingering), then refuses later items.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from shared.db.engine import is_connectivity_error
from shared.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class GroupCommitClosed(RuntimeError):
    """``submit`` after ``close`` (the default refusal)."""


class GroupCommit(Generic[T, R]):
    """Callers ``submit`` one item each and wait for its result; a task of its own hands the
    items waiting to ``write`` in one call and gives each caller its result (``write`` returns
    one result per item, in order). The task runs only while items wait.

    - ``linger_s``: how long the oldest waiting item may wait for others before its batch is
      written (unless ``max_batch`` are waiting, or the group commit is closing), and only
      while items come that fast: an item that came ``linger_s`` or more after the one before
      it is written at once, for at a steady rate slower than the linger no other item
      would join it and the wait would be all loss (the submission's latency). 0, the
      default, has no timer: an idle process writes at once, and what comes while a write is
      in flight (or in the same turn of the event loop) makes the next batch.
    - ``max_batch``: the most items in one write.
    - ``key``: when given, at most one item per key goes into a batch (a second waits for the
      next), for writes where two items of one key in one statement would collide.
    - ``fails_batch``: which errors of a write fail the whole batch instead of being retried
      item by item (default: ``is_connectivity_error``).
    - ``on_commit``: called after each write that succeeded (a wake-up, say); its errors are
      logged, never given to the callers, whose items are committed.
    - ``closed``: the exception ``submit`` raises after ``close``.
    """

    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], Awaitable[list[R]]],
        *,
        key: Callable[[T], Hashable] | None = None,
        max_batch: int = 64,
        linger_s: float = 0.0,
        fails_batch: Callable[[BaseException], bool] = is_connectivity_error,
        on_commit: Callable[[], None] | None = None,
        closed: Callable[[], BaseException] | None = None,
    ) -> None:
        if max_batch < 1 or linger_s < 0:
            raise ValueError("max_batch must be >= 1 and linger_s >= 0")
        self.name = name
        self._write = write
        self._key = key
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._fails_batch = fails_batch
        self._on_commit = on_commit
        self._closed_error = closed or (lambda: GroupCommitClosed(f"{name}: closed"))
        # (item, its caller's future, when it arrived in loop time, how long after the item
        # before it)
        self._waiting: deque[tuple[T, asyncio.Future[R], float, float]] = deque()
        self._last_arrival = -math.inf
        self._full = asyncio.Event()  # max_batch are waiting, or closing: stop lingering
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0  # writes that succeeded, and items they carried: for tests and metrics
        self.items = 0

    @property
    def closed(self) -> bool:
        return self._closed

    async def submit(self, item: T) -> R:
        """``item``'s result, once its write returned; raises what the write of it raised."""
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        now = loop.time()
        self._waiting.append((item, future, now, now - self._last_arrival))
        self._last_arrival = now
        if len(self._waiting) >= self.max_batch:
            self._full.set()
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name=f"group-commit-{self.name}")
        return await future

    async def close(self) -> None:
        """Write what is waiting, then end; later ``submit`` calls raise ``closed()``."""
        self._closed = True
        self._full.set()
        if self._writer is not None:
            await self._writer

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # the callers woken in the same turn of the loop join in
            while self._waiting:
                if self.linger_s > 0:
                    await self._linger()
                batch = self._take()
                if not batch:
                    continue
                try:
                    await self._write_batch(batch)
                except Exception as exc:  # a bug here must not leave callers waiting forever
                    log.error("group_commit_error", name=self.name, error=repr(exc), exc_info=exc)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
        except BaseException:
            for _, future, _, _ in self._waiting:
                future.cancel()
            self._waiting.clear()
            raise
        finally:
            self._writer = None

    async def _linger(self) -> None:
        """Wait until the oldest waiting item is ``linger_s`` old, ``max_batch`` wait, or
        closing; not at all for an item that came after a pause of ``linger_s`` or more."""
        if self._closed or len(self._waiting) >= self.max_batch:
            return
        _, _, arrived, after = self._waiting[0]
        if after >= self.linger_s:
            return
        delay = arrived + self.linger_s - asyncio.get_running_loop().time()
        if delay <= 0:
            return
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._full.wait()

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        later: list[tuple[T, asyncio.Future[R], float, float]] = []
        keys: set[Hashable] = set()
        while self._waiting and len(batch) < self.max_batch:
            entry = self._waiting.popleft()
            item, future, _, _ = entry
            if future.done():  # its caller was cancelled: nobody waits for it
                continue
            if self._key is not None:
                key = self._key(item)
                if key in keys:
                    later.append(entry)
                    continue
                keys.add(key)
            batch.append((item, future))
        self._waiting.extendleft(reversed(later))
        return batch

    async def _write_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1 or self._fails_batch(exc):
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            log.warning("group_commit_split", name=self.name, size=len(batch), error=repr(exc))
            for entry in batch:
                if not entry[1].done():  # cancelled meanwhile: never written, never answered
                    await self._write_batch([entry])
            return
        if len(results) != len(batch):
            raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} items")
        self.writes += 1
        self.items += len(batch)
        if self._on_commit is not None:
            try:
                self._on_commit()
            except Exception as exc:
                log.error("group_commit_on_commit_error", name=self.name, exc_info=exc)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
