"""Request slots a partition driver finishes exactly once: `Pending` and `Waiter`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar, cast

import trio

from prkdb.errors import PrkdbError

T = TypeVar("T")

Callback = Callable[[object, "PrkdbError | None"], None]
"""``(result, error)``: how a request ends (the result's type depends on the request)."""


def _ignore(result: object, error: PrkdbError | None) -> None:
    pass


class Pending:
    """One client request waiting in this partition; finished exactly once.

    The callback runs in the driver's task (so it must be quick and never
    block): the client service uses it to queue the response on the client's
    connection, which saves a task per request. `Waiter` adapts it for awaiting.
    """

    __slots__ = ("callback", "data", "done", "index", "term")

    def __init__(self, callback: Callback, data: bytes = b"") -> None:
        self.callback = callback
        self.data = data
        self.done = False
        self.term = 0
        self.index = 0  # log index once proposed (then a timeout is OUTCOME_UNKNOWN)

    def finish(self, result: object = None, error: PrkdbError | None = None) -> None:
        if not self.done:
            self.done = True
            callback, self.callback = self.callback, _ignore
            # It may sit in the deadline heap until its deadline: keep it small.
            self.data = b""
            callback(result, error)


class Waiter(Generic[T]):
    """An awaitable result slot, for callers that prefer `await` to a callback.

    ``Waiter[int]`` says what its `Pending`'s driver finishes it with.
    """

    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: object = None
        self.error: PrkdbError | None = None

    def set(self, result: object = None, error: PrkdbError | None = None) -> None:
        if not self.event.is_set():
            self.result, self.error = result, error
            self.event.set()

    async def get(self) -> T:
        await self.event.wait()
        if self.error is not None:
            raise self.error
        return cast(T, self.result)
