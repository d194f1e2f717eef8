"""``services.worker.handlers.take_slot``: a slot when one frees, none when the stop comes
first, and never a slot lost to a wait given up (no server needed)."""

from __future__ import annotations

import asyncio

from services.worker.handlers import take_slot


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_free_slot_is_taken_at_once() -> None:
    slots, stop = asyncio.Semaphore(1), asyncio.Event()
    assert await take_slot(slots, stop) is True
    assert slots.locked()


async def test_a_stop_set_before_takes_no_slot() -> None:
    slots, stop = asyncio.Semaphore(1), asyncio.Event()
    stop.set()
    assert await take_slot(slots, stop) is False
    assert not slots.locked()


async def test_the_wait_ends_with_the_slot_that_frees() -> None:
    slots, stop = asyncio.Semaphore(1), asyncio.Event()
    await slots.acquire()
    waiting = asyncio.ensure_future(take_slot(slots, stop))
    await settle()
    assert not waiting.done()
    slots.release()
    assert await asyncio.wait_for(waiting, 1) is True
    assert slots.locked()  # the waiter holds it now


async def test_a_stop_while_waiting_takes_none_and_leaves_the_slot_to_others() -> None:
    slots, stop = asyncio.Semaphore(1), asyncio.Event()
    await slots.acquire()
    waiting = asyncio.ensure_future(take_slot(slots, stop))
    await settle()
    stop.set()
    assert await asyncio.wait_for(waiting, 1) is False
    slots.release()
    await settle()
    assert not slots.locked()  # nobody took the slot on the given-up wait's behalf
    assert await asyncio.wait_for(slots.acquire(), 1)


async def test_a_cancelled_wait_takes_no_slot_even_when_one_frees_in_the_same_turn() -> None:
    slots, stop = asyncio.Semaphore(1), asyncio.Event()
    await slots.acquire()
    waiting = asyncio.ensure_future(take_slot(slots, stop))
    await settle()
    slots.release()  # hands the slot to the waiter...
    waiting.cancel()  # ...which is cancelled before it runs again
    await asyncio.gather(waiting, return_exceptions=True)
    await settle()
    assert waiting.cancelled()
    assert not slots.locked()  # the slot it was handed went back
    assert await asyncio.wait_for(slots.acquire(), 1)


async def test_two_waiters_and_one_slot_freed_only_one_runs() -> None:
    slots, stop = asyncio.Semaphore(1), asyncio.Event()
    await slots.acquire()
    first = asyncio.ensure_future(take_slot(slots, stop))
    second = asyncio.ensure_future(take_slot(slots, stop))
    await settle()
    slots.release()
    done, pending = await asyncio.wait({first, second}, timeout=0.5)
    assert len(done) == 1
    assert len(pending) == 1
    stop.set()
    assert await asyncio.wait_for(pending.pop(), 1) is False
