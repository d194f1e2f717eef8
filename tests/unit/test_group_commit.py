"""``shared.db.batch.GroupCommit`` on its own, with a fake write: what waits together is
written together (by the linger, the batch size, the key), which errors fail the batch and
which are split item by item, cancelled callers, and closing."""

from __future__ import annotations

import asyncio

import pytest

from shared.db.batch import GroupCommit, GroupCommitClosed


class Bad(Exception):
    """An item's own error: the batch is split."""


class Away(Exception):
    """The database's error: the batch fails."""


class Store:
    """A fake write. With ``gated``, each write waits until the test calls ``release``:
    what callers do while a write is in flight is then a matter of order, not of time."""

    def __init__(self, *, gated: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.commits = 0
        self.writing = asyncio.Event()  # a write has started
        self._gate = asyncio.Event()
        if not gated:
            self._gate.set()
        self.started_at: list[float] = []

    def release(self) -> None:
        self._gate.set()

    async def write(self, items: list[int]) -> list[int]:
        self.started_at.append(asyncio.get_running_loop().time())
        self.writing.set()
        await self._gate.wait()
        if any(i < 0 for i in items):
            raise Bad(items)
        if any(i == 0 for i in items):
            raise Away(items)
        self.batches.append(items)
        return [i * 10 for i in items]

    def committed(self) -> None:
        self.commits += 1


def group(store: Store, **options: object) -> GroupCommit[int, int]:
    return GroupCommit(
        "t",
        store.write,
        fails_batch=lambda exc: isinstance(exc, Away),
        on_commit=store.committed,
        **options,  # type: ignore[arg-type]
    )


async def test_callers_of_one_turn_share_a_write_and_the_next_ones_wait_for_it() -> None:
    store = Store(gated=True)
    commits = group(store)
    first = [asyncio.create_task(commits.submit(i)) for i in (1, 2, 3)]
    await store.writing.wait()  # the first write is in flight
    second = [asyncio.create_task(commits.submit(i)) for i in (4, 5)]
    await asyncio.sleep(0)  # their submissions are waiting
    store.release()
    assert await asyncio.gather(*first, *second) == [10, 20, 30, 40, 50]
    assert store.batches == [[1, 2, 3], [4, 5]]
    assert (commits.writes, commits.items, store.commits) == (2, 5, 2)


async def test_the_linger_gathers_callers_of_different_turns() -> None:
    """Under load (items coming faster than the linger), callers of later turns of the event
    loop join the first one's batch while it lingers, and its write starts no sooner than
    ``linger_s`` after the first arrived."""
    loop = asyncio.get_running_loop()
    store = Store()
    commits = group(store, linger_s=1.0)
    assert await commits.submit(9) == 90  # the first item: nothing came before it
    arrived = loop.time()
    tasks = []
    for i in (1, 2, 3):
        tasks.append(asyncio.create_task(commits.submit(i)))
        await asyncio.sleep(0)  # the next caller comes in a later turn
    assert await asyncio.gather(*tasks) == [10, 20, 30]
    assert store.batches == [[9], [1, 2, 3]]
    assert store.started_at[1] - arrived >= commits.linger_s - 0.01


async def test_an_item_after_a_pause_is_written_without_lingering() -> None:
    """An item that comes ``linger_s`` or more after the one before it (the first one too) is
    written at once: at a rate slower than the linger nothing would join it. One that comes
    sooner lingers."""
    loop = asyncio.get_running_loop()
    store = Store()
    commits = group(store, linger_s=0.5)
    arrived = loop.time()
    assert await commits.submit(1) == 10
    await asyncio.sleep(commits.linger_s * 1.2)
    second = loop.time()
    assert await commits.submit(2) == 20
    # written at once, both (a linger would have started them linger_s after they came)
    assert store.started_at[0] - arrived < commits.linger_s / 2
    assert store.started_at[1] - second < commits.linger_s / 2
    third = loop.time()
    assert await commits.submit(3) == 30  # right after the second: it lingers
    assert store.started_at[2] - third >= commits.linger_s - 0.01
    assert store.batches == [[1], [2], [3]]


async def test_max_batch_waiting_write_without_lingering() -> None:
    store = Store()
    commits = group(store, linger_s=3600.0, max_batch=2)
    submitted = asyncio.gather(*(commits.submit(i) for i in (1, 2, 3, 4)))
    # lingering would take the hour: any bound far below it tells the two apart
    got = await asyncio.wait_for(submitted, commits.linger_s / 60)
    assert got == [10, 20, 30, 40]
    assert store.batches == [[1, 2], [3, 4]]


async def test_one_item_per_key_in_a_batch() -> None:
    store = Store()
    commits = group(store, key=lambda i: i % 2)
    assert await asyncio.gather(*(commits.submit(i) for i in (1, 3, 2, 5))) == [10, 30, 20, 50]
    assert store.batches == [[1, 2], [3], [5]]


async def test_an_items_error_reaches_its_caller_only() -> None:
    store = Store()
    commits = group(store)
    got = await asyncio.gather(*(commits.submit(i) for i in (1, -1, 2)), return_exceptions=True)
    assert got[0] == 10
    assert got[2] == 20
    assert isinstance(got[1], Bad)
    assert store.batches == [[1], [2]]


async def test_an_error_that_fails_the_batch_reaches_every_caller() -> None:
    store = Store()
    commits = group(store)
    got = await asyncio.gather(*(commits.submit(i) for i in (1, 0, 2)), return_exceptions=True)
    assert all(isinstance(g, Away) for g in got)
    assert (store.batches, commits.writes, store.commits) == ([], 0, 0)


async def test_a_caller_cancelled_while_waiting_is_dropped() -> None:
    store = Store(gated=True)
    commits = group(store)
    first = asyncio.create_task(commits.submit(1))
    await store.writing.wait()
    gone, kept = asyncio.create_task(commits.submit(2)), asyncio.create_task(commits.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    store.release()
    assert (await first, await kept) == (10, 30)
    assert gone.cancelled()
    assert store.batches == [[1], [3]]


async def test_closing_writes_what_waits_then_refuses() -> None:
    store = Store()
    commits = GroupCommit("t", store.write, linger_s=3600.0, closed=lambda: Away("closed"))
    assert await commits.submit(9) == 90  # the next ones come within the linger: they linger
    waiting = [asyncio.create_task(commits.submit(i)) for i in (1, 2)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert not any(w.done() for w in waiting)  # lingering
    await asyncio.wait_for(commits.close(), commits.linger_s / 60)  # without the linger
    assert [w.result() for w in waiting] == [10, 20]
    with pytest.raises(Away):
        await commits.submit(3)
    assert commits.closed


async def test_the_default_refusal() -> None:
    commits = group(Store())
    await commits.close()
    with pytest.raises(GroupCommitClosed):
        await commits.submit(1)


async def test_a_wrong_number_of_results_fails_the_batch_and_the_group_goes_on() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[1:] if len(items) > 1 else items

    commits: GroupCommit[int, int] = GroupCommit("t", short)
    got = await asyncio.gather(*(commits.submit(i) for i in (1, 2)), return_exceptions=True)
    assert all(isinstance(g, RuntimeError) for g in got)
    assert await commits.submit(3) == 3


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        group(Store(), max_batch=0)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        group(Store(), linger_s=-1)
