"""The trio client's watch timer: waiting watches wake at their deadlines (no scope per wait)."""

from __future__ import annotations

import trio
import trio.testing

from prkdb.client.client import _WatchTimer


async def test_wakes_each_deadline_in_order_even_one_registered_later_but_earlier(
        autojump_clock: trio.testing.MockClock) -> None:
    timer = _WatchTimer()
    woke: list[tuple[str, float, float]] = []

    def waker(name: str):  # type: ignore[no-untyped-def]
        return lambda at: woke.append((name, at, trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
        timer.wake_at(t0 + 5, waker("late"))
        await trio.sleep(1)
        timer.wake_at(t0 + 2, waker("early"))  # earlier than what the timer sleeps to
        timer.wake_at(t0 + 2, waker("same"))
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [(name, at - t0) for name, at, _ in woke] == [("early", 2), ("same", 2), ("late", 5)]
    assert all(now >= at for _, at, now in woke)


async def test_a_past_deadline_wakes_at_once(autojump_clock: trio.testing.MockClock) -> None:
    timer = _WatchTimer()
    woke: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        await trio.testing.wait_all_tasks_blocked()
        timer.wake_at(trio.current_time() - 1, woke.append)
        await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(woke) == 1
