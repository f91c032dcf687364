"""The RaftLoop's inbox: items in order, a bound, and waits that end on an item or a deadline.

On pytest-trio's `autojump_clock`, so deadlines are exact and instant.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from prkdb.server.inbox import Inbox


@contextlib.asynccontextmanager
async def _timed(box: Inbox) -> AsyncIterator[trio.Nursery]:
    """`box` with its timer task and a watchdog running; both stop on the way out."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.run_timer)
        nursery.start_soon(_watchdog)
        yield nursery
        nursery.cancel_scope.cancel()


async def _watchdog() -> None:
    """Fail (not hang) if a wake-up is lost: autojump reaches this at once."""
    await trio.sleep(1000)
    raise AssertionError("the inbox never woke its waiter (1000 virtual seconds)")


def test_items_come_out_in_order_and_the_bound_holds() -> None:
    async def main() -> None:
        box = Inbox(3)
        for i in range(3):
            box.send_nowait(i)
        with pytest.raises(trio.WouldBlock):
            box.send_nowait(99)
        await box.send("must not be lost")  # past the bound on purpose
        assert len(box) == 4
        assert [box.receive_nowait() for _ in range(4)] == [0, 1, 2, "must not be lost"]
        with pytest.raises(trio.WouldBlock):
            box.receive_nowait()

    trio.run(main)


async def test_wait_ends_at_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    box = Inbox(10)
    async with _timed(box):
        t0 = trio.current_time()
        await box.wait(t0 + 5)
        assert trio.current_time() == pytest.approx(t0 + 5)
        assert len(box) == 0
        # A deadline already passed, or an item already queued: no wait at all.
        await box.wait(t0)
        box.send_nowait("x")
        await box.wait(t0 + 100)
        assert trio.current_time() == pytest.approx(t0 + 5)


async def test_an_item_wakes_the_wait_and_the_next_deadline_is_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = Inbox(10)
    woke: list[float] = []
    async with _timed(box) as nursery:
        t0 = trio.current_time()

        async def producer() -> None:
            for at in (1, 9):
                await trio.sleep_until(t0 + at)
                box.send_nowait(at)

        nursery.start_soon(producer)
        await box.wait(t0 + 5)  # woken at 1 by the item
        woke.append(trio.current_time() - t0)
        assert box.receive_nowait() == 1
        # A later deadline than the one still armed (5): 5 must not end it early.
        await box.wait(t0 + 8)
        woke.append(trio.current_time() - t0)
        await box.wait(t0 + 20)  # woken at 9 by the item
        woke.append(trio.current_time() - t0)
        assert box.receive_nowait() == 9
        # An earlier deadline than the one still armed (20): honoured.
        await box.wait(t0 + 12)
        woke.append(trio.current_time() - t0)
    assert woke == pytest.approx([1, 8, 9, 12])


async def test_a_deadline_that_fires_while_nobody_waits_is_harmless(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = Inbox(10)
    async with _timed(box):
        t0 = trio.current_time()
        await box.wait(t0 + 1)
        box.send_nowait("busy")
        await box.wait(t0 + 2)  # returns at once (an item), arms nothing
        await trio.sleep(5)  # the loop is "busy"; nothing is armed to fire
        box.receive_nowait()
        await box.wait(t0 + 10)
        assert trio.current_time() == pytest.approx(t0 + 10)


async def test_a_cancelled_wait_leaves_the_inbox_usable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = Inbox(10)
    async with _timed(box):
        with trio.move_on_after(1):
            await box.wait(trio.current_time() + 100)
        box.send_nowait("after")  # must not try to wake the cancelled wait
        await box.wait(trio.current_time() + 100)
        assert box.receive_nowait() == "after"
