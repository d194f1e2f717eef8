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
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []
        self.commits = 0

    async def write(self, items: list[int]) -> list[int]:
        await asyncio.sleep(self.delay)
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
    store = Store(delay=0.02)
    commits = group(store)
    first = [asyncio.create_task(commits.submit(i)) for i in (1, 2, 3)]
    await asyncio.sleep(0.005)  # the first write is in flight
    second = [asyncio.create_task(commits.submit(i)) for i in (4, 5)]
    assert await asyncio.gather(*first, *second) == [10, 20, 30, 40, 50]
    assert store.batches == [[1, 2, 3], [4, 5]]
    assert (commits.writes, commits.items, store.commits) == (2, 5, 2)


async def test_the_linger_gathers_callers_of_different_turns() -> None:
    store = Store()
    commits = group(store, linger_s=0.05)
    tasks = []
    for i in (1, 2, 3):
        tasks.append(asyncio.create_task(commits.submit(i)))
        await asyncio.sleep(0.005)
    assert await asyncio.gather(*tasks) == [10, 20, 30]
    assert store.batches == [[1, 2, 3]]


async def test_max_batch_waiting_write_without_lingering() -> None:
    store = Store()
    commits = group(store, linger_s=10.0, max_batch=2)
    got = await asyncio.wait_for(asyncio.gather(*(commits.submit(i) for i in (1, 2, 3, 4))), 1)
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
    store = Store(delay=0.02)
    commits = group(store)
    first = asyncio.create_task(commits.submit(1))
    await asyncio.sleep(0.005)
    gone, kept = asyncio.create_task(commits.submit(2)), asyncio.create_task(commits.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await first, await kept) == (10, 30)
    assert gone.cancelled()
    assert store.batches == [[1], [3]]


async def test_closing_writes_what_waits_then_refuses() -> None:
    store = Store()
    commits = GroupCommit("t", store.write, linger_s=10.0, closed=lambda: Away("closed"))
    waiting = [asyncio.create_task(commits.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiting)  # lingering
    await asyncio.wait_for(commits.close(), 1)
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
