"""FifoSlots (skyd/requests/slots.py), the one bounded queue under the short queue and the
jobs controller's launches: the bound, strict arrival order, no slot lost to a cancelled
waiter, and the peak that `api info` reports. Directly, on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from skyd.requests.slots import FifoSlots


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_free_slots_are_taken_at_once_up_to_the_bound():
    s = FifoSlots(2)
    assert (s.size, s.in_use, s.peak, s.waiting) == (2, 0, 0, 0)
    await s.acquire()
    await s.acquire()
    assert (s.in_use, s.peak, s.waiting) == (2, 2, 0)
    third = asyncio.ensure_future(s.acquire())
    await settle()
    assert not third.done() and s.waiting == 1 and s.in_use == 2
    s.release()
    await asyncio.wait_for(third, 1)
    assert (s.in_use, s.peak, s.waiting) == (2, 2, 0)
    s.release()
    s.release()
    assert (s.in_use, s.peak) == (0, 2)


async def test_waiters_are_admitted_in_arrival_order_one_per_release():
    s = FifoSlots(1)
    await s.acquire()
    admitted: list[int] = []

    async def wait(i: int) -> None:
        await s.acquire()
        admitted.append(i)

    tasks = [asyncio.ensure_future(wait(i)) for i in range(4)]
    await settle()
    assert s.waiting == 4 and admitted == []
    for n in range(1, 5):
        s.release()
        await settle()
        assert admitted == list(range(n)) and s.in_use == 1     # one at a time, in order
    await asyncio.gather(*tasks)
    assert s.peak == 1 and s.waiting == 0


async def test_a_newcomer_never_overtakes_a_waiter():
    s = FifoSlots(1)
    await s.acquire()
    first = asyncio.ensure_future(s.acquire())
    await settle()
    s.release()                         # the slot goes to the waiter, not to whoever asks next
    assert s.try_acquire() is False
    await asyncio.wait_for(first, 1)
    assert s.in_use == 1
    # A free slot but someone still queued: try_acquire and acquire both queue behind.
    s2 = FifoSlots(2)
    await s2.acquire()
    await s2.acquire()
    w1 = asyncio.ensure_future(s2.acquire())
    await settle()
    s2.in_use -= 1                      # a slot frees without a release() hand-over
    assert s2.try_acquire() is False
    late = asyncio.ensure_future(s2.acquire())
    await settle()
    assert not late.done() and s2.waiting == 2
    s2.release()
    await settle()
    assert w1.done() and late.done() and s2.in_use == 2


async def test_try_acquire_takes_a_free_slot_and_never_waits():
    s = FifoSlots(1)
    assert s.try_acquire() is True
    assert (s.in_use, s.peak) == (1, 1)
    assert s.try_acquire() is False
    assert (s.in_use, s.waiting) == (1, 0)
    s.release()
    assert s.try_acquire() is True


async def test_take_ignores_the_bound_and_counts_in_the_peak():
    s = FifoSlots(1)
    s.take()
    s.take()                            # recovery: requests already running past the bound
    assert (s.in_use, s.peak) == (2, 2)
    waiter = asyncio.ensure_future(s.acquire())
    await settle()
    s.release()
    await settle()
    assert not waiter.done() and s.in_use == 1      # still at the bound: nobody admitted
    s.release()
    await asyncio.wait_for(waiter, 1)
    assert (s.in_use, s.peak, s.waiting) == (1, 2, 0)


async def test_the_peak_is_the_most_ever_held_at_once():
    s = FifoSlots(5)
    for _ in range(3):
        await s.acquire()
    for _ in range(3):
        s.release()
    await s.acquire()
    assert (s.in_use, s.peak) == (1, 3)


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_slot():
    s = FifoSlots(1)
    await s.acquire()
    a = asyncio.ensure_future(s.acquire())
    b = asyncio.ensure_future(s.acquire())
    await settle()
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    assert s.waiting == 1
    s.release()
    await asyncio.wait_for(b, 1)        # the next waiter, not the cancelled one, got it
    assert (s.in_use, s.waiting) == (1, 0)


async def test_a_waiter_cancelled_just_as_it_was_granted_passes_the_slot_on():
    s = FifoSlots(1)
    await s.acquire()
    a = asyncio.ensure_future(s.acquire())
    b = asyncio.ensure_future(s.acquire())
    await settle()
    s.release()                         # grants a's future...
    a.cancel()                          # ...and a is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await a
    await asyncio.wait_for(b, 1)
    assert (s.in_use, s.waiting) == (1, 0)   # b holds the one slot; none leaked, none lost
    s.release()
    assert s.in_use == 0


async def test_release_skips_waiters_already_cancelled():
    s = FifoSlots(1)
    await s.acquire()
    a = asyncio.ensure_future(s.acquire())
    b = asyncio.ensure_future(s.acquire())
    await settle()
    fut = s._waiters[0]
    fut.cancel()                        # cancelled, its task not yet run
    s.release()
    assert s.in_use == 1 and s._waiters == type(s._waiters)()   # b took the slot
    await asyncio.wait_for(b, 1)
    with pytest.raises(asyncio.CancelledError):
        await a
    assert (s.in_use, s.waiting) == (1, 0)
