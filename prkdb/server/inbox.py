"""`Inbox`: the RaftLoop's queue, what goes into it, and the one place its task sleeps.

Every peer message, client request and background "done" of the node goes
through here, as one of the `InboxItem` classes below (a closed set: the
loop and `PartitionDriver.handle` dispatch on them with ``match``). Each
names its partition by number, so this module knows no driver.

The loop waits here for the next item or its next deadline (a tick, or
commit news due). A trio memory channel plus `move_on_at` did the same, but
paid a cancel scope on every wait (enter, exit and deadline bookkeeping:
about a tenth of the CPU of a lone writer's put) and channel machinery on
every item. Here an item is a deque append plus, if the loop sleeps, one
`reschedule`; a deadline is kept by one timer task whose cancel scope is
re-armed in place, so only a deadline that really fires costs a cancellation.

Semantics kept from the channel: `send_nowait` raises `trio.WouldBlock`
past `max_items` (callers turn that into "overloaded"); `send` never
blocks (its items are rare and must not be lost: background completions,
fences), so the bound may be exceeded by those.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, final

import trio

from prkdb.raft import Message
from prkdb.server.pending import Pending

__all__ = [
    "ClientRead",
    "ClientWrite",
    "FencePeer",
    "Inbox",
    "InboxItem",
    "PeerDown",
    "PeerMessage",
    "SlowStepDone",
    "SnapshotWritten",
    "TakeSnapshot",
    "TransferLeadership",
]


@final
@dataclass(frozen=True, slots=True)
class PeerMessage:
    """A Raft message from a peer (the transport)."""

    partition: int
    msg: Message


@final
@dataclass(frozen=True, slots=True)
class ClientWrite:
    """An encoded command to propose (`pending.data`); finished once applied or failed."""

    partition: int
    pending: Pending


@final
@dataclass(frozen=True, slots=True)
class ClientRead:
    """A linearizable read waiting for its ReadIndex; finished with the applied index."""

    partition: int
    pending: Pending


@final
@dataclass(frozen=True, slots=True)
class PeerDown:
    """The transport saw `peer`'s process die (fast failover if it led us)."""

    partition: int
    peer: int


@final
@dataclass(frozen=True, slots=True)
class TransferLeadership:
    """Hand leadership to `to` (0: the most caught-up follower); finished with the target."""

    partition: int
    to: int
    pending: Pending


@final
@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    """Snapshot now (if anything was applied since the last); finished with its index."""

    partition: int
    pending: Pending


@final
@dataclass(frozen=True, slots=True)
class FencePeer:
    """Forget every ack of `node`'s previous process; then call `done` (Node.fence_peer)."""

    partition: int
    node: int
    done: Callable[[], None]


@final
@dataclass(frozen=True, slots=True)
class SlowStepDone:
    """A background step of a busy partition ended (`error`: how it failed, if it did)."""

    partition: int
    error: Exception | None


@final
@dataclass(frozen=True, slots=True)
class SnapshotWritten:
    """A background snapshot file is durable: the loop finishes it after the pass."""

    partition: int


InboxItem: TypeAlias = (
    PeerMessage | ClientWrite | ClientRead | PeerDown | TransferLeadership | TakeSnapshot
    | FencePeer | SlowStepDone | SnapshotWritten
)


class Inbox:
    """The queue of `InboxItem`s of every partition of the node, and the loop's sleep."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: deque[InboxItem] = deque()
        self._sleeper: trio.lowlevel.Task | None = None  # the loop, while it waits
        self._armed = math.inf  # when the timer wakes the loop
        self._timer_scope: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._items)

    def send_nowait(self, item: InboxItem) -> None:
        """Queue `item`; raises trio.WouldBlock when the inbox is full."""
        if len(self._items) >= self.max_items:
            raise trio.WouldBlock
        self._items.append(item)
        if self._sleeper is not None:
            self._wake()

    async def send(self, item: InboxItem) -> None:
        """Queue `item` even past the bound (for rare items that must not be lost)."""
        self._items.append(item)
        if self._sleeper is not None:
            self._wake()
        await trio.lowlevel.checkpoint()

    def receive_nowait(self) -> InboxItem:
        """The oldest item; raises trio.WouldBlock if there is none."""
        try:
            return self._items.popleft()
        except IndexError:
            raise trio.WouldBlock from None

    async def wait(self, deadline: float) -> None:
        """Sleep until an item is queued or `deadline` passes (returns at once if either holds).

        Only one task (the loop) may wait. It does not take the item.
        """
        if self._items or deadline <= trio.current_time():
            return
        if deadline != self._armed:
            self._armed = deadline
            if self._timer_scope is not None:
                self._timer_scope.deadline = deadline
        assert self._sleeper is None, "only the RaftLoop task waits on its inbox"
        self._sleeper = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._sleeper = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake(self) -> None:
        task, self._sleeper = self._sleeper, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def run_timer(self) -> None:
        """Wake the waiting loop at its deadline (run as a task next to the loop)."""
        while True:
            with trio.CancelScope(deadline=self._armed) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            if trio.current_time() >= self._armed:
                self._armed = math.inf
                self._wake()
